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
recorded norm bound. Every failure is a :class:`UserError` saying what and what to do.

Imports: :func:`from_perturbation` (a float tensor / numpy array (N, C, H, W) or (N, H, W, C)
in [-eps, eps], a .pt/.npy/.npz file holding one), :func:`from_images` (poisoned uint8
images) and :func:`from_png_folder` (``<index>.png`` per poisoned sample).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import atomic_write_bytes, load_torch_file
from .perturbation import NORMS, quantize, realised_norms

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
    if not torch.equal(ps.labels, dataset.labels):
        raise UserError(f"{source}: labels differ from {dataset.name}'s; the file belongs to another "
                        "ordering or version of the dataset")
    clean_mask = torch.ones(len(ps.images), dtype=torch.bool)
    clean_mask[ps.indices] = False
    if not torch.equal(ps.images[clean_mask], dataset.images[clean_mask]):
        raise UserError(f"{source}: samples outside the poisoned indices differ from the clean data")
    norm, eps = meta.get("norm"), meta.get("eps")
    if norm is None or eps is None:
        return
    if norm not in NORMS:
        raise UserError(f"{source}: unknown norm {norm!r} in metadata (known: {', '.join(NORMS)})")
    if len(ps.indices):
        diff = (ps.images[ps.indices].float() - dataset.images[ps.indices].float()) / 255.0
        worst = float(realised_norms(diff, norm).max())
        if worst > float(eps) + _TOL:
            raise UserError(f"{source}: perturbation {norm} norm {worst:.5g} exceeds the recorded bound "
                            f"{float(eps):.5g}; the file is not what its metadata claims")


# ---------------------------------------------------------------- imports

def _meta(attack: str, dataset, norm: str, eps: float, source: str, **extra) -> dict:
    return {"format_version": FORMAT_VERSION, "attack": attack, "params": {}, "dataset": dataset.name,
            "split": getattr(dataset, "split", "train"), "num_samples": len(dataset),
            "shape": list(dataset.images.shape[1:]), "seed": None, "ratio": None, "norm": norm,
            "eps": float(eps), "info": {"imported_from": source}, **extra}


def _to_nchw(arr, dataset, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(arr)) if not isinstance(arr, torch.Tensor) else arr.detach().cpu()
    c, h, w = dataset.images.shape[1:]
    if t.dim() == 3 and c == 1:
        t = t.unsqueeze(1)
    if t.dim() == 4 and tuple(t.shape[1:]) == (h, w, c) and tuple(t.shape[1:]) != (c, h, w):
        t = t.permute(0, 3, 1, 2)          # channels-last (numpy / PIL convention)
    if t.dim() != 4 or tuple(t.shape[1:]) != (c, h, w):
        raise UserError(f"{what}: expected shape (N, {c}, {h}, {w}) or (N, {h}, {w}, {c}) for "
                        f"{dataset.name}, got {tuple(t.shape)}")
    return t.contiguous()


def _read_array(source) -> tuple[object, str]:
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return source, "array"
    p = Path(source)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False), str(p)
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                if len(keys) != 1:
                    raise UserError(f"{p}: .npz must hold exactly one array, found {keys}")
                return z[keys[0]], str(p)
        obj = load_torch_file(p, "array file")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{p}: cannot read an array from it ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200]})") from None
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        for key in ("perturbation", "delta", "noise", "images", "data"):
            if key in tensors:
                return tensors[key], str(p)
        if len(tensors) == 1:
            return next(iter(tensors.values())), str(p)
        raise UserError(f"{p}: a dict without a 'perturbation'/'images' tensor (keys {sorted(obj)})")
    if not isinstance(obj, torch.Tensor):
        raise UserError(f"{p}: holds a {type(obj).__name__}, not a tensor")
    return obj, str(p)


def from_perturbation(source, dataset, *, eps: float | None = None, norm: str = "linf",
                      indices=None, attack: str = "imported") -> PoisonedSet:
    """Apply a raw perturbation (float, [0, 1] pixel units) made elsewhere to ``dataset``.

    ``source``: tensor/array or .pt/.npy/.npz file, (N, C, H, W) or (N, H, W, C); N is the whole
    set, or len(indices). A uint8 array is taken as poisoned images (see :func:`from_images`).
    ``eps``: the bound it claims; checked (a larger perturbation is refused); None records its
    actual largest norm.
    """
    arr, where = _read_array(source)
    t = _to_nchw(arr, dataset, where)
    if t.dtype == torch.uint8:
        return from_images(t, dataset, indices=indices, attack=attack, norm=norm, eps=eps)
    if not t.is_floating_point():
        raise UserError(f"{where}: a perturbation must be floating point in [-eps, eps] (or uint8 images), got {t.dtype}")
    if norm not in NORMS:
        raise UserError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise UserError(f"{where}: the perturbation holds NaN or inf values")
    idx, order = _indices(indices, len(t), len(dataset), where)
    t = t[order]
    actual = float(realised_norms(t, norm).max()) if len(t) else 0.0
    if actual > 1.0 + _TOL and norm == "linf":
        raise UserError(f"{where}: perturbation values reach {actual:.4g}; expected [0, 1] pixel units "
                        "(divide a 0..255-scaled perturbation by 255)")
    bound = actual if eps is None else float(eps)
    if actual > bound + _TOL:
        raise UserError(f"{where}: perturbation {norm} norm {actual:.5g} exceeds eps {bound:.5g}")
    images = dataset.images.clone()
    images[idx] = quantize(dataset.images[idx], t, norm, bound)
    meta = _meta(attack, dataset, norm, bound, where)
    return PoisonedSet(images, dataset.labels.clone(), idx, meta)


