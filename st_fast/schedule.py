"""Per-unit learning-rate multipliers of Progressive Staged Training.

The default rule (DESIGN.md, section 1) for unit l = 1..L after c ACM triggers:

    lambda_l(c) = clip(1 + l/L - alpha * c, 0, 1)

c = 0 gives all ones (natural training). Each trigger moves a front from the shallow end
toward the deep end; as c grows every multiplier reaches 0, shallow units first. Rules are
pluggable: register a function ``(c, num_units, alpha) -> list[float]`` in ``RULES``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .errors import UserError

MultiplierRule = Callable[[int, int, float], list[float]]


def lr_multipliers(c: int, num_units: int, alpha: float) -> list[float]:
    """lambda_l(c) = clip(1 + l/L - alpha*c, 0, 1) for l = 1..L (shallow to deep)."""
    if num_units < 1:
        raise UserError(f"num_units must be >= 1, got {num_units}")
    if c < 0 or alpha < 0:
        raise UserError(f"need c >= 0 and alpha >= 0, got c={c}, alpha={alpha}")
    return [min(1.0, max(0.0, 1.0 + unit / num_units - alpha * c)) for unit in range(1, num_units + 1)]


def freeze_shallow(c: int, num_units: int, alpha: float) -> list[float]:
    """Alternative rule: each trigger freezes round(alpha * L) more units, shallow first."""
    frozen = min(num_units, round(alpha * num_units * c))
    return [0.0] * frozen + [1.0] * (num_units - frozen)


RULES: dict[str, MultiplierRule] = {"linear": lr_multipliers, "freeze": freeze_shallow}


def get_rule(name: str) -> MultiplierRule:
    if name not in RULES:
        raise UserError(f"unknown multiplier rule {name!r}; choose one of: {', '.join(RULES)}")
    return RULES[name]


def triggers_to_freeze(num_units: int, alpha: float, rule: str = "linear") -> int:
    """The smallest c at which every multiplier is 0 (how many triggers ST can absorb)."""
    f = get_rule(rule)
    if alpha <= 0:
        raise UserError("alpha must be > 0 for the multipliers to ever reach 0")
    c = 0
    while any(f(c, num_units, alpha)):
        c += 1
    return c


def cosine_lr(base_lr: float, epoch: int, total: int) -> float:
    """Per-epoch cosine decay from base_lr (epoch 0) towards 0 (epoch ``total``)."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, total)))
