"""Share finished cells of another study: a cell identical to one already run elsewhere (same
cell id, dataset, training, ST and defence settings, attack parameters, attack version and
poison seed, on the same device type, CPU model and kernel ISA) is copied into this study's
OUT instead of being run again.

    share_cells(cfg, OUT, ["benchmarks/results/st_policy"], "cpu", machine_info())  # -> ids

The copy is the source's record, written as a cell folder (``report.write_cell_dir``) whose
result.json gains ``shared_from`` (the source study's name), so every table says where a number
came from. What a config cannot show is the poison: the same parameters can make another one
(changed attack code, which bumps ``AttackSpec.version``, compared; or a machine that crafts
differently). So a generated poison's cells are shared only when the poison is shown to be
the same: by its content digest (``poison_digest``, which results record since it existed),
or, for a source older than that, by a witness: a cell of the same poisoned set run here whose
result (curve, final and peak accuracy) is the source's bit for bit (docs/bench.md).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..attacks import resolve as resolve_attack
from ..checkpoint import record_differences
from ..errors import UserError
from ..utils import effective_isa
from .config import BenchConfig, Cell, defence_configs, load_config
from .poisons import poison_digest, poison_path
from .report import load_cells, write_cell_dir
from .runner import Claim

# fields of TrainConfig that say where a run was, not what it was
WHERE_FIELDS = ("poison", "device", "data_root", "download")
# what a witness must reproduce bit for bit: two poisons that differ at all train otherwise
WITNESS_FIELDS = ("final_test_acc", "peak_test_acc_oracle", "test_acc_curve", "epochs_run", "rollbacks")


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
    # cells run here (not copied): the witnesses of sources that predate poison digests
    here = {i: r["result"] for i, r in load_cells(out).items()
            if r["result"] is not None and "shared_from" not in r["result"]}
    digests = {}   # poison path -> content digest, read once
    copied = []
    for source in sources:
        source = Path(source)
        if not (source / "bench.yaml").exists():
            raise UserError(f"{source}: not a bench folder (no bench.yaml); name a study folder "
                            f"such as benchmarks/results/st_findings")
        src_cfg = load_config(source / "bench.yaml")
        source_cells = load_cells(source)
        for cell_id, record in source_cells.items():
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
                why += same_poison(cfg, out, cell, result, source_cells, here, digests)
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


def same_poison(cfg: BenchConfig, out: Path, cell: Cell, result: dict, source_cells: dict,
                here: dict, digests: dict) -> list[str]:
    """Why the source's poisoned set of ``cell`` may not be this study's ([] when it is): the
    content digests differ, or (a source without digests) no cell of this set run here
    reproduces the source's record, or one contradicts it."""
    path = poison_path(out, cfg, cell)
    if "poison_digest" in result:
        if not path.exists():
            return [f"its {cell.attack} poison is not made here yet (shared once it is, if equal)"]
        if path not in digests:
            digests[path] = poison_digest(path)
        if digests[path] != result["poison_digest"]:
            return [f"poison {cell.attack} differs (digest {result['poison_digest'][:12]} -> "
                    f"{digests[path][:12]})"]
        return []
    witnesses = [i for i, r in sorted(here.items())
                 if (r.get("attack"), r.get("ratio")) == (cell.attack, cell.ratio)
                 and (source_cells.get(i) or {}).get("result") is not None]
    if not witnesses:
        return [f"no cell of its {cell.attack} poison run here to compare with (a source without "
                f"poison digests needs one: run e.g. {cell.attack}...-nt-s0 first)"]
    for i in witnesses:
        theirs = source_cells[i]["result"]
        diff = [k for k in WITNESS_FIELDS if here[i].get(k) != theirs.get(k)]
        if diff:
            return [f"poison {cell.attack} differs: witness {i} {diff[0]} {theirs.get(diff[0])!r} "
                    f"there, {here[i].get(diff[0])!r} here"]
    return []
