"""A poisoned training set (:class:`PoisonedSet`), its file, and import of what other tools produce.

One file (``torch.save`` of plain tensors and JSON-like values, so it loads with
``weights_only=True``: no code runs on load) holds::

    magic            "st_fast.poisoned-set"
    format_version   1
    images           uint8 (N, C, H, W): the whole training set, poisoned samples replaced
    labels           int64 (N,)
    indices          int64 (k,): the poisoned samples, sorted
    meta             attack, params, dataset, split, seed, ratio, norm, eps, subset, info
    sha256           of images, labels and indices (catches damaged files)

Loading checks all of it, and against a dataset (when given) the shape, the name, the labels,
that samples outside ``indices`` are unchanged and that the realised perturbation obeys the
recorded norm bound, plus the 8-bit quantisation slack (st_fast.data.perturbation.
quantisation_slack). Every failure is a :class:`UserError` saying what and what to do, naming
the first bad index.

Poisons made by other tools come in through st_fast.data.foreign (`st-fast poison --from`).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..files import atomic_write_bytes, load_torch_file
from .perturbation import NORMS, quantisation_slack, realised_norms

FORMAT_VERSION = 1


@dataclass
class PoisonedSet:
    """A whole training set with some samples replaced by poisoned ones.

    images: uint8 (N, C, H, W), the full training set (clean outside ``indices``);
    labels: int64 (N,); indices: int64, sorted, the poisoned samples; meta: attack, params,
    dataset, seed, norm, eps, ratio, format_version, and what the attack reports.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def attack(self) -> str:
        return str(self.meta.get("attack", "?"))

    @property
    def ratio(self) -> float:
        return len(self.indices) / max(1, len(self.images))

    def perturbation(self, clean: torch.Tensor) -> torch.Tensor:
        """Realised perturbation in [0, 1] units (float32) against the clean uint8 images."""
        return (self.images.float() - clean.float()) / 255.0

    def save(self, path: str | Path) -> Path:
        return save(self, path)

    def digest(self) -> str:
        """SHA-256 of the content (images, labels, indices): what the file's checksum holds."""
        return _digest(self.images.detach().cpu().contiguous(),
                       self.labels.detach().cpu().to(torch.int64).contiguous(),
                       self.indices.detach().cpu().to(torch.int64).contiguous())

    def describe(self) -> str:
        return (f"{self.attack} on {self.meta.get('dataset', '?')}: {len(self.indices)}/{len(self)} samples "
                f"poisoned ({self.meta.get('norm')} <= {self.meta.get('eps')})")


MAGIC = "st_fast.poisoned-set"
_TOL = 1e-5


