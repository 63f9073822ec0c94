"""`st-fast bench`: run an attack x defence x architecture matrix from a YAML config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RAY_FLAGS = ("address", "gpus_per_cell", "cpus_per_cell", "max_retries")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark matrix from a YAML config (resumable)",
                       description="Runs every cell of the matrix; finished cells are skipped, an "
                                   "interrupted cell continues from its checkpoint. Writes "
                                   "results.jsonl, results.csv, results.md, plots/ and "
                                   "progress.json under --out. Serial (default): start the same "
                                   "command several times on one machine (e.g. one per core with "
                                   "OMP_NUM_THREADS=1) to share the cells; --executor ray: every "
                                   "cell and poison is a Ray task, on this machine or a cluster "
                                   "(docs/bench.md).")
    p.add_argument("--config", required=True, help="YAML file (see benchmarks/configs/)")
    p.add_argument("--out", default=None, help="output directory (default runs/bench/<name>); with "
                   "Ray on several machines, on a disk they all share")
    p.add_argument("--only", default=None, help="run only cells whose id contains this text "
                   "(comma-separated: any of them; they run in the config's order; write --only=-st-s "
                   "for a leading dash)")
    p.add_argument("--share-from", action="append", default=None, metavar="DIR",
                   help="a finished study folder (e.g. benchmarks/results/st_policy): its cells "
                        "run with the same settings on the same CPU kernels are copied in, not "
                        "run again; checked when the bench starts and again before each cell (serial executor), "
                        "so cells whose poison is shown to be the source's meanwhile are copied too "
                        "(repeatable; docs/bench.md)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    p.add_argument("--poisons-only", action="store_true",
                   help="make (or import) the poisoned sets the selected cells need, then stop "
                        "(serial; e.g. craft a long poison before the cells' workers start)")
    p.add_argument("--progress", action="store_true", help="show per-batch progress bars (serial)")
    p.add_argument("--executor", default="serial", choices=("serial", "ray"),
                   help="serial: cells in this process; ray: cells and poisons as Ray tasks "
                        "(pip install 'st_fast[ray]')")
    p.add_argument("--address", default=None, help="Ray: a running cluster, 'auto' or HOST:PORT "
                   "(default: start a local Ray instance on this machine's cores and GPUs)")
    p.add_argument("--gpus-per-cell", type=float, default=None,
                   help="Ray: GPUs each cell (and model-crafted poison) reserves; 0.5 puts two cells "
                        "on a GPU (default: 1 when the cluster has GPUs, else 0)")
    p.add_argument("--cpus-per-cell", type=float, default=None,
                   help="Ray: CPUs each task reserves, also its torch threads (default 1)")
    p.add_argument("--max-retries", type=int, default=None,
                   help="Ray: further attempts of a task that failed or whose worker died (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import load_config, run_bench
    from ..bench.cell import CellsFailed
    from ..bench.runner import POISONS_ONLY_SERIAL, matches
    from ..errors import UserError

    given = [f for f in RAY_FLAGS if getattr(args, f) is not None]
    if args.poisons_only and args.executor == "ray":   # before Ray is imported (it may be absent)
        raise UserError(POISONS_ONLY_SERIAL)
    ray_options = None
    if args.executor == "ray":
        from ..bench.ray_executor import RayOptions, import_ray

        import_ray()   # not installed: say how to install it before reading anything
        ray_options = RayOptions(**{f: getattr(args, f) for f in given})
    elif given:
        flags = ", ".join("--" + f.replace("_", "-") for f in given)
        raise UserError(f"{flags} apply to --executor ray only")
    cfg = load_config(args.config)
    out = Path(args.out or f"runs/bench/{cfg.name}")
    if args.dry_run:
        for c in cfg.cells():
            if matches(c.id, args.only):
                print(c.id)
        return 0
    share = None
    if args.share_from:
        from ..bench.share import share_cells
        from ..utils import machine_info, resolve_device

        device = resolve_device(args.device)
        machine = machine_info(device)

        def share() -> list[str]:
            # again before every cell: a witness or a poison finished meanwhile can make more shareable
            copied = share_cells(cfg, out, args.share_from, device.type, machine, verbose=False)
            if copied:
                print(f"[bench] {len(copied)} cell(s) shared from {', '.join(args.share_from)}", file=sys.stderr)
            return copied

        if not share():
            print(f"[bench] 0 cell(s) shared from {', '.join(args.share_from)}", file=sys.stderr)
    try:
        run_bench(cfg, out, device=args.device, progress=args.progress, only=args.only,
                  executor=args.executor, ray_options=ray_options, before_cell=share,
                  poisons_only=args.poisons_only)
    except CellsFailed as err:
        print(f"st-fast bench: {err}", file=sys.stderr)
        print(f"the other cells' results are in {out}/; rerun the same command to retry the failed ones",
              file=sys.stderr)
        return 1
    if args.poisons_only:
        print(f"poisons in {out}/poisons/; run the same command without --poisons-only to train the cells")
        return 0
    print((out / "results.md").read_text() if (out / "results.md").exists() else "no results")
    print(f"results in {out}/ (results.md, results.csv, results.jsonl, plots/, progress.json)")
    return 0
