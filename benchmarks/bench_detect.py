"""How well `st-fast detect` tells poisoned training sets from clean ones (issue 19, item 3).

For every poisoned-set file given, the training set a study cell trains on (the same
``--train-subset`` / ``--val-size`` / ``--seed`` as the cell, through
``st_fast.data.training_indices``) is rebuilt at each protection ratio: 1.0 is the file itself;
a partial ratio r poisons a seeded random r of those images with the file's own perturbed
images and keeps the rest clean (the perturbations are the ones crafted at 1.0, not a
poison re-crafted at r). Clean sets: the same images unpoisoned, plus ``--clean-subsets``
other seeded subsets of the same size. ``detect`` runs with its defaults on each (its threshold
was fixed on clean data before any of this; docs/detect.md). Since 2026-12-03 the score is in
units of the thresholds (the larger of the fit-speed test's gap / 4.0 and the bound test's
score / 0.5; since 2026-12-06 also the held-out test's points / 8.0); each test's own figures
are rows too.

Rows: per set, score, verdict (1 = flagged), seconds, per-sample AUROC (partial ratios: do the
poisoned images score higher than the clean ones?); per attack and ratio, the AUROC over
datasets (its score against every clean set's score: 1.0 = above all of them).

    python benchmarks/bench_detect.py --poisons OUT/poisons/*.pt [--write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from harness import Run, add_output_flags, parse_args
from sklearn.metrics import roc_auc_score

from st_fast.config import TrainConfig
from st_fast.data import load_dataset, training_indices
from st_fast.data.poisoned import load as load_poison
from st_fast.detect import detect


def over_datasets(score: float, clean_scores: list[float]) -> float:
    """AUROC of one poisoned set's score against the clean sets' (ties count half)."""
    return sum(1.0 if score > c else 0.5 if score == c else 0.0 for c in clean_scores) / len(clean_scores)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--poisons", nargs="+", type=Path, required=True, help="poisoned-set files (st_fast .pt)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--train-subset", type=int, default=5000, help="as the study cells (default 5000)")
    p.add_argument("--val-size", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="the cells' seed whose training set is rebuilt")
    p.add_argument("--ratios", nargs="+", type=float, default=[1.0, 0.5, 0.2])
    p.add_argument("--clean-subsets", type=int, default=4, help="clean subsets besides the same images clean")
    add_output_flags(p)
    args = parse_args(p, argv)
    for path in args.poisons:
        if not path.is_file():
            print(f"bench_detect: {path}: no such poisoned-set file; pass files written by st-fast poison", file=sys.stderr)
            return 2
    run = Run("detect", "cpu", argv=argv)
    clean = load_dataset(args.dataset, "train")
    cfg = TrainConfig(dataset=args.dataset, train_subset=args.train_subset, val_size=args.val_size, seed=args.seed)
    setting = f"{args.dataset}, {args.train_subset} training images (seed {args.seed}), detect defaults"

    def measure(name: str, ds, truth=None) -> float:
        t0 = time.perf_counter()
        d = detect(ds)
        seconds = time.perf_counter() - t0
        tests = d.evidence["tests"]
        figures = {"score": round(d.score, 3), "flagged": int(d.poisoned),
                   "fit-speed gap": round(tests["fit_speed"]["score"], 3), "bound": round(tests["bound"]["score"], 3),
                   "held-out": round(tests["held_out"]["score"], 2), "seconds": round(seconds, 1)}
        if truth is not None:
            figures["per-sample AUROC"] = round(float(roc_auc_score(truth.numpy(), d.per_sample.numpy())), 4)
        run.add_table(setting, {name: figures})
        print(name, figures, flush=True)
        return d.score

    clean_scores = []
    base_idx, _ = training_indices(cfg, clean)
    clean_scores.append(measure("clean (the study's own images)", clean.subset(base_idx)))
    for k in range(1, args.clean_subsets + 1):
        idx = torch.randperm(len(clean), generator=torch.Generator().manual_seed(1000 + k))[: args.train_subset]
        clean_scores.append(measure(f"clean (subset seed {1000 + k})", clean.subset(idx)))

    poisoned_scores = {}
    for path in args.poisons:
        ps = load_poison(path, dataset=clean)
        attack = str(ps.meta.get("attack", path.stem))
        idx, _ = training_indices(cfg, clean, ps.meta.get("subset"))
        raw, base = ps.images[idx], clean.images[idx]
        poisonable = torch.isin(idx, ps.indices)
        for ratio in args.ratios:
            g = torch.Generator().manual_seed(args.seed)
            candidates = torch.nonzero(poisonable).flatten()
            chosen = candidates[torch.randperm(len(candidates), generator=g)[: round(ratio * len(idx))]]
            mask = torch.zeros(len(idx), dtype=torch.bool)
            mask[chosen] = True
            images = torch.where(mask[:, None, None, None], raw, base)
            ds = clean.subset(idx).with_images(images)
            truth = mask.int() if 0 < int(mask.sum()) < len(mask) else None
            name = f"{attack}, ratio {ratio:g}"
            poisoned_scores[name] = measure(name, ds, truth)
    for name, score in poisoned_scores.items():
        run.add_table(setting, {name: {"AUROC over datasets": over_datasets(score, clean_scores)}})
    run.save(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
