"""Datasets by name: the registry of loaders, their aliases, and ``load_dataset``."""

from __future__ import annotations

from ..errors import UserError
from ..registry import canonical
from .dataset import ImageDataset
from .sources import LOADERS

DATASETS = tuple(LOADERS)
ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100",
           "imagenet": "imagenet-mini"}


def canonical_dataset(name: str, strict: bool = True) -> str:
    """The registered name for dataset ``name`` or one of its aliases."""
    return canonical(name, LOADERS, ALIASES, "dataset", strict)


def load_dataset(name: str, split: str = "train", root=None, download: bool = False,
                 **kwargs) -> ImageDataset:
    """Load ``split`` ("train" or "test") of dataset ``name`` (see ``DATASETS``)."""
    key = canonical_dataset(name)
    if split not in ("train", "test"):
        raise UserError(f"split must be 'train' or 'test', got {split!r}")
    return LOADERS[key](split=split, root=root, download=download, **kwargs)
