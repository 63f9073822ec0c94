"""One cell of the matrix: train it through ``st_fast.train`` and write its result.json.

Every executor (serial, Ray) runs a cell with :func:`run_cell`, so a cell's result does not
depend on where it ran. ``OUT/cells/<cell id>/result.json`` is written last: its presence marks
the cell finished (then checkpoint.pt is deleted unless keep_checkpoints). An interrupted cell
continues from its last atomic checkpoint, which must be that cell's own (same config; loaded
without running code): anything else is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..files import atomic_write_json
from ..utils import machine_info
from .config import BenchConfig, Cell, defence_configs, variant_defence_params
from .poisons import poison_fields


class CellsFailed(RuntimeError):
    """Cells that failed after their retries; the others finished and are in the reports."""

    def __init__(self, failures: dict[str, str]):
        self.failures = dict(failures)
        lines = [f"  {cell}: {error}" for cell, error in sorted(self.failures.items())]
        super().__init__(f"{len(self.failures)} cell(s) failed:\n" + "\n".join(lines))


def cell_configs(cfg: BenchConfig, cell: Cell, poison: Path | None, device: str):
    """The TrainConfig, STConfig and Defence of one cell (variants and defence overrides applied)."""
    return defence_configs(cfg, cell.defence, source=cell.id, arch=cell.arch, seed=cell.seed,
                           device=device, poison=str(poison) if poison else None)


def run_cell(cfg: BenchConfig, cell: Cell, out: Path, device: str, progress: bool, poison: Path | None) -> dict:
    """Train ``cell`` on ``poison`` (its poisoned set, already made; None for clean) into
    OUT/cells/<id>/ and return its result (also written to result.json)."""
    from ..defences import DEFENCES
    from ..run import train

    tcfg, scfg, defence = cell_configs(cfg, cell, poison, device)
    run_dir = out / "cells" / cell.id
    # an interrupted cell continues; a checkpoint that is unreadable, foreign or of a changed
    # config is refused (one line naming it), never silently deleted or half-loaded
    r = train(tcfg, scfg, defence=defence.name if defence.name in DEFENCES else None,
              defence_params=variant_defence_params(cfg, cell.defence) or None, run_dir=run_dir,
              resume="auto", writer="bench", progress=progress,
              run_extra={"cell": cell.defence, "variant": dict(cfg.variants.get(cell.defence, {}))})
    s, trainer = r.summary, r.trainer
    result = {**dataclasses.asdict(cell), "cell": cell.id, "dataset": cfg.dataset, "method": scfg.method,
              **poison_fields(out, cfg, cell),
              "final_test_acc": s["final_test_acc"], "peak_test_acc_oracle": s["peak_test_acc_oracle"],
              "val_acc": r.val_acc, "val_size": r.val_size,
              "rollbacks": s["rollbacks"], "stop_reason": s["stop_reason"], "epochs_run": s["epochs_run"],
              "time_train": s["time_train"], "time_acm": s["time_acm"], "time_eval": s["time_eval"],
              "wall_s": r.wall_s, "test_acc_curve": [h["test_acc"] for h in r.history],
              "device": str(trainer.device), "optimizer": trainer.opt.backend,
              "machine": machine_info(trainer.device),
              # checks restored from a checkpoint of older code lack the key
              "acm_impl": sorted({c.get("acm_impl", "-") for c in trainer.checks})}
    atomic_write_json(run_dir / "result.json", result)
    if not cfg.keep_checkpoints:  # the cell is finished: its checkpoint is no longer needed
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    return result
