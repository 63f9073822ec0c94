"""What a defence is, for the trainer and the benchmark harness.

A defence is a training method (``nt``, ``st-full``, ...) plus any of:

- ``train_overrides``: TrainConfig fields it changes (e.g. ``weight_decay=5e-3``, ``dropout=0.3``);
- ``prepare(train_set, seed) -> train_set``: a data-side step run once before training
  (e.g. ISS: grayscale or JPEG-compress the training images);
- ``batch_transform(trainer) -> callable(x, y) -> (x, y)``: a per-batch step on the device
  (augmentations; mixup/cutmix return soft targets (B, K); adversarial training returns PGD
  examples). It is installed as ``trainer.batch_transform``;
- ``select_on_val``: early stopping on the held-out clean validation images (never the test
  set): the run ends with the weights of its best validation epoch;
- ``params`` and ``build``: the settings a user may change (name -> default) and how the
  defence is rebuilt with others (``configure``; `st-fast train --defence-param k=v`, a bench
  variant's keys), so a GPU user can run the published settings where the CPU default is
  scaled down.

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
    params: dict = field(default_factory=dict)     # settings a user may change: name -> value
    build: Callable | None = None                  # build(**params) -> this defence with them


def register(defence: Defence) -> Defence:
    DEFENCES[defence.name] = defence
    return defence


def _coerce(defence: str, key: str, value, default):
    """``value`` as the type of ``default`` (int, float, bool, str, or a tuple of numbers)."""
    bad = UserError(f"defence {defence}: {key} must be {type(default).__name__} like its default "
                    f"{default!r}, got {value!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise bad
        return tuple(_coerce(defence, key, v, d) for v, d in zip(value, default))
    if not isinstance(value, type(default)):
        raise bad
    return value


def configure(defence: Defence, params: dict | None) -> Defence:
    """``defence`` with ``params`` in place of its defaults; an unknown name or a value of the
    wrong type is refused in one line naming the defence's settings (the defence's own checks
    then apply to the values, e.g. D-VAE's width must be even)."""
    if not params:
        return defence
    unknown = sorted(set(params) - set(defence.params))
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in defence.params.items()) or "none"
        raise UserError(f"defence {defence.name} has no setting {', '.join(unknown)}; its settings "
                        f"(defaults): {known}")
    values = {k: _coerce(defence.name, k, v, defence.params[k]) for k, v in params.items()}
    return defence.build(**{**defence.params, **values})


def resolve(name: str) -> Defence:
    """A defence by name; a training method name (nt, st-full, ...) is a defence too."""
    from ..methods import METHODS

    if name in DEFENCES:
        return DEFENCES[name]
    if name in METHODS:
        return Defence(name=name, summary=f"training method {name}", method=name)
    raise UserError(f"unknown defence {name!r}; choose one of: {', '.join([*METHODS, *DEFENCES])}")
