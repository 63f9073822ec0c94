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

from .config import TrainConfig
from .st import StagedTrainer, STConfig
from .trainer import prepare_data
from .utils import atomic_write_json, atomic_write_text


def tune(cfg: TrainConfig, st: STConfig, taus: list[float], alphas: list[float], out: str | Path,
         progress: bool = False) -> dict:
    """Run the grid; returns {"best": {...}, "grid": [rows]} and writes tune.json / tune.csv."""
    from .trainer import rows_to_csv

    out = Path(out)
    cfg = dataclasses.replace(cfg, val_size=cfg.val_size or 20)
    train, test, val = prepare_data(cfg, with_val=True)
    rows = []
    for tau, alpha in itertools.product(taus, alphas):
        run_st = dataclasses.replace(st, tau=tau, alpha=alpha)
        trainer = StagedTrainer(cfg, run_st, train, None, run_dir=out / f"tau{tau:g}-alpha{alpha:g}",
                                progress=progress, writer="tune")
        trainer.try_resume()
        trainer.fit()
        rows.append({"tau": tau, "alpha": alpha, "val_acc": trainer.evaluate(val),
                     "rollbacks": trainer.rollbacks, "stop_reason": trainer.stop_reason})
        trainer.log(f"[tune] tau {tau:g} alpha {alpha:g}: val acc {rows[-1]['val_acc']:.3f} "
                    f"({len(val)} clean images), rollbacks {trainer.rollbacks}")
    best = max(rows, key=lambda r: r["val_acc"])  # max() keeps the first of equal scores
    result = {"best": best, "grid": rows, "val_size": len(val), "method": st.method}
    atomic_write_json(out / "tune.json", result)
    atomic_write_text(out / "tune.csv", rows_to_csv(rows))
    return result
