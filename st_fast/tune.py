"""Pick ST's tau and alpha with short runs scored on a tiny *clean* validation set.

The paper reports that 20 clean validation images suffice. Those images are held out of the
training set (TrainConfig.val_size); the test set is never looked at. Each (tau, alpha) pair
trains once (a short budget) and is scored by its accuracy on the validation images; ties go
to the pair listed first.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from .config import STConfig, TrainConfig
from .data import prepare_data
from .errors import UserError
from .files import atomic_write_json, atomic_write_text, check_writable, rows_to_csv
from .run import train


def tune(cfg: TrainConfig, st: STConfig, taus: list[float], alphas: list[float], out: str | Path,
         progress: bool = False) -> dict:
    """Run the grid; returns {"best": {...}, "grid": [rows]} and writes tune.json / tune.csv."""
    if cfg.val_size < 1:
        raise UserError("tuning scores on clean validation images held out of training: set "
                        "val_size (the paper: 20)")
    out = check_writable(Path(out), "tune output directory")
    train_set, _, val = prepare_data(cfg, with_val=True)
    rows = []
    for tau, alpha in itertools.product(taus, alphas):
        run_st = dataclasses.replace(st, tau=tau, alpha=alpha)
        # test set None: the grid never looks at it
        r = train(cfg, run_st, run_dir=out / f"tau{tau:g}-alpha{alpha:g}", resume="auto", writer="tune",
                  progress=progress, data=(train_set, None, val))
        rows.append({"tau": tau, "alpha": alpha, "val_acc": r.val_acc,
                     "rollbacks": r.summary["rollbacks"], "stop_reason": r.summary["stop_reason"]})
        r.trainer.log(f"[tune] tau {tau:g} alpha {alpha:g}: val acc {r.val_acc:.3f} "
                      f"({len(val)} clean images), rollbacks {r.summary['rollbacks']}")
    best = max(rows, key=lambda r: r["val_acc"])  # max() keeps the first of equal scores
    result = {"best": best, "grid": rows, "val_size": len(val), "method": st.method}
    atomic_write_json(out / "tune.json", result)
    atomic_write_text(out / "tune.csv", rows_to_csv(rows))
    return result
