"""Activation Cluster Measurement: the public ``acm`` function and its input checks.

    ACM = 1/(K(K-1)) * sum_{i != j} ||mu_i - mu_j|| / (r_i + r_j)

over the class centroids ``mu_k`` and radii ``r_k`` of an embedding of the activations (a 2-D
t-SNE by default; see docs/acm.md and DESIGN.md section 1). Larger = tighter, better separated
class clusters. Only the samples of the chosen classes are embedded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from ..kernels.class_stats import RADIUS_KINDS
from ..utils import Stopwatch
from .stats import class_index, resolve_classes, run_class_statistics
from .tsne import BACKENDS, pca, run_tsne

EMBEDDINGS = ("tsne", "pca", None)


@dataclass
class ACMStats:
    """Everything behind one ACM value. Tensors live on the features' device."""

    acm: float
    classes: list[int]  # the labels, in the order of the rows below
    centroids: torch.Tensor  # (K, d) in the embedding space
    radii: torch.Tensor  # (K,)
    distances: torch.Tensor  # (K, K) centroid distances D_inter
    counts: torch.Tensor  # (K,) samples per class
    embedding: torch.Tensor  # (M, d): the embedded samples (those of the chosen classes)
    indices: torch.Tensor  # (M,) their row numbers in the input
    row_class: torch.Tensor  # (M,) each embedded sample's position in ``classes``
    embedding_kind: str  # "tsne", "pca" or "none"
    backend: str  # the t-SNE backend that ran ("exact", "cuml", "opentsne", "sklearn"), else "-"
    stats_backend: str  # the class statistics' backend that ran: "triton" or "torch"
    radius: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    # how the "exact" backend ran: "cpp-avx2" / "cpp-baseline" (csrc/tsne_cpu.cpp), "torch",
    # "triton"; "-" for the other backends and embeddings
    tsne_impl: str = "-"
    # repeats=k: one ACM per seed (seed, seed + 1, ...); ``acm`` is their mean, ``std`` their
    # sample standard deviation, and the geometry above is that of the first seed's embedding
    values: list[float] = field(default_factory=list)
    std: float = 0.0

    def __float__(self) -> float:
        return self.acm

    @property
    def implementation(self) -> str:
        """How the embedding ran, in one word: "exact/cpp-avx2", "exact/torch", "cuml", "pca", "none"."""
        if self.embedding_kind != "tsne":
            return self.embedding_kind
        return self.backend if self.tsne_impl == "-" else f"{self.backend}/{self.tsne_impl}"