def _digest(images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (images, labels, indices):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def save(ps: PoisonedSet, path: str | Path) -> Path:
    """Write ``ps`` to ``path`` atomically; returns the path."""
    path = Path(path)
    images = ps.images.detach().cpu().contiguous()
    labels = ps.labels.detach().cpu().to(torch.int64).contiguous()
    indices = ps.indices.detach().cpu().to(torch.int64).contiguous()
    _check_arrays(images, labels, indices, str(path))
    blob = {"magic": MAGIC, "format_version": FORMAT_VERSION, "images": images, "labels": labels,
            "indices": indices, "meta": dict(ps.meta), "sha256": _digest(images, labels, indices)}
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load(path: str | Path, dataset=None) -> PoisonedSet:
    """Read a poisoned-set file; validate it (and against ``dataset`` when given)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such poisoned-set file; make one with `st-fast poison`")
    blob = load_torch_file(path, "poisoned-set file", hint="regenerate it with `st-fast poison` "
                           "or import raw data with `st-fast poison --from`")
    if not isinstance(blob, dict) or blob.get("magic") != MAGIC:
        raise UserError(f"{path}: not an st_fast poisoned-set file (no '{MAGIC}' header); "
                        "import foreign perturbations with `st-fast poison --from FILE`")
    version = blob.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path}: poisoned-set format version {version}; this st_fast reads "
                        f"version {FORMAT_VERSION}; regenerate the file")
    missing = [k for k in ("images", "labels", "indices", "meta", "sha256") if k not in blob]
    if missing:
        raise UserError(f"{path}: damaged poisoned-set file (missing {', '.join(missing)})")
    images, labels, indices, meta = blob["images"], blob["labels"], blob["indices"], blob["meta"]
    _check_arrays(images, labels, indices, str(path))
    if _digest(images, labels, indices) != blob["sha256"]:
        raise UserError(f"{path}: checksum mismatch, the file is damaged; regenerate it")
    ps = PoisonedSet(images, labels, indices, dict(meta))
    if dataset is not None:
        validate(ps, dataset, source=str(path))
    return ps


def _check_arrays(images, labels, indices, source: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise UserError(f"{source}: images must be uint8 (N, C, H, W), got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    n = len(images)
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,):
        raise UserError(f"{source}: need one label per image ({n}), got shape {tuple(getattr(labels, 'shape', ()))}")
    if not isinstance(indices, torch.Tensor) or indices.dim() != 1 or indices.dtype != torch.int64:
        raise UserError(f"{source}: indices must be a 1-D int64 tensor")
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise UserError(f"{source}: poisoned indices out of range [0, {n})")
    if len(indices) > 1 and not bool((indices[1:] > indices[:-1]).all()):
        raise UserError(f"{source}: poisoned indices must be sorted and unique")


def validate(ps: PoisonedSet, dataset, source: str = "poisoned set") -> None:
    """Check ``ps`` against the clean ``dataset`` it claims to poison."""
    meta = ps.meta
    name = meta.get("dataset")
    if name is not None and name != dataset.name:
        raise UserError(f"{source} poisons dataset {name!r}, but the training set is {dataset.name!r}; "
                        "pass the matching --dataset")
    if tuple(ps.images.shape) != tuple(dataset.images.shape):
        raise UserError(f"{source} holds images of shape {tuple(ps.images.shape)}, but {dataset.name} "
                        f"has {tuple(dataset.images.shape)}; was it made from another split or subset?")
    bad = first_mismatch(ps.labels, dataset.labels)
    if bad is not None:
        raise UserError(f"{source}: labels differ from {dataset.name}'s (first at index {bad}: "
                        f"{int(ps.labels[bad])} vs {int(dataset.labels[bad])}); the file belongs to "
                        "another ordering or version of the dataset")
    clean_mask = torch.ones(len(ps.images), dtype=torch.bool)
    clean_mask[ps.indices] = False
    outside = (ps.images != dataset.images).flatten(1).any(1) & clean_mask
    if outside.any():
        raise UserError(f"{source}: samples outside the poisoned indices differ from the clean data "
                        f"(first at index {int(outside.nonzero()[0])})")
    norm, eps = meta.get("norm"), meta.get("eps")
    if norm is None or eps is None:
        return
    if norm not in NORMS:
        raise UserError(f"{source}: unknown norm {norm!r} in metadata (known: {', '.join(NORMS)})")
    check_bound(ps.images[ps.indices], dataset.images[ps.indices], ps.indices, norm, float(eps),
                f"{source}: the perturbation exceeds the recorded bound (the file is not what its metadata "
                "claims)", quantised=True)


def first_mismatch(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """The first index where two equal-length 1-D tensors differ, or None."""
    diff = (a != b).nonzero()
    return int(diff[0]) if len(diff) else None


def check_bound(poisoned: torch.Tensor, clean: torch.Tensor, indices: torch.Tensor, norm: str,
                bound: float, context: str, quantised: bool = True) -> float:
    """Refuse the first sample whose realised change (uint8 ``poisoned`` - ``clean``) exceeds
    ``bound`` (+ the 8-bit quantisation slack when ``quantised``); returns the largest norm.

    ``indices`` name the rows in messages (their index in the training set)."""
    if not len(poisoned):
        return 0.0
    diff = (poisoned.float() - clean.float()) / 255.0
    norms = realised_norms(diff, norm)
    slack = quantisation_slack(diff, norm) if quantised else torch.zeros(len(diff))
    over = norms > bound + slack + _TOL
    if over.any():
        k = int(over.nonzero()[0])
        allowed = (f"the bound {bound:.5g} + quantisation {float(slack[k]):.3g}" if quantised
                   else f"the bound {bound:.5g}")
        raise UserError(f"{context}: sample {int(indices[k])} differs from its clean image by {norm} "
                        f"{float(norms[k]):.5g} > {allowed} ({int(over.sum())} of {len(diff)} samples over)")
    return float(norms.max())
