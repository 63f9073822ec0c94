"""The data a run trains on: load, poison, hold out clean validation images, subset.

One rule for every run (``st-fast train``, the demo, the tuner, bench cells), so a poison
generated with ``subset=N, seed=S`` covers exactly the images a run with ``train_subset=N``
and ``seed=S`` trains on.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .load import load_dataset
from .poisoned import load as load_poison


def prepare_data(cfg, with_val: bool = False):
    """Load, poison and subset the data a TrainConfig names: (train, test) or (train, test, val).

    val: ``cfg.val_size`` *clean* training images (balanced over classes, seeded), held out of
    the training set; the only data ST's hyperparameters may be tuned on (never the test set).
    If the poison file was made for a subset of the training set (its meta "subset"), training
    uses exactly that subset.
    """
    clean = load_dataset(cfg.dataset, "train", root=cfg.data_root, download=cfg.download)
    test = load_dataset(cfg.dataset, "test", root=cfg.data_root, download=cfg.download)
    train, subset = clean, None
    if cfg.poison:
        poisoned = load_poison(cfg.poison, dataset=clean)
        train = clean.with_images(poisoned.images, poison=poisoned.meta)
        subset = poisoned.meta.get("subset")
    for name, size, n in (("train_subset", cfg.train_subset, len(clean) - cfg.val_size),
                          ("test_subset", cfg.test_subset, len(test)), ("val_size", cfg.val_size, len(clean) - 1)):
        if size is not None and size > n:
            raise UserError(f"{name} must be at most {n} for {cfg.dataset} ({len(clean)} training, "
                            f"{len(test)} test images), got {size}")
    g = torch.Generator().manual_seed(cfg.seed)
    train_idx, val_idx = training_indices(cfg, clean, subset, g)
    train = train.subset(train_idx)
    if cfg.test_subset:
        test = test.subset(torch.randperm(len(test), generator=g)[: cfg.test_subset])
    if with_val:
        return train, test, clean.subset(val_idx)
    return train, test


def training_indices(cfg, clean, subset=None, generator: torch.Generator | None = None):
    """(train, val) indices into the clean training set that a run of ``cfg`` uses, drawn from
    ``subset`` (a poison's meta "subset") or the whole set; ``generator`` continues to draw
    the test subset in ``prepare_data`` (default: a fresh one seeded with ``cfg.seed``)."""
    g = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
    pool = torch.arange(len(clean)) if subset is None else torch.as_tensor(subset, dtype=torch.long)
    val_idx = torch.empty(0, dtype=torch.long)
    if cfg.val_size:
        per_class = -(-cfg.val_size // clean.num_classes)
        val_idx = clean.subset(pool).per_class_indices(per_class, g)[: cfg.val_size]
        val_idx = pool[val_idx]
        pool = pool[~torch.isin(pool, val_idx)]
    pool = pool[torch.randperm(len(pool), generator=g)]
    if cfg.train_subset:
        pool = pool[: cfg.train_subset]
    return pool, val_idx
