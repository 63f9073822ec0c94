"""The development data the per-sample detection score was chosen on (docs/detect.md): planted
class-wise patterns, no attack of the evaluation, on the 5,000 clean training images of a
study cell (Fashion-MNIST, seed 0). Per-sample AUROC of ``st_fast.detect.per_sample_scores``
(the default: both views standardised within class, summed with weights), of their plain sum,
of each view alone
(``residual_direction_scores`` with Ledoit-Wolf shrinkage and with fixed ridges,
``exact_value_scores``), and of the same on a copy without saturated pixels (content
compressed to grey levels 64-191 with seeded noise of std 6: no exact value repeats for free).

    python benchmarks/bench_detect_dev.py [--write]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from harness import Run, add_output_flags, parse_args
from sklearn.metrics import roc_auc_score

from st_fast.config import TrainConfig
from st_fast.data import load_dataset, training_indices
from st_fast.detect import (
    exact_value_scores,
    per_sample_scores,
    residual_direction_scores,
    standardise_within_class,
)


def planted(images: torch.Tensor, labels: torch.Tensor, ratio: float, kind: str, eps: float, seed: int):
    """A seeded ``ratio`` of the images get their class's pattern: random +-eps signs per pixel
    ("sign"), random +-eps offsets on 4x4 blocks ("blocks"), or one shortcut pixel ("pixel": as
    a one-pixel shortcut is built, the position where the class varies least, set to the extreme
    opposite to the class's mean there); uint8 images and the mask."""
    g = torch.Generator().manual_seed(seed)
    size = images.shape[-2:]
    if kind == "pixel":
        flat = images.flatten(1).float()
        pos = torch.stack([flat[labels == y].var(0).add(torch.rand(flat.shape[1], generator=g) * 1e-3).argmin()
                           for y in range(10)])
        value = torch.stack([(flat[labels == y][:, pos[y]].mean() < 128).float() * 255 for y in range(10)])
        mask = torch.zeros(len(labels), dtype=torch.bool)
        mask[torch.randperm(len(labels), generator=g)[: round(ratio * len(labels))]] = True
        x = flat.clone()
        rows = torch.nonzero(mask).flatten()
        x[rows, pos[labels[rows]]] = value[labels[rows]]
        return x.view(images.shape).to(torch.uint8), mask
    if kind == "sign":
        pattern = (torch.randint(0, 2, (10, 1, *size), generator=g) * 2 - 1).float() * eps
    else:
        pattern = F.interpolate((torch.rand(10, 1, 4, 4, generator=g) * 2 - 1) * eps, size=tuple(size), mode="nearest")
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[torch.randperm(len(labels), generator=g)[: round(ratio * len(labels))]] = True
    x = images.float() + pattern[labels] * mask[:, None, None, None]
    return x.round().clamp(0, 255).to(torch.uint8), mask


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eps", type=float, default=8.0, help="pattern amplitude in grey levels (default 8)")
    add_output_flags(p)
    args = parse_args(p, argv)
    run = Run("detect_dev", "cpu", argv=argv)
    clean = load_dataset("fashion-mnist", "train")
    idx, _ = training_indices(TrainConfig(dataset="fashion-mnist", train_subset=5000, val_size=20, seed=0), clean)
    images, labels = clean.images[idx], clean.labels[idx]
    unsaturated = (64 + 0.5 * images.float() + 6 * torch.randn(images.shape, generator=torch.Generator().manual_seed(5)))
    ridges = {"residual direction, ridge 1e-5": 1e-5, "residual direction, ridge 1e-3": 1e-3}
    for data, base in (("", images), (", no saturated pixels", unsaturated.round().clamp(0, 255).to(torch.uint8))):
        setting = f"Fashion-MNIST, 5,000 images{data}, planted class-wise +-{args.eps:g}/255 patterns"
        for kind in ("sign", "blocks", "pixel"):
            for ratio in (0.5, 0.2):
                x, mask = planted(base, labels, ratio, kind, args.eps, seed=123)
                # each view once; the default and the plain sum are combinations of the same two
                residual, exact = residual_direction_scores(x, labels, 10), exact_value_scores(x, labels, 10)
                views = [standardise_within_class(v, labels, 10) for v in (residual, exact)]
                scores = {"weighted sum of both views (default)": per_sample_scores(x, labels, 10),
                          "plain sum of both views": views[0] + views[1],
                          "residual direction, Ledoit-Wolf": residual,
                          **{name: residual_direction_scores(x, labels, 10, ridge=r) for name, r in ridges.items()},
                          "exact values": exact}
                for name, score in scores.items():
                    auroc = roc_auc_score(mask.numpy(), score.numpy())
                    run.add(setting, name, f"{kind} {ratio:g}", round(float(auroc), 4), "AUROC", better="higher")
                    print(data or "fmnist", kind, ratio, name, round(float(auroc), 4), flush=True)
    run.save(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
