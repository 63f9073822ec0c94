"""Unlearnable-data generators (availability poisons) and the poisoned-set file format.

    ps = st_fast.attacks.generate("em-sample", train_set, eps=8/255, ratio=1.0, seed=0)
    ps.images, ps.labels, ps.indices, ps.meta; ps.save("em.pt")
    ps = st_fast.attacks.load("em.pt", dataset=train_set)

``ATTACKS`` maps each name to its spec (norm, publication defaults); docs/attacks.md
documents every attack, its defaults and their sources.
"""

from __future__ import annotations

from ..data.poisoned import load, save

# importing the attack modules registers them in ATTACKS
from . import adaptive, adversarial, autoregressive, error_min, hypocritical, ops, synthetic  # noqa: F401
from .base import (
           ALIASES,
           ATTACKS,
           AttackOutput,
           PoisonedSet,
           check_params,
           generate,
           resolve,
           select_ratio,
)
from .importing import from_images, from_perturbation, from_png_folder, import_any

__all__ = ["generate", "check_params", "load", "save", "PoisonedSet", "ATTACKS", "ALIASES", "AttackOutput", "resolve",
           "select_ratio", "from_perturbation", "from_images", "from_png_folder", "import_any"]
