"""Share finished cells of another study: a cell identical to one already run elsewhere (same
cell id, dataset, training, ST and defence settings, attack parameters, attack version and
poison seed, on the same device type, CPU model and kernel ISA) is copied into this study's
OUT instead of being run again.

    share_cells(cfg, OUT, ["benchmarks/results/st_policy"], "cpu", machine_info())  # -> ids

The copy is the source's record, written as a cell folder (``report.write_cell_dir``) whose
result.json gains ``shared_from`` (the source study's name), so every table says where a number
came from. What a config cannot show is the code: a change that makes another poison under the
same parameters bumps the attack's version (``AttackSpec.version``), which is compared; any
other unannounced change is caught only by re-running one shared cell per attack and comparing
it with the shared one (docs/bench.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..attacks import resolve as resolve_attack
from ..checkpoint import record_differences
from ..errors import UserError
from ..utils import effective_isa
from .config import BenchConfig, Cell, defence_configs, load_config
from .report import load_cells, write_cell_dir
from .runner import Claim

# fields of TrainConfig that say where a run was, not what it was
WHERE_FIELDS = ("poison", "device", "data_root", "download")


def _settings(cfg: BenchConfig, cell: Cell) -> dict:
    """What a cell's result depends on, as far as its bench config says."""
    tcfg, scfg, defence = defence_configs(cfg, cell.defence, arch=cell.arch, seed=cell.seed)
    train = {k: v for k, v in dataclasses.asdict(tcfg).items() if k not in WHERE_FIELDS}
    attack = None if cell.attack == "clean" else {
        "params": cfg.attack_params.get(cell.attack, {}), "poison_seed": cfg.poison_seed,
        "file": cfg.poison_files.get(cell.attack)}
    return {"dataset": cfg.dataset, "train": train, "st": dataclasses.asdict(scfg),
            "defence": defence.name, "variant": cfg.variants.get(cell.defence, {}), "attack": attack}


def share_cells(cfg: BenchConfig, out: str | Path, sources: list[str | Path], device_type: str,
                machine: dict, verbose: bool = True) -> list[str]:
    """Copy into OUT/cells/ every cell of ``cfg`` that is not finished there and that a source
    study (a bench folder with bench.yaml, packed or not) ran with the same settings, on
    ``device_type`` and on the CPU ``machine`` describes (``utils.machine_info``: model and the
    instruction sets its kernels use; CPU runs are not bit-reproducible across CPU types, so a
    cell whose machine was not recorded is never shared; the thread count is not compared:
    one- and two-thread cells of fmnist_cpu and st_policy agree bit for bit). Returns the ids
    copied; cells that differ are listed with their first difference when ``verbose``."""
    out = Path(out)
    wanted = {c.id: c for c in cfg.cells() if not (out / "cells" / c.id / "result.json").exists()}
    copied = []
    for source in sources:
        source = Path(source)
        if not (source / "bench.yaml").exists():
            raise UserError(f"{source}: not a bench folder (no bench.yaml); name a study folder "
                            f"such as benchmarks/results/st_findings")
        src_cfg = load_config(source / "bench.yaml")
        for cell_id, record in load_cells(source).items():
            cell = wanted.get(cell_id)
            if cell is None or record["result"] is None:
                continue
            result = record["result"]
            why = [f"{k} {x!r} -> {y!r}"
                   for k, x, y in record_differences(_settings(src_cfg, cell), _settings(cfg, cell))]
            if cell.attack != "clean" and cell.attack not in cfg.poison_files:
                version = resolve_attack(cell.attack).version   # results before versions: 1
                if result.get("attack_version", 1) != version:
                    why.append(f"attack {cell.attack} version {result.get('attack_version', 1)} -> {version} "
                               f"(the same parameters make another poison now)")
            if result.get("device", device_type).split(":")[0] != device_type:
                why.append(f"device {result['device']} -> {device_type}")
            src_machine = result.get("machine") or {}
            if src_machine.get("cpu") != machine.get("cpu"):
                why.append(f"machine.cpu {src_machine.get('cpu')!r} -> {machine.get('cpu')!r}")
            elif effective_isa(src_machine) != effective_isa(machine):
                why.append(f"kernel ISA {effective_isa(src_machine)} -> {effective_isa(machine)} "
                           f"(docs/bench.md: limiting the kernels' ISA)")
            if why:
                if verbose:
                    print(f"[share] {cell_id}: not shared from {source.name} ({why[0]})")
                continue
            claim = Claim(out / "cells" / cell_id)   # a worker may be running it right now
            if not claim.acquire():
                continue
            try:
                if not (out / "cells" / cell_id / "result.json").exists():
                    record = {**record, "result": {**result, "shared_from": src_cfg.name}}
                    write_cell_dir(out / "cells" / cell_id, record)
                    copied.append(cell_id)
            finally:
                claim.release()
            del wanted[cell_id]
            if verbose:
                print(f"[share] {cell_id}: shared from {source.name}")
    return copied
