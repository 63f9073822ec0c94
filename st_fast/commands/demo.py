"""`st-fast demo`: the main job on the embedded default data (Fashion-MNIST), sized for a CPU."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import DataNotFoundError, UserError

# name -> (dataset, arch, train subset, epochs, fine-tune epochs)
SCALES = {
    "cpu": ("fashion-mnist", "small-resnet", 10000, 6, 2),
    "gpu": ("cifar10", "resnet18", None, 40, 10),
}
METHODS = ("nt", "st-full", "nt-cg-ft")
LABELS = {"nt": "NT", "st-full": "ST-Full", "nt-cg-ft": "NT-CG + same fine-tune (control)"}


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="poison Fashion-MNIST, train NT and ST-Full, compare",
                       description="Runs the toolkit end to end: poisons the training set with a "
                                   "model-free attack, trains NT, ST-Full and the NT-CG fine-tune "
                                   "control, and prints clean test accuracy (final and peak). "
                                   "--scale cpu (default): Fashion-MNIST, a few minutes on 2 cores; "
                                   "--scale gpu: CIFAR-10, ResNet-18.")
    p.add_argument("--scale", default="cpu", choices=tuple(SCALES),
                   help="cpu: Fashion-MNIST, small ResNet; gpu: CIFAR-10, ResNet-18")
    p.add_argument("--attack", default="sp", help="model-free attack to poison with (sp, ar, ops)")
    p.add_argument("--out", default="runs/demo", help="where runs, tables and plots go")
    p.add_argument("--epochs", type=int, default=None, help="override the scale's epochs")
    p.add_argument("--train-subset", type=int, default=None, help="override the scale's subset")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to run")
    p.add_argument("--seed", type=int, default=0, help="seed of the poison and of every run")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--download", action="store_true", help="download the dataset if missing")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-batch progress bar")
    p.set_defaults(func=run)


def ensure_fashion_mnist(root=None) -> None:
    """Find Fashion-MNIST; failing that, install Debian's package (as root) or download it."""
    from ..data import load_dataset

    try:
        load_dataset("fashion-mnist", "test", root=root)
        return
    except DataNotFoundError as first_error:
        apt = shutil.which("apt-get")
        if apt and hasattr(os, "geteuid") and os.geteuid() == 0:
            print("Fashion-MNIST not found; installing Debian's dataset-fashion-mnist ...", file=sys.stderr)
            ok = subprocess.run([apt, "install", "-y", "-q", "dataset-fashion-mnist"],
                                stdout=subprocess.DEVNULL).returncode == 0 or (
                subprocess.run([apt, "update", "-q"], stdout=subprocess.DEVNULL).returncode == 0
                and subprocess.run([apt, "install", "-y", "-q", "dataset-fashion-mnist"],
                                   stdout=subprocess.DEVNULL).returncode == 0)
            if ok:
                return
        try:
            print("Fashion-MNIST not found; trying to download it ...", file=sys.stderr)
            load_dataset("fashion-mnist", "test", root=root, download=True)
        except Exception:
            raise first_error from None


def run(args: argparse.Namespace) -> int:
    from .. import attacks
    from ..checkpoint import peek_checkpoint
    from ..config import STConfig, TrainConfig
    from ..data import prepare_data
    from ..files import check_writable
    from ..methods import METHODS as ALL_METHODS
    from ..plots import plot_curves
    from ..run import train as train_run
    from ..utils import atomic_write_text

    dataset, arch, subset, epochs, ft_epochs = SCALES[args.scale]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    if dataset == "fashion-mnist":
        ensure_fashion_mnist(args.data_root)
    out = check_writable(Path(args.out), "demo output directory")
    for method in methods:  # a checkpoint the demo did not write is refused before any work
        peek_checkpoint(out / method, writer="demo")
    poison_file = out / f"{args.attack}.pt"
    cfg = TrainConfig(dataset=dataset, arch=arch, epochs=args.epochs or epochs, seed=args.seed,
                      train_subset=args.train_subset or subset, device=args.device,
                      data_root=args.data_root, download=args.download, poison=str(poison_file))
    if not poison_file.exists():
        from ..data import load_dataset

        clean = load_dataset(dataset, "train", root=args.data_root, download=args.download)
        print(f"poisoning {clean.describe()} with {args.attack} ...", file=sys.stderr)
        attacks.generate(args.attack, clean, seed=args.seed).save(poison_file)
    else:  # the demo's own poison from an earlier run: it must be the one asked for
        meta = attacks.load(poison_file).meta
        if meta.get("attack") != attacks.resolve(args.attack).name or meta.get("seed") != args.seed:
            raise UserError(f"{poison_file} holds {meta.get('attack')} seed {meta.get('seed')}, not "
                            f"{args.attack} seed {args.seed}; use another --out")
    data = prepare_data(cfg, with_val=True)
    rows, curves = [], {}
    for method in methods:
        result = train_run(cfg, STConfig(method=method, ft_epochs=ft_epochs), run_dir=out / method,
                           resume="auto", writer="demo", progress=args.progress, data=data)
        curves[LABELS.get(method, method)] = [r["test_acc"] for r in result.history]
        rows.append((LABELS.get(method, method), result.summary))
    table = (f"Clean test accuracy after training on {args.attack}-poisoned {dataset} "
             f"({cfg.train_subset or 'all'} images, {arch}, seed {args.seed})\n\n"
             "| method | final | peak (oracle, not used to pick) | rollbacks | step-1 end | train s |\n"
             "|---|---|---|---|---|---|\n")
    table += "".join(f"| {n} | {s['final_test_acc']:.4f} | {s['peak_test_acc_oracle']:.4f} | {s['rollbacks']} "
                     f"| {s['stop_reason'] or ''} | {s['time_train']:.0f} |\n" for n, s in rows)
    table += ("\nfinal / peak: clean test accuracy after the last epoch / at the best epoch (peak is an "
              "oracle: it looks at the test set, so it is never used to choose); rollbacks: how often "
              "an ACM trigger rewound training; step-1 end: why staged training stopped before the "
              "fine-tune; train s: seconds spent in optimizer steps.\n")
    atomic_write_text(out / "results.md", table)
    plot_curves(curves, out / "test_accuracy.png", "clean test accuracy", f"st-fast demo ({args.attack})")
    print(table)
    print(f"runs, table and plots in {out}/ (test_accuracy.png, <method>/plots/)")
    return 0
