"""Class statistics behind ACM: class selection, the torch/Triton path and a float64 numpy reference.

``resolve_classes`` / ``class_index`` map labels to class indices (the ``classes`` argument of
``st_fast.acm``). ``run_class_statistics`` computes centroids, radii, centroid distances and ACM
through the fast path ``CLASS_STATS``: the fused kernel in ``kernels/class_stats.py`` where
Triton can run, its torch reference elsewhere, and says which ran.
``class_statistics_numpy`` is the same in float64 numpy, written as plainly as possible.
"""

from __future__ import annotations

import numpy as np
import torch

from ..backends import FastPath
from ..errors import UserError
from ..kernels import triton_device_reason, triton_missing
from ..kernels.class_stats import (
    MAX_KERNEL_CLASSES,
    RADIUS_KINDS,
    ClassStats,
    class_stats_reference,
    class_stats_triton,
)

CLASS_STATS = FastPath(
    "class-stats",
    "ACM class statistics",
    auto={"cpu": ("triton", "torch"), "cuda": ("triton", "torch"), "*": ("torch",)},
)
CLASS_STATS.add(
    "triton",
    "one fused Triton program (kernels/class_stats.py)",
    detect=triton_missing,
    runs_on=triton_device_reason,
    takes=lambda num_classes: (
        None if num_classes <= MAX_KERNEL_CLASSES else f"more than {MAX_KERNEL_CLASSES} classes"
    ),
    fallback="torch",
)
CLASS_STATS.add("torch", "torch reference (kernels/class_stats.py)")
_RUN = {"triton": class_stats_triton, "torch": class_stats_reference}


def resolve_classes(labels: torch.Tensor, classes) -> list[int]:
    """The class labels ACM uses: all present (None), the first k present (int), or a list."""
    present = torch.unique(labels).tolist()
    if classes is None:
        chosen = present
    elif isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
        if classes < 2:
            raise UserError(f"classes={classes}: ACM needs at least 2 classes")
        if classes > len(present):
            raise UserError(
                f"classes={classes}, but the labels hold only {len(present)} classes {present}"
            )
        chosen = present[:classes]
    else:
        try:
            chosen = [int(c) for c in classes]
        except (TypeError, ValueError):
            raise UserError(
                f"classes must be None, an int or a list of integer labels, got {classes!r}"
            ) from None
        if len(set(chosen)) != len(chosen):
            raise UserError(f"classes lists a label more than once: {chosen}")
        absent = sorted(set(chosen) - set(present))
        if absent:
            raise UserError(f"classes names labels absent from the data: {absent}")
    if len(chosen) < 2:
        raise UserError(f"ACM needs at least 2 classes, got {len(chosen)} ({chosen})")
    return chosen


def class_index(labels: torch.Tensor, chosen: list[int]) -> torch.Tensor:
    """int32 (N,): position of each sample's label in ``chosen``, or -1 if not chosen."""
    table = torch.tensor(chosen, dtype=labels.dtype, device=labels.device)
    match = labels[:, None] == table[None, :]
    idx = match.float().argmax(1).int()
    return torch.where(match.any(1), idx, torch.full_like(idx, -1))


def run_class_statistics(
    z: torch.Tensor, class_idx: torch.Tensor, num_classes: int, radius: str = "mean", *,
    use_kernel: bool = True,
) -> tuple[ClassStats, str]:  # fmt: skip
    """(centroids, radii, distances and ACM of embedding ``z``; the backend that computed them).

    The fused kernel where Triton can run and K is small enough, the torch reference otherwise
    (always with ``use_kernel=False``)."""
    if radius not in RADIUS_KINDS:
        raise UserError(f"radius must be one of {RADIUS_KINDS}, got {radius!r}")
    chosen = CLASS_STATS.select("auto" if use_kernel else "torch", [z.device]).name
    name = CLASS_STATS.fit(chosen, num_classes=num_classes)
    return _RUN[name](z, class_idx, num_classes, radius), name


def class_statistics(z, class_idx, num_classes: int, radius: str = "mean", *, use_kernel=True):
    """The statistics of :func:`run_class_statistics` (a ClassStats)."""
    return run_class_statistics(z, class_idx, num_classes, radius, use_kernel=use_kernel)[0]


def class_statistics_numpy(z, class_idx, num_classes: int, radius: str = "mean") -> dict:
    """Float64 numpy reference: a loop over classes, straight from the formula."""
    z = np.asarray(z, dtype=np.float64)
    class_idx = np.asarray(class_idx)
    K = num_classes
    centroids = np.stack([z[class_idx == k].mean(0) for k in range(K)])
    radii = np.empty(K)
    for k in range(K):
        d = np.linalg.norm(z[class_idx == k] - centroids[k], axis=1)
        radii[k] = {"mean": d.mean(), "rms": np.sqrt((d**2).mean()), "max": d.max()}[radius]
    distances = np.linalg.norm(centroids[:, None, :] - centroids[None, :, :], axis=-1)
    total = sum(
        distances[i, j] / (radii[i] + radii[j]) for i in range(K) for j in range(K) if i != j
    )
    return {
        "acm": total / (K * (K - 1)),
        "centroids": centroids,
        "radii": radii,
        "distances": distances,
        "counts": np.bincount(class_idx[class_idx >= 0], minlength=K),
    }
