"""Defences and baselines the benchmark compares ST against (see base.py for the interface)."""

from .base import DEFENCES, Defence, configure, register, resolve

# Importing these registers AT, ISS, the UEraser-style defence and the ablations.
from . import ablations, at, dvae, early_stop, iss, ortho_proj, ueraser  # noqa: E402, F401  (isort: skip)

__all__ = ["DEFENCES", "Defence", "configure", "register", "resolve"]