def from_images(source, dataset, *, indices=None, attack: str = "imported", norm: str = "linf",
                eps: float | None = None) -> PoisonedSet:
    """Poisoned uint8 images made elsewhere: the whole set, or ``indices`` rows of it."""
    arr, where = _read_array(source)
    t = _to_nchw(arr, dataset, where)
    if t.dtype != torch.uint8:
        raise UserError(f"{where}: poisoned images must be uint8, got {t.dtype}")
    idx, order = _indices(indices, len(t), len(dataset), where)
    t = t[order]
    images = dataset.images.clone()
    images[idx] = t
    diff = (t.float() - dataset.images[idx].float()) / 255.0
    actual = float(realised_norms(diff, norm).max()) if len(t) else 0.0
    bound = actual if eps is None else float(eps)
    if actual > bound + _TOL:
        raise UserError(f"{where}: images differ from the clean ones by {norm} {actual:.5g} > eps {bound:.5g}")
    return PoisonedSet(images, dataset.labels.clone(), idx, _meta(attack, dataset, norm, bound, where))


_INDEX_NAME = re.compile(r"^(\d+)\.png$", re.IGNORECASE)


def from_png_folder(folder, dataset, *, attack: str = "imported", norm: str = "linf",
                    eps: float | None = None) -> PoisonedSet:
    """A folder of per-sample PNGs named ``<index>.png`` (index into the training set)."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    found = {}
    for f in folder.iterdir():
        m = _INDEX_NAME.match(f.name)
        if m:
            found[int(m.group(1))] = f
    if not found:
        raise UserError(f"{folder}: no <index>.png files found")
    idx = sorted(found)
    if idx[-1] >= len(dataset):
        raise UserError(f"{folder}: file {idx[-1]}.png is past the end of {dataset.name} ({len(dataset)} samples)")
    c = dataset.channels
    mode = "L" if c == 1 else "RGB"
    arrs = []
    for i in idx:
        try:
            with Image.open(found[i]) as im:
                arrs.append(np.asarray(im.convert(mode)))
        except Exception as err:
            raise UserError(f"{found[i]}: cannot read PNG ({err})") from err
    ps = from_images(torch.from_numpy(np.stack(arrs)), dataset, indices=idx, attack=attack,
                     norm=norm, eps=eps)
    ps.meta["info"]["imported_from"] = str(folder)
    return ps


def _indices(indices, rows: int, n: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted indices, the row order that sorts the samples with them)."""
    if indices is None:
        if rows != n:
            raise UserError(f"{where}: {rows} samples but the training set has {n}; pass the indices they belong to")
        return torch.arange(n), torch.arange(n)
    idx = torch.as_tensor(indices.tolist() if isinstance(indices, torch.Tensor) else list(indices), dtype=torch.int64)
    if idx.dim() != 1 or len(idx) != rows:
        raise UserError(f"{where}: {rows} samples but {len(idx)} indices")
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise UserError(f"{where}: indices out of range [0, {n})")
    if len(torch.unique(idx)) != len(idx):
        raise UserError(f"{where}: repeated indices")
    order = torch.argsort(idx)
    return idx[order], order


def import_any(source, dataset, **kw) -> PoisonedSet:
    """Dispatch: a folder -> PNGs; an st_fast poisoned-set file -> load; else an array file."""
    p = Path(source) if not isinstance(source, (torch.Tensor, np.ndarray)) else None
    if p is not None and p.is_dir():
        return from_png_folder(p, dataset, **{k: v for k, v in kw.items() if k in ("attack", "norm", "eps")})
    if p is not None and p.suffix not in (".npy", ".npz") and p.is_file():
        try:
            blob = load_torch_file(p, "poisoned-set file")
        except UserError:  # not an st_fast file: read it as an array below (which says why not)
            blob = None
        if isinstance(blob, dict) and blob.get("magic") == MAGIC:
            return load(p, dataset=dataset)
    return from_perturbation(source, dataset, **kw)