def _as_tensor(x, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except Exception as err:  # ragged lists and the like
        raise UserError(f"{what} must be a torch tensor or numpy array: {err}") from None
    if arr.dtype == object or arr.dtype.kind in "SUV":
        raise UserError(f"{what} must be numeric, got an array of dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _check_features(features) -> torch.Tensor:
    x = _as_tensor(features, "features")
    if x.is_complex() or x.dtype == torch.bool:
        raise UserError(f"features must be real numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        raise UserError(f"features must be 2-D (N samples, D features), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(f"features is empty: shape {tuple(x.shape)}")
    x = x.float()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad_rows = (~finite).any(1).nonzero().flatten()
        raise UserError(
            f"features contain {int((~finite).sum())} NaN/Inf values in {bad_rows.numel()} rows "
            f"(first: row {int(bad_rows[0])}); remove or fix those samples"
        )
    return x


def _check_labels(labels, n: int, device) -> torch.Tensor:
    y = _as_tensor(labels, "labels")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(f"labels must be 1-D (N,), got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise UserError(
            f"features has {n} rows but labels has {y.shape[0]} entries; they must match"
        )
    if y.is_complex():
        raise UserError(f"labels must be integer class ids, got dtype {y.dtype}")
    if y.is_floating_point():
        whole = torch.isfinite(y) & (y == torch.round(y))
        if not bool(whole.all()):
            first = int((~whole).nonzero()[0])
            raise UserError(
                f"labels must be integer class ids; entry {first} is {y[first].item()!r}"
            )
    return y.to(device=device, dtype=torch.int64)


def _check_class_sizes(counts: torch.Tensor, chosen: list[int]) -> None:
    small = [(c, int(k)) for c, k in zip(chosen, counts.tolist(), strict=True) if k < 2]
    if small:
        detail = ", ".join(f"class {c}: {k}" for c, k in small)
        raise UserError(f"every class needs at least 2 samples for a radius ({detail})")


def acm(
    features,
    labels,
    *,
    embedding: str | None = "tsne",
    classes=None,
    radius: str = "mean",
    backend: str = "auto",
    seed: int = 0,
    return_stats: bool = False,
    tsne_options: dict | None = None,
    repeats: int = 1,
):
    """Activation Cluster Measurement of ``features`` (N, D) grouped by ``labels`` (N,).

    Args:
        features: activations, a torch tensor on any device or a numpy array.
        labels: integer class ids (N,).
        embedding: "tsne" (2-D, the paper's choice), "pca" (2-D) or None (the raw features).
        classes: None = every class present, int k = the first k classes (in sorted label
            order), or a list of labels.
        radius: class radius r_k: "mean" (default), "rms" or "max" distance to the centroid.
        backend: t-SNE backend: "auto" (fastest available here), "exact", "cuml", "opentsne"
            or "sklearn".
        seed: seeds the t-SNE / PCA; same seed and backend give the same result on the CPU.
        return_stats: return an :class:`ACMStats` instead of the float.
        tsne_options: extra options for the "exact" backend (see ``st_fast.cluster.exact_tsne``).
        repeats: embed under seeds ``seed .. seed + repeats - 1`` and return their mean ACM;
            the stats' ``values`` hold each reading and ``std`` their spread (with t-SNE the
            seeds share the affinities, so k repeats cost less than k calls).

    Raises:
        UserError (a ValueError) on bad input, saying which problem it found.
    """
    watch_total = Stopwatch()
    with watch_total:
        if embedding not in EMBEDDINGS:
            raise UserError(f"embedding must be 'tsne', 'pca' or None, got {embedding!r}")
        if radius not in RADIUS_KINDS:
            raise UserError(f"radius must be one of {RADIUS_KINDS}, got {radius!r}")
        if backend != "auto" and backend not in BACKENDS:
            raise UserError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise UserError(f"seed must be an int, got {seed!r}")
        if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
            raise UserError(f"repeats must be an integer >= 1, got {repeats!r}")
        timings: dict[str, float] = {}

        with Stopwatch(_device_of(features)) as sw:
            x = _check_features(features)
            y = _check_labels(labels, x.shape[0], x.device)
            chosen = resolve_classes(y, classes)
            cls = class_index(y, chosen)
            counts = torch.bincount(cls[cls >= 0].long(), minlength=len(chosen))
            _check_class_sizes(counts, chosen)
            indices = (cls >= 0).nonzero().flatten()
            if indices.numel() < x.shape[0]:
                x, cls = x[indices], cls[indices]
        timings["validate"] = sw.elapsed

        ran, impl = "-", "-"
        with Stopwatch(x.device) as sw:
            if repeats > 1:
                zs, ran, impl = _embed_repeats(x, embedding, backend, int(seed), int(repeats), tsne_options)
            elif embedding == "tsne":
                z, ran, impl = run_tsne(x, backend=backend, seed=int(seed), **(tsne_options or {}))
                zs = [z]
            elif embedding == "pca":
                zs = [pca(x, 2, seed=int(seed))]
            else:
                zs = [x]
        timings["embed"] = sw.elapsed

        with Stopwatch(x.device) as sw:
            values = []
            for z in zs:
                one, stats_backend = run_class_statistics(z, cls, len(chosen), radius)
                values.append(float(one.acm))
                if not np.isfinite(values[-1]):
                    _explain_non_finite(one, chosen)
                if len(values) == 1:
                    stats = one  # the geometry reported is the first seed's
            z = zs[0]
            value = values[0] if len(values) == 1 else float(np.mean(values))
            spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        timings["stats"] = sw.elapsed
    timings["total"] = watch_total.elapsed

    if not return_stats:
        return value
    return ACMStats(
        acm=value,
        classes=chosen,
        centroids=stats.centroids,
        radii=stats.radii,
        distances=stats.distances,
        counts=stats.counts,
        embedding=z,
        indices=indices,
        row_class=cls,
        embedding_kind=embedding or "none",
        backend=ran,
        stats_backend=stats_backend,
        radius=radius,
        timings=timings,
        tsne_impl=impl,
        values=values,
        std=spread,
    )


def _embed_repeats(x, embedding, backend, seed, repeats, tsne_options):
    """(embeddings, backend, implementation) under seeds seed .. seed + repeats - 1."""
    seeds = list(range(seed, seed + repeats))
    if embedding == "tsne":
        from .repeats import tsne_repeats

        runs = tsne_repeats(x, seeds, backend=backend, **(tsne_options or {}))
        return [r.embedding for r in runs], runs[0].backend, runs[0].implementation
    if embedding == "pca":
        return [pca(x, 2, seed=s) for s in seeds], "-", "-"
    return [x] * repeats, "-", "-"  # the raw features have no seed: every reading is the same


def _device_of(features) -> torch.device | None:
    return features.device if isinstance(features, torch.Tensor) else None


def _explain_non_finite(stats, chosen: list[int]):
    zero = [c for c, r in zip(chosen, stats.radii.tolist(), strict=True) if r == 0.0]
    if len(zero) >= 2:
        raise UserError(
            f"ACM is undefined: classes {zero} have radius 0 (all their samples coincide), "
            "so D_inter / (r_i + r_j) divides by zero; the features have collapsed"
        )
    raise UserError(f"ACM came out non-finite ({float(stats.acm)}); the embedding is degenerate")
