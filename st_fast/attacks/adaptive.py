"""Adaptive attacks against the defences this project found to work best (the ST paper's
Table VIII): poisons made by an attacker who knows the defence.

* ``em-t``, ``em-class-t``: EM (sample-/class-wise) whose inner loop sees the CG augmentation:
  every surrogate training batch and every PGD step goes through crop + flip and then CG
  (colour jitter p=0.8, grayscale p=0.2; st_fast.augment.ColorGray's draws, applied
  differentiably by st_fast.attacks.cg_eot), i.e. CG inside the expectation over
  transformations, one sample per step. ``bn_refresh`` is on: with augmentation in the loop
  the surrogate's eval-mode BatchNorm statistics lag its weights and the loop does not
  converge without it (docs/attacks.md, effectiveness measurement 2).
* ``rem-t``: REM whose transformations T are crop + flip followed by CG, in its EOT and in
  the surrogate's adversarial training batches.
* ``em-a``: EM whose surrogate is trained the way ST trains: per-unit learning rates from
  st_fast.policy.StagedPolicy's multipliers, ACM of the surrogate's features on the poisoned
  data after every round, and a rollback of that round (with the policy's counter moving the
  multiplier front) when ACM triggers. The noise is then made against a model that avoided
  the shortcut the way ST does.

Defaults are the base attacks' publication defaults plus the switches above (docs/attacks.md).
"""

from __future__ import annotations

import copy

import torch

from ..cluster import acm
from ..config import STConfig
from ..policy import StagedPolicy
from .base import register
from .cg_eot import DifferentiableCG
from .error_min import EM_CLASS_DEFAULTS, EM_DEFAULTS, REM_DEFAULTS, _em, rem_attack

CG_DEFAULTS = {"p_jitter": 0.8, "p_gray": 0.2}
EM_T_DEFAULTS = {**EM_DEFAULTS, "augment": True, "bn_refresh": True, **CG_DEFAULTS}
EM_CLASS_T_DEFAULTS = {**EM_CLASS_DEFAULTS, "augment": True, "bn_refresh": True, **CG_DEFAULTS}
REM_T_DEFAULTS = {**REM_DEFAULTS, **CG_DEFAULTS}
# em-a: ST's tau and alpha (st_fast.config.STConfig defaults) and its t-SNE ACM, read on
# acm_per_class images per class of the poisoned data (ST reads 100; 20 keeps a CPU round cheap)
EM_A_DEFAULTS = {**EM_DEFAULTS, "tau": 3.5, "alpha": 0.25, "acm_per_class": 20, "acm_embedding": "tsne"}


def _cg(gen: torch.Generator, p_jitter: float, p_gray: float) -> DifferentiableCG:
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    return DifferentiableCG(seed, p_jitter=float(p_jitter), p_gray=float(p_gray))


@register("em-t", norm="linf", defaults=EM_T_DEFAULTS, uses_model=True,
          summary="EM (sample-wise) with crop/flip + CG inside its expectation over transformations")
def em_t_attack(ds, gen, device, *, p_jitter, p_gray, **p):
    return _em(ds, gen, device, False, transform=_cg(gen, p_jitter, p_gray), **p)


@register("em-class-t", norm="linf", defaults=EM_CLASS_T_DEFAULTS, uses_model=True,
          summary="EM (class-wise) with crop/flip + CG inside its expectation over transformations")
def em_class_t_attack(ds, gen, device, *, p_jitter, p_gray, **p):
    return _em(ds, gen, device, True, transform=_cg(gen, p_jitter, p_gray), **p)


@register("rem-t", norm="linf", defaults=REM_T_DEFAULTS, uses_model=True,
          summary="REM whose transformations are crop/flip + CG")
def rem_t_attack(ds, gen, device, *, p_jitter, p_gray, **p):
    return rem_attack(ds, gen, device, transform=_cg(gen, p_jitter, p_gray), **p)


class STSurrogate:
    """The surrogate's training as ST runs it, round by round of EM (one round = one check).

    ``optimizer`` makes one SGD param group per unit (the model's ``units()``, shallow to
    deep); ``before_round`` snapshots model and optimiser and sets each group's lr to
    lr x its multiplier; ``after_round`` reads ACM on a fixed seeded subset of the poisoned
    data and, when the policy says so, restores the snapshot (the round is rolled back)."""

    def __init__(self, st: STConfig, per_class: int, embedding: str | None, gen: torch.Generator, seed: int):
        self.policy = StagedPolicy(st)
        self.st, self.per_class, self.embedding, self.gen, self.seed = st, per_class, embedding, gen, seed
        self.lr = 0.0
        self.snapshot = None
        self.pick: torch.Tensor | None = None

    def optimizer(self, model, lr: float) -> torch.optim.SGD:
        self.lr = float(lr)
        groups = [{"params": list(u.parameters()), "lr": self.lr} for u in model.units()]
        return torch.optim.SGD(groups, lr=self.lr, momentum=0.9, weight_decay=5e-4)

    def before_round(self, model, opt) -> None:
        self.snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
        for group, m in zip(opt.param_groups, self.policy.multipliers(len(opt.param_groups))):
            group["lr"] = self.lr * m

    def _subset(self, y: torch.Tensor) -> torch.Tensor:
        if self.pick is None:
            order = torch.randperm(len(y), generator=self.gen).to(y.device)
            self.pick = torch.cat([order[y[order] == k][: self.per_class] for k in torch.unique(y)])
        return self.pick

    @torch.no_grad()
    def after_round(self, model, opt, x, y, delta_of, round_no: int) -> None:
        idx = self._subset(y)
        model.eval()
        feats = model.features((x[idx] + delta_of(idx)).clamp(0, 1)).flatten(1)
        labels = y[idx].cpu()
        classes = min(self.st.acm_classes or len(torch.unique(labels)), len(torch.unique(labels)))
        value = float(acm(feats.cpu(), labels, embedding=self.embedding, classes=classes, seed=self.seed))
        decision = self.policy.check(value, epoch=round_no, step=0)
        if decision["rollback"] and not self.policy.exhausted(len(opt.param_groups)):
            model.load_state_dict(self.snapshot[0])
            opt.load_state_dict(self.snapshot[1])
            self.policy.rolled_back(round_no)

    def summary(self) -> dict:
        return {"rollbacks": self.policy.rollbacks, "c": self.policy.c,
                "acm": [round(c["acm"], 4) for c in self.policy.checks]}


@register("em-a", norm="linf", defaults=EM_A_DEFAULTS, uses_model=True,
          summary="EM whose surrogate is trained with ST (staged lr multipliers, ACM rollbacks)")
def em_a_attack(ds, gen, device, *, tau, alpha, acm_per_class, acm_embedding, **p):
    st = STConfig(method="st", tau=float(tau), alpha=float(alpha), acm_embedding=acm_embedding)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    surrogate = STSurrogate(st, int(acm_per_class), acm_embedding, torch.Generator().manual_seed(seed), seed)
    return _em(ds, gen, device, False, surrogate=surrogate, **p)
