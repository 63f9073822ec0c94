"""What a defence is, for the trainer and the benchmark harness.

A defence is a training method (``nt``, ``st-full``, ...) plus any of:

- ``train_overrides``: TrainConfig fields it changes (e.g. ``weight_decay=5e-3``, ``dropout=0.3``);
- ``prepare(train_set, seed) -> train_set``: a data-side step run once before training
  (e.g. ISS: grayscale or JPEG-compress the training images);
- ``batch_transform(trainer) -> callable(x, y) -> (x, y)``: a per-batch step on the device
  (augmentations; mixup/cutmix return soft targets (B, K); adversarial training returns PGD
  examples). It is installed as ``trainer.batch_transform``;
- ``select_on_val``: early stopping on the held-out clean validation images (never the test
  set): the run ends with the weights of its best validation epoch.

The ST methods themselves are defences with nothing but a method (see ``resolve``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UserError

DEFENCES: dict[str, Defence] = {}


@dataclass(frozen=True)
class Defence:
    name: str
    summary: str
    method: str = "nt"
    train_overrides: dict = field(default_factory=dict)
    prepare: Callable | None = None
    batch_transform: Callable | None = None
    # keep the epoch with the best accuracy on the clean validation images (ties: the earliest)
    select_on_val: bool = False


def register(defence: Defence) -> Defence:
    DEFENCES[defence.name] = defence
    return defence


def resolve(name: str) -> Defence:
    """A defence by name; a training method name (nt, st-full, ...) is a defence too."""
    from ..methods import METHODS

    if name in DEFENCES:
        return DEFENCES[name]
    if name in METHODS:
        return Defence(name=name, summary=f"training method {name}", method=name)
    raise UserError(f"unknown defence {name!r}; choose one of: {', '.join([*METHODS, *DEFENCES])}")
