"""`st-fast train`: train a model (NT, ST and friends) on clean or poisoned data."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import STConfig, TrainConfig
from ..options import add_arguments, from_args


def add_train_args(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """The TrainConfig flags (from its declarations), shared by train / tune."""
    add_arguments(p.add_argument_group("data, model and optimisation"), TrainConfig, defaults=defaults)


def add_st_args(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """The STConfig flags: method, ACM trigger, rollback policy, multipliers, fine-tune."""
    add_arguments(p.add_argument_group("method and staged training (ACM trigger, rollback, fine-tune)"),
                  STConfig, defaults=defaults)


def config_from_args(args: argparse.Namespace, cls=TrainConfig):
    return from_args(cls, args)


def _defences() -> list[str]:
    from ..defences import DEFENCES

    return list(DEFENCES)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train on clean or poisoned data (NT, ST, controls)",
                       description="Train a model; writes config.json, history.csv/json, checks.csv, "
                                   "checkpoint.pt, summary.json and plots/ under --out.")
    add_st_args(p)
    p.add_argument("--defence", default="none", metavar="{none," + ",".join(_defences()) + "}",
                   help="a registered defence around the method (docs/defences.md): its data step, "
                        "per-batch step and training defaults")
    p.add_argument("--defence-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the defence in place of its default, e.g. width=64 for d-vae "
                        "(repeatable; VALUE as for `st-fast poison --param`: JSON such as 64, 5e-3, "
                        "[1.0, 3.0], a fraction such as 8/255, else text; docs/defences.md lists each "
                        "defence's settings)")
    p.add_argument("--out", default=None, help="run directory (default runs/<method>-<dataset>-<arch>-s<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint "
                   "(refused if any setting that changes the result differs)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-batch progress bar")
    p.add_argument("--profile", type=int, nargs="?", const=20, default=None, metavar="STEPS",
                   help="first profile STEPS training steps (default 20) with torch.profiler: writes "
                        "OUT/profile/trace.json (Chrome trace) and profile_summary.txt (top operators); training "
                        "then starts from the untouched state")
    add_train_args(p)
    p.set_defaults(func=run)


def parse_defence_params(items: list[str]) -> dict:
    """["width=64", "kl_targets=[1, 3]"] -> {"width": 64, "kl_targets": [1, 3]} (commands.values)."""
    from .values import parse_key_values

    return parse_key_values(items, "--defence-param", "width=64")


def run(args: argparse.Namespace) -> int:
    from ..run import train

    defence_params = parse_defence_params(args.defence_param)
    cfg = config_from_args(args)
    st = config_from_args(args, STConfig)
    out = Path(args.out or f"runs/{args.method}-{cfg.dataset}-{cfg.arch}-s{cfg.seed}")
    # train() refuses an existing run without --resume, a --resume without a checkpoint and an
    # unwritable --out, each before any work
    result = train(cfg, st, defence=args.defence, defence_params=defence_params, run_dir=out, resume="require" if args.resume else "never",
                   writer="train", progress=args.progress, profile_steps=args.profile)
    label = args.method + (f" + {args.defence}" if args.defence not in (None, "none") else "")
    val = f", val {result.val_acc:.4f} ({result.val_size} clean images)" if result.val_acc is not None else ""
    print(f"{label}: final test acc {result.final_test_acc:.4f}, peak (oracle) "
          f"{result.peak_test_acc_oracle:.4f}{val}, rollbacks {result.summary['rollbacks']} -> {out}")
    return 0
