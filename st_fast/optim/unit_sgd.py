"""SGD with one learning-rate multiplier per model unit: what every training run steps with."""

from __future__ import annotations

import torch

from ..errors import UserError
from .fused_sgd import FusedSGD


class UnitSGD:
    """SGD with one learning-rate multiplier per model unit.

    Uses :class:`FusedSGD` (the multipliers applied inside one multi-tensor step) unless
    ``cfg.optimizer == "torch"``, which takes torch.optim.SGD with one param group per unit.
    ``cfg``: anything with optimizer, lr, momentum, weight_decay and nesterov (a TrainConfig).
    """

    def __init__(self, model, cfg):
        self.units = model.units()
        if cfg.optimizer in ("auto", "fused"):
            self.optimizer = FusedSGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
            self.backend = f"fused-{self.optimizer.backend}"
        else:
            groups = [{"params": list(u.parameters())} for u in self.units]
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                             weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
            self.backend = "torch"

    def set_lrs(self, base_lr: float, scales: list[float]) -> None:
        if len(scales) != len(self.units):
            raise UserError(f"need one lr multiplier per unit ({len(self.units)}), got {len(scales)}")
        if self.backend == "torch":
            for group, s in zip(self.optimizer.param_groups, scales):
                group["lr"] = base_lr * float(s)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = base_lr
            self.optimizer.set_lr_scale([float(s) for s in scales], units=self.units)

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def step(self):
        self.optimizer.step()

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, sd):
        self.optimizer.load_state_dict(sd)
