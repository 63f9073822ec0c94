"""Optimizers: FusedSGD, SGD with a per-tensor (per-unit) learning-rate scale in one fused step,
and UnitSGD, the per-unit-multiplier optimizer every training run steps with."""

from .fused_sgd import BACKENDS, FusedSGD, available_backends, explain_backends
from .unit_sgd import UnitSGD

__all__ = ["BACKENDS", "FusedSGD", "UnitSGD", "available_backends", "explain_backends"]
