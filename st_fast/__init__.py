"""st_fast: Progressive Staged Training and Activation Cluster Measurement, fast.

Public entry points are imported lazily so that ``import st_fast`` stays cheap::

    st_fast.train(TrainConfig(...), STConfig(method="st-full"))   # the one training entry point
    st_fast.acm(features, labels)          # Activation Cluster Measurement
    st_fast.build_model("resnet18", 10)    # CIFAR-style models exposing units()
    st_fast.load_dataset("fashion-mnist")  # uint8 tensors + metadata
"""

from __future__ import annotations

import importlib

from .errors import UserError

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {
    "train": ("st_fast.run", "train"),
    "make_poison": ("st_fast.run", "make_poison"),
    "detect": ("st_fast.detect", "detect"),
    "RunResult": ("st_fast.run", "RunResult"),
    "TrainConfig": ("st_fast.config", "TrainConfig"),
    "STConfig": ("st_fast.config", "STConfig"),
    "Trainer": ("st_fast.engine", "Trainer"),
    "acm": ("st_fast.cluster", "acm"),
    "STController": ("st_fast.controller", "STController"),
    "ACMMonitor": ("st_fast.monitor", "ACMMonitor"),
    "build_model": ("st_fast.models", "build_model"),
    "load_dataset": ("st_fast.data", "load_dataset"),
}

__all__ = ["__version__", "UserError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'st_fast' has no attribute {name!r}")
