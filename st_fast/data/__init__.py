"""Datasets (uint8 tensors + metadata), the device-resident loader, poisoned sets and their
files, and ``prepare_data`` (what a run trains on)."""

from __future__ import annotations

from .dataset import ImageDataset
from .load import ALIASES, DATASETS, canonical_dataset, load_dataset
from .loader import DeviceLoader, crop_flip, random_crop_flip
from .poisoned import PoisonedSet
from .prepare import prepare_data, training_indices
from .sources import LOADERS, STATS, cache_dir

__all__ = ["ImageDataset", "DeviceLoader", "crop_flip", "random_crop_flip", "load_dataset", "DATASETS",
           "ALIASES", "LOADERS", "STATS", "cache_dir", "canonical_dataset", "PoisonedSet", "prepare_data", "training_indices"]
