"""`st-fast bench`: run an attack x defence x architecture matrix from a YAML config."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark matrix from a YAML config (resumable)",
                       description="Runs every cell of the matrix; finished cells are skipped, an "
                                   "interrupted cell continues from its checkpoint. Writes "
                                   "results.jsonl, results.csv, results.md and plots/ under --out. "
                                   "Start the same command several times (e.g. one per core "
                                   "with OMP_NUM_THREADS=1) to share the cells between workers.")
    p.add_argument("--config", required=True, help="YAML file (see benchmarks/configs/)")
    p.add_argument("--out", default=None, help="output directory (default runs/bench/<name>)")
    p.add_argument("--only", default=None, help="run only cells whose id contains this text "
                   "(comma-separated: any of them; write --only=-st-s for a leading dash)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    p.add_argument("--progress", action="store_true", help="show per-batch progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import load_config, run_bench
    from ..bench.runner import matches

    cfg = load_config(args.config)
    out = Path(args.out or f"runs/bench/{cfg.name}")
    if args.dry_run:
        for c in cfg.cells():
            if matches(c.id, args.only):
                print(c.id)
        return 0
    run_bench(cfg, out, device=args.device, progress=args.progress, only=args.only)
    print((out / "results.md").read_text() if (out / "results.md").exists() else "no results")
    print(f"results in {out}/ (results.md, results.csv, results.jsonl, plots/)")
    return 0
