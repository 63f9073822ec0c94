"""Loaders for the datasets st_fast knows, from their real on-disk formats.

Every loader returns an :class:`ImageDataset`. Roots are searched in this order:
the ``root`` argument, ``$ST_FAST_DATA``, the user cache (``~/.cache/st_fast``), and for
Fashion-MNIST the Debian package path; with ``download=True`` torchvision fetches the
files into the first writable root. A dataset found nowhere raises
:class:`DataNotFoundError` naming every place searched and the ways to provide it.

The file formats are parsed here (not through torchvision's dataset classes) so that the
md5 checks of torchvision do not reject re-compressed or test-written files.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import DataNotFoundError, UserError
from ..files import restricted_unpickle  # arrays and lists only: a batch file never runs code
from .dataset import ImageDataset

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]

# Per-channel statistics of the training sets (standard published values).
STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet-mini": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "st_fast"


def candidate_roots(root: str | os.PathLike | None) -> list[Path]:
    roots = []
    if root is not None:
        roots.append(Path(root).expanduser())
    if os.environ.get("ST_FAST_DATA"):
        roots.append(Path(os.environ["ST_FAST_DATA"]).expanduser())
    roots.append(cache_dir())
    return roots


def _not_found(name: str, searched: list[Path], extra_help: str) -> DataNotFoundError:
    places = "; ".join(str(p) for p in searched)
    return DataNotFoundError(
        f"{name} not found. Searched: {places}. Provide it with --data-root DIR (or "
        f"$ST_FAST_DATA), or pass --download to fetch it. {extra_help}"
    )


def _first_existing(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _download_root(roots: list[Path]) -> Path:
    for r in roots:
        try:
            r.mkdir(parents=True, exist_ok=True)
            if os.access(r, os.W_OK):
                return r
        except OSError:
            continue
    raise UserError("no writable data directory for the download; set $ST_FAST_DATA")


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: cannot read IDX file ({err}); delete it and fetch it again") from err
    if len(data) < 4:
        raise UserError(f"{path}: truncated IDX file")
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise UserError(f"{path}: not a uint8 IDX file")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(dims))} values)")
    return body.reshape(dims)


def _fashion_dirs(root: Path) -> list[Path]:
    return [root / "FashionMNIST" / "raw", root / "fashion-mnist", root]


def load_fashion_mnist(split: str = "train", root=None, download: bool = False) -> ImageDataset:
    prefix = "train" if split == "train" else "t10k"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    searched: list[Path] = []
    dirs = [d for r in candidate_roots(root) for d in _fashion_dirs(r)] + [DEBIAN_FASHION_MNIST]
    for d in dirs:
        searched.append(d)
        found = []
        for n in names:
            f = _first_existing([d / n, d / f"{n}.gz"])
            if f is None:
                break
            found.append(f)
        if len(found) == 2:
            return _fashion_from_files(*found, split=split, source=str(d))
    if download:
        import torchvision

        dest = _download_root(candidate_roots(root))
        torchvision.datasets.FashionMNIST(str(dest), train=split == "train", download=True)
        return load_fashion_mnist(split, root=dest, download=False)
    raise _not_found(
        "Fashion-MNIST", searched,
        "On Debian/Ubuntu: apt-get install dataset-fashion-mnist (files land in "
        f"{DEBIAN_FASHION_MNIST}).",
    )


def _fashion_from_files(images_path: Path, labels_path: Path, split: str, source: str) -> ImageDataset:
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    mean, std = STATS["fashion-mnist"]
    return ImageDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(FASHION_MNIST_CLASSES), mean=mean, std=std,
        name="fashion-mnist", split=split, meta={"source": source},
    )


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100 (pickles)

def _unpickle(path: Path) -> dict:
    batch = restricted_unpickle(path, "CIFAR batch file")
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a valid CIFAR batch file (holds a {type(batch).__name__}, "
                        "not a dict); delete it and fetch it again")
    return batch


def _load_cifar(name: str, folder: str, train_files: list[str], test_files: list[str],
                meta_file: str, label_key: str, class_key: str, tv_class: str,
                split: str, root, download: bool) -> ImageDataset:
    files = train_files if split == "train" else test_files
    searched = []
    for r in candidate_roots(root):
        d = r / folder
        searched.append(d)
        if all((d / f).exists() for f in files):
            xs, ys = [], []
            for f in files:
                batch = _unpickle(d / f)
                xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[label_key], dtype=np.int64))
            classes = list(_unpickle(d / meta_file)[class_key]) if (d / meta_file).exists() else \
                [str(i) for i in range(int(max(y.max() for y in ys)) + 1)]
            mean, std = STATS[name]
            return ImageDataset(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)),
                                classes, mean, std, name=name, split=split, meta={"source": str(d)})
    if download:
        import torchvision

        dest = _download_root(candidate_roots(root))
        getattr(torchvision.datasets, tv_class)(str(dest), train=split == "train", download=True)
        return _load_cifar(name, folder, train_files, test_files, meta_file, label_key, class_key,
                           tv_class, split, dest, False)
    raise _not_found(name, searched, f"Expected the python-pickle layout {folder}/ from the official archive.")


def load_cifar10(split="train", root=None, download=False) -> ImageDataset:
    return _load_cifar("cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                       ["test_batch"], "batches.meta", "labels", "label_names", "CIFAR10",
                       split, root, download)


def load_cifar100(split="train", root=None, download=False) -> ImageDataset:
    return _load_cifar("cifar100", "cifar-100-python", ["train"], ["test"], "meta",
                       "fine_labels", "fine_label_names", "CIFAR100", split, root, download)


# ---------------------------------------------------------------- SVHN (.mat)

def load_svhn(split="train", root=None, download=False) -> ImageDataset:
    from scipy.io import loadmat

    fname = f"{'train' if split == 'train' else 'test'}_32x32.mat"
    searched = []
    for r in candidate_roots(root):
        for d in (r / "svhn", r / "SVHN", r):
            searched.append(d)
            if (d / fname).exists():
                try:
                    mat = loadmat(str(d / fname))
                except Exception as err:  # scipy raises several types for bad files
                    raise UserError(f"{d / fname}: cannot read SVHN .mat file ({err})") from err
                x = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)).astype(np.uint8)
                y = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN stores digit 0 as label 10
                mean, std = STATS["svhn"]
                return ImageDataset(torch.from_numpy(x), torch.from_numpy(y), [str(i) for i in range(10)],
                                    mean, std, name="svhn", split=split, meta={"source": str(d)})
    if download:
        import torchvision

        dest = _download_root(candidate_roots(root)) / "svhn"
        torchvision.datasets.SVHN(str(dest), split="train" if split == "train" else "test", download=True)
        return load_svhn(split, dest, False)
    raise _not_found("SVHN", searched, f"Expected {fname} (the official cropped-digits format).")


# ---------------------------------------------------------------- ImageNet-mini (ImageFolder)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")


def load_imagenet_mini(split="train", root=None, download=False, num_classes: int = 100,
                       image_size: int = 224, max_per_class: int | None = None) -> ImageDataset:
    """First ``num_classes`` classes (sorted folder names) of an ImageFolder tree.

    Images are resized (short side to image_size * 8/7) and centre-cropped to image_size,
    then kept as uint8. Full ImageNet-mini at 224 px needs ~19 GB; use ``max_per_class`` or
    the streaming DALI reader (st_fast.augment) for the full set.
    """
    from PIL import Image

    sub = "train" if split == "train" else "val"
    searched = []
    for r in candidate_roots(root):
        for d in (r / "imagenet-mini" / sub, r / "imagenet" / sub, r / sub):
            searched.append(d)
            if d.is_dir() and any(p.is_dir() for p in d.iterdir()):
                classes = sorted(p.name for p in d.iterdir() if p.is_dir())[:num_classes]
                xs, ys = [], []
                resize = round(image_size * 8 / 7)
                for k, c in enumerate(classes):
                    files = sorted(p for p in (d / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
                    for p in files[:max_per_class]:
                        with Image.open(p) as im:
                            xs.append(_center_crop(im.convert("RGB"), resize, image_size))
                        ys.append(k)
                if not xs:
                    raise UserError(f"{d}: class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")
                mean, std = STATS["imagenet-mini"]
                return ImageDataset(torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).contiguous(),
                                    torch.tensor(ys), classes, mean, std, name="imagenet-mini",
                                    split=split, meta={"source": str(d)})
    raise _not_found("ImageNet-mini", searched,
                     "Expected an ImageFolder tree: ROOT/imagenet-mini/{train,val}/<class>/<image>. "
                     "ImageNet cannot be downloaded automatically.")


def _center_crop(im, resize: int, size: int) -> np.ndarray:
    from PIL import Image

    w, h = im.size
    scale = resize / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


LOADERS: dict[str, Callable[..., ImageDataset]] = {
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "imagenet-mini": load_imagenet_mini,
}
