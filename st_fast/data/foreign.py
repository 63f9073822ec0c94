"""Import of poisons made by other tools: arrays of poisoned images or perturbations, and PNG
folders, checked strictly against the clean training set.

What the poison claims to be (its attack or a foreign label, its norm and bound, and the
rounding its authors used) is a :class:`Claim`, resolved from the attack registry by
st_fast.attacks.importing (this module sits below the registry). Every check names the input
and, for data that do not fit, the first bad index:

* what the data is (``kind``): uint8 data are images; float data must say (``kind="images"``
  or ``"delta"``, or a dict key ``images`` / ``perturbation``) because float images in [0, 1]
  and a perturbation look alike; a perturbation in 0..255 units is refused for every norm;
* every sample's realised uint8 change obeys the claimed bound plus the 8-bit quantisation
  slack (st_fast.data.perturbation.quantisation_slack); for images this is also the order
  and identity check (shuffled images, another split or dataset differ by far more);
* labels stored in the file equal the dataset's; indices are in range and unique;
* a PNG folder covers every expected index (``allow_missing`` to accept gaps, counted), and
  every PNG has the dataset's size and a usable mode.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..files import file_sha256, load_torch_file
from .perturbation import ROUNDING, apply_delta, realised_norms, to_uint8
from .poisoned import _TOL, FORMAT_VERSION, MAGIC, PoisonedSet, check_bound, first_mismatch

KINDS = ("images", "delta")
_DELTA_KEYS = ("perturbation", "delta", "noise")
_IMAGE_KEYS = ("images", "data")
_LABEL_KEYS = ("labels", "targets")


@dataclass(frozen=True)
class Claim:
    """What an imported poison says it is (see st_fast.attacks.importing.claim)."""

    attack: str                 # a registered attack name, or the label of a foreign poison
    foreign: bool
    norm: str
    bound: float                # on the realised change, in ``norm``, [0, 1] pixel units
    params: dict = field(default_factory=dict)
    rounding: str = "nearest"   # the authors' rule for a float -> uint8 image


@dataclass
class _Payload:
    data: torch.Tensor
    where: str
    key: str | None = None                  # the dict key the data came from
    labels: torch.Tensor | None = None      # labels stored with the data
    indices: torch.Tensor | None = None     # indices stored with the data
    sha256: str | None = None               # of the source file


def import_any(source, dataset, claim: Claim, *, kind: str | None = None, rounding: str | None = None,
               indices=None, allow_missing: bool = False) -> PoisonedSet:
    """A folder -> PNGs; an st_fast poisoned-set file -> load (it carries its own claim);
    otherwise an array file or in-memory array, images or a perturbation (``kind``)."""
    if kind is not None and kind not in KINDS:
        raise UserError(f"{source_name(source)}: kind must be images or delta, got {kind!r}")
    if rounding is not None and rounding not in ROUNDING:
        raise UserError(f"{source_name(source)}: rounding must be one of {', '.join(ROUNDING)}, got {rounding!r}")
    p = None if isinstance(source, (torch.Tensor, np.ndarray)) else Path(source)
    if p is not None and p.is_dir():
        if kind == "delta" or rounding is not None:
            raise UserError(f"{p}: a PNG folder holds poisoned uint8 images; --kind delta and "
                            "--rounding do not apply to it")
        return from_png_folder(p, dataset, claim, indices=indices, allow_missing=allow_missing)
    if allow_missing:
        raise UserError(f"{source_name(source)}: --allow-missing applies to PNG folders only")
    payload = _read(source)
    if kind == "delta" or (kind is None and payload.key in _DELTA_KEYS):
        return _import_delta(payload, dataset, claim, rounding, indices)
    if kind == "images" or (kind is None and (payload.data.dtype == torch.uint8 or payload.key in _IMAGE_KEYS)):
        return _import_images(payload, dataset, claim, rounding, indices)
    raise UserError(f"{payload.where}: {payload.data.dtype} data could be poisoned images in [0, 1] or a "
                    "perturbation; say which with --kind images or --kind delta (Python: kind=)")


def is_st_fast_file(path) -> bool:
    """Whether ``path`` is an st_fast poisoned-set file (read safely)."""
    p = Path(path)
    if not p.is_file() or p.suffix in (".npy", ".npz"):
        return False
    try:
        blob = load_torch_file(p, "poisoned-set file")
    except UserError:
        return False
    return isinstance(blob, dict) and blob.get("magic") == MAGIC


def from_perturbation(source, dataset, claim: Claim, *, rounding: str | None = None, indices=None) -> PoisonedSet:
    """A float perturbation (pixel units, (N, C, H, W) or (N, H, W, C); N the whole set or
    len(indices)) applied to the clean images as its authors do (see apply_delta)."""
    return _import_delta(_read(source), dataset, claim, rounding, indices)


def from_images(source, dataset, claim: Claim, *, rounding: str | None = None, indices=None) -> PoisonedSet:
    """Poisoned images: uint8 (taken byte for byte) or float in [0, 1] (rounded by ``rounding``)."""
    return _import_images(_read(source), dataset, claim, rounding, indices)


# ---------------------------------------------------------------- arrays

def _import_delta(payload: _Payload, dataset, claim: Claim, rounding, indices) -> PoisonedSet:
    t, where = _to_nchw(payload.data, dataset, payload.where), payload.where
    if t.dtype == torch.uint8:
        raise UserError(f"{where}: uint8 data cannot be a perturbation (no sign); poisoned uint8 "
                        "images are imported with --kind images")
    if not t.is_floating_point():
        raise UserError(f"{where}: an integer ({t.dtype}) perturbation looks like one in 0..255 units; "
                        "store it as float in pixel units (divided by 255)")
    if not torch.isfinite(t).all():
        raise UserError(f"{where}: the perturbation holds NaN or inf values")
    idx, order = _indices(payload, indices, len(t), len(dataset), where)
    t = t[order]
    _check_labels(payload, dataset, idx, order, where)
    peak = float(t.abs().max()) if t.numel() else 0.0
    if peak > 1.0 + _TOL:   # no pixel-unit perturbation moves a pixel by more than the full range
        raise UserError(f"{where}: perturbation values reach {peak:.4g}, expected pixel units "
                        "(|delta| <= 1): divide a 0..255 perturbation by 255, or import poisoned "
                        "images with --kind images")
    norms = realised_norms(t, claim.norm)
    over = norms > claim.bound + _TOL
    if over.any():
        k = int(over.nonzero()[0])
        hint = ("; are these poisoned images? use --kind images" if peak > 0.5 else
                "; a larger bound? pass --eps")
        raise UserError(f"{where}: the perturbation of sample {int(idx[k])} has {claim.norm} "
                        f"{float(norms[k]):.5g} > the bound {claim.bound:.5g} of {claim.attack}{hint}")
    rule = rounding or claim.rounding
    images = dataset.images.clone()
    images[idx] = apply_delta(dataset.images[idx], t, rule)
    worst = check_bound(images[idx], dataset.images[idx], idx, claim.norm, claim.bound, where)
    return _result(images, dataset, idx, claim, payload, kind="delta", rounding=rule, worst=worst)


def _import_images(payload: _Payload, dataset, claim: Claim, rounding, indices) -> PoisonedSet:
    t, where = _to_nchw(payload.data, dataset, payload.where), payload.where
    rule = None
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            raise UserError(f"{where}: the images hold NaN or inf values")
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise UserError(f"{where}: float images must lie in [0, 1], found [{lo:.4g}, {hi:.4g}]"
                            + ("; a perturbation? use --kind delta" if lo < 0 else
                               "; 0..255 images? store them as uint8"))
        rule = rounding or claim.rounding
        t = to_uint8(t * 255.0, rule)
    elif t.dtype != torch.uint8:
        raise UserError(f"{where}: poisoned images must be uint8 (or float in [0, 1]), got {t.dtype}")
    elif rounding is not None:
        raise UserError(f"{where}: uint8 images are taken byte for byte; --rounding does not apply")
    idx, order = _indices(payload, indices, len(t), len(dataset), where)
    t = t[order]
    _check_labels(payload, dataset, idx, order, where)
    worst = check_bound(t, dataset.images[idx], idx, claim.norm, claim.bound,
                        f"{where}: images do not match the clean training images within the bound "
                        "(shuffled order, another split or dataset, or a larger bound?)")
    images = dataset.images.clone()
    images[idx] = t
    return _result(images, dataset, idx, claim, payload, kind="images", rounding=rule, worst=worst)


def _result(images, dataset, idx, claim: Claim, payload: _Payload, *, kind, rounding, worst, **info):
    meta = {"format_version": FORMAT_VERSION, "attack": claim.attack, "params": dict(claim.params),
            "dataset": dataset.name, "split": getattr(dataset, "split", "train"), "num_samples": len(dataset),
            "shape": list(dataset.images.shape[1:]), "seed": None, "ratio": None, "norm": claim.norm,
            "eps": float(claim.bound),
            "info": {"imported_from": payload.where, "source_sha256": payload.sha256, "kind": kind,
                     "rounding": rounding, "foreign": claim.foreign, "max_realised_norm": worst, **info}}
    return PoisonedSet(images, dataset.labels.clone(), idx, meta)


def source_name(source) -> str:
    return "array" if isinstance(source, (torch.Tensor, np.ndarray)) else str(source)


def _tensor(value, where: str, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {what} is not a numeric array ({err})") from None


def _read(source) -> _Payload:
    """The array (and any labels/indices stored with it) from memory or a .pt/.npy/.npz file."""
    if isinstance(source, (torch.Tensor, np.ndarray)):
        return _Payload(_tensor(source, "array", "the data"), "array")
    p = Path(source)
    if not p.is_file():
        raise UserError(f"{p}: no such file")
    where = str(p)
    try:
        if p.suffix == ".npy":
            obj = np.load(p, allow_pickle=False)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                obj = {k: z[k] for k in z.keys()}
        else:
            obj = load_torch_file(p, "array file")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{p}: cannot read an array from it ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    sha = file_sha256(p)
    if isinstance(obj, dict):
        if obj.get("magic") == MAGIC:
            raise UserError(f"{p}: an st_fast poisoned-set file; it is loaded as it is, without import options")
        keys = [k for k in (*_DELTA_KEYS, *_IMAGE_KEYS) if k in obj]
        if len(keys) != 1:
            arrays = sorted(str(k) for k, v in obj.items() if isinstance(v, (torch.Tensor, np.ndarray)))
            if len(keys) == 0 and len(arrays) == 1:
                keys = arrays
            else:
                raise UserError(f"{p}: cannot tell which array is the poison (keys {sorted(map(str, obj))}); "
                                f"store one under 'images' or 'perturbation'")
        key = keys[0]
        labels = next((_tensor(obj[k], where, k) for k in _LABEL_KEYS if k in obj), None)
        idx = _tensor(obj["indices"], where, "indices") if "indices" in obj else None
        return _Payload(_tensor(obj[key], where, key), where, key if key in (*_DELTA_KEYS, *_IMAGE_KEYS) else None,
                        labels, idx, sha)
    if not isinstance(obj, (torch.Tensor, np.ndarray)):
        raise UserError(f"{p}: holds a {type(obj).__name__}, not an array")
    return _Payload(_tensor(obj, where, "the data"), where, sha256=sha)


def _to_nchw(t: torch.Tensor, dataset, where: str) -> torch.Tensor:
    c, h, w = dataset.images.shape[1:]
    if t.dim() == 3 and c == 1:
        t = t.unsqueeze(1)
    if t.dim() == 4 and tuple(t.shape[1:]) == (h, w, c) and tuple(t.shape[1:]) != (c, h, w):
        t = t.permute(0, 3, 1, 2)          # channels-last (numpy / PIL convention)
    if t.dim() != 4 or tuple(t.shape[1:]) != (c, h, w):
        raise UserError(f"{where}: expected shape (N, {c}, {h}, {w}) or (N, {h}, {w}, {c}) for "
                        f"{dataset.name}, got {tuple(t.shape)}")
    return t.contiguous()


def read_indices(path) -> torch.Tensor:
    """Training-set indices from a .npy, .json (a list) or text file (whitespace/comma separated)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such indices file")
    try:
        if p.suffix == ".npy":
            values = np.load(p, allow_pickle=False).tolist()
        elif p.suffix == ".json":
            values = json.loads(p.read_text())
        else:
            values = [int(v) for v in re.split(r"[\s,]+", p.read_text().strip()) if v]
    except (ValueError, OSError) as err:
        raise UserError(f"{p}: cannot read indices ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UserError(f"{p}: indices must be a flat list of integers")
    return torch.tensor(values, dtype=torch.int64)


def _as_indices(indices, where: str) -> torch.Tensor:
    if isinstance(indices, (str, Path)):
        return read_indices(indices)
    t = _tensor(indices, where, "indices")
    if t.dim() != 1 or (t.numel() and (t.is_floating_point() or t.dtype == torch.bool)):
        raise UserError(f"{where}: indices must be a 1-D list of integers")
    return t.to(torch.int64)


def _indices(payload: _Payload, indices, rows: int, n: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted training-set indices of the rows, the row order that sorts them)."""
    if indices is not None and payload.indices is not None:
        raise UserError(f"{where}: the file stores its own indices; drop --indices")
    given = indices if indices is not None else payload.indices
    if given is None:
        if rows != n:
            raise UserError(f"{where}: {rows} samples but the training set has {n}; pass the training-set "
                            "index of each row with --indices FILE (Python: indices=)")
        return torch.arange(n), torch.arange(n)
    idx = _as_indices(given, where)
    if len(idx) != rows:
        raise UserError(f"{where}: {rows} samples but {len(idx)} indices")
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
        bad = int(((idx < 0) | (idx >= n)).nonzero()[0])
        raise UserError(f"{where}: index {int(idx[bad])} (row {bad}) is out of range [0, {n})")
    if len(torch.unique(idx)) != len(idx):
        raise UserError(f"{where}: repeated indices")
    order = torch.argsort(idx)
    return idx[order], order


def _check_labels(payload: _Payload, dataset, idx: torch.Tensor, order: torch.Tensor, where: str) -> None:
    if payload.labels is None:
        return
    labels = payload.labels.flatten()
    if len(labels) != len(order):
        raise UserError(f"{where}: {len(labels)} labels for {len(order)} samples")
    labels = labels[order].to(torch.int64)
    bad = first_mismatch(labels, dataset.labels[idx])
    if bad is not None:
        raise UserError(f"{where}: stored label {int(labels[bad])} of sample {int(idx[bad])} differs from "
                        f"{dataset.name}'s {int(dataset.labels[idx[bad]])}; the file belongs to another "
                        "ordering or version of the dataset")


# ---------------------------------------------------------------- PNG folders

_INDEX_NAME = re.compile(r"^(\d+)\.png$", re.IGNORECASE)


def from_png_folder(folder, dataset, claim: Claim, *, indices=None, allow_missing: bool = False) -> PoisonedSet:
    """A folder of per-sample PNGs named ``<index>.png`` (index into the training set): every
    index of the set (or of ``indices``) must have its file unless ``allow_missing``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    found: dict[int, Path] = {}
    for f in sorted(folder.iterdir()):
        m = _INDEX_NAME.match(f.name)
        if m:
            i = int(m.group(1))
            if i in found:
                raise UserError(f"{folder}: {found[i].name} and {f.name} name the same index {i}")
            found[i] = f
    if not found:
        raise UserError(f"{folder}: no <index>.png files found")
    n = len(dataset)
    expected = _as_indices(indices, str(folder)) if indices is not None else torch.arange(n)
    if len(expected) and (int(expected.min()) < 0 or int(expected.max()) >= n):
        raise UserError(f"{folder}: --indices hold values outside [0, {n})")
    wanted = set(expected.tolist())
    extra = sorted(set(found) - wanted)
    if extra:
        what = f"past the end of {dataset.name} ({n} samples)" if extra[0] >= n else "not among --indices"
        raise UserError(f"{folder}: file {found[extra[0]].name} is {what}")
    missing = sorted(wanted - set(found))
    if missing and not allow_missing:
        raise UserError(f"{folder}: {len(missing)} of {len(wanted)} expected PNGs are missing (first "
                        f"{missing[0]}.png); pass --allow-missing to keep those images clean")
    idx = torch.tensor(sorted(found), dtype=torch.int64)
    arrs = [_read_png(found[i], dataset) for i in idx.tolist()]
    payload = _Payload(torch.from_numpy(np.stack(arrs)), str(folder))
    ps = _import_images(payload, dataset, claim, None, idx)
    ps.meta["info"]["missing"] = len(missing)
    return ps


def _read_png(path: Path, dataset) -> np.ndarray:
    """One PNG as uint8 (C, H, W): L for 1-channel sets (or RGB with equal channels, as
    torchvision's save_image writes gray images), RGB for 3-channel ones."""
    from PIL import Image

    c, h, w = dataset.images.shape[1:]
    try:
        with Image.open(path) as im:
            im.load()
            mode, size = im.mode, im.size
            arr = np.asarray(im)
    except Exception as err:
        raise UserError(f"{path}: cannot read PNG ({type(err).__name__}: {str(err)[:200]})") from None
    if size != (w, h):
        raise UserError(f"{path}: image is {size[0]}x{size[1]}, {dataset.name} images are {w}x{h}")
    if mode == "L" and c == 1:
        return arr[None]
    if mode == "RGB" and c == 3:
        return arr.transpose(2, 0, 1)
    if mode == "RGB" and c == 1:
        if not ((arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all()):
            raise UserError(f"{path}: a colour PNG for the gray {dataset.name} (channels differ)")
        return arr[None, ..., 0]
    raise UserError(f"{path}: PNG mode {mode} does not fit {dataset.name} ({c} channel{'s' if c > 1 else ''}); "
                    "expected " + ("L (or gray RGB)" if c == 1 else "RGB"))
