"""`st-fast tune`: choose tau and alpha on a tiny clean validation set (never the test set)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .train import add_st_args, add_train_args, config_from_args


def _floats(text: str) -> list[float]:
    from ..errors import UserError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"expected comma-separated numbers, got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="pick tau and alpha on 20 clean validation images",
                       description="Short ST runs over a tau x alpha grid, each scored by accuracy on "
                                   "--val-size clean training images held out of training. Writes "
                                   "tune.json and tune.csv under --out.")
    add_st_args(p, defaults={"method": "st-full"})
    p.add_argument("--taus", type=_floats, default=[1.5, 1.75, 2.0, 2.5],
                   help="comma-separated tau values to try (default: 1.5,1.75,2,2.5)")
    p.add_argument("--alphas", type=_floats, default=[0.25, 0.5],
                   help="comma-separated alpha values to try (default: 0.25,0.5)")
    p.add_argument("--out", default="runs/tune", help="where the grid's runs and tune.json go (default: runs/tune)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-batch progress bar")
    add_train_args(p, defaults={"val_size": 20})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import STConfig, TrainConfig
    from ..tune import tune

    cfg = config_from_args(args, TrainConfig)
    st = config_from_args(args, STConfig)
    result = tune(cfg, st, args.taus, args.alphas, Path(args.out), progress=args.progress)
    print("| tau | alpha | val acc | rollbacks |\n|---|---|---|---|")
    for r in result["grid"]:
        print(f"| {r['tau']:g} | {r['alpha']:g} | {r['val_acc']:.3f} | {r['rollbacks']} |")
    b = result["best"]
    print(f"best: --tau {b['tau']:g} --alpha {b['alpha']:g} (val acc {b['val_acc']:.3f} on "
          f"{result['val_size']} clean images)")
    return 0
