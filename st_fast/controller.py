"""Progressive Staged Training inside your own loop: ``st_fast.STController``.

    ctrl = st_fast.STController(model, optimizer, probe=(images, labels), tau=3.5, alpha=0.25)
    for epoch in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
        report = ctrl.end_epoch()        # ACM, decision, rollback if triggered
        scheduler.step()
        if report.stop:
            break

The decisions are st_fast.policy.StagedPolicy's, the same object st_fast's own trainer asks:
driven with the same model, data order, optimizer and seed, this loop reproduces
``st_fast.train(cfg, STConfig(method="st"))`` bit for bit (tests/test_controller.py).

Units. ``units`` is an ordered list of modules (shallow to deep) or a function mapping a
parameter name to a unit index; by default ``model.units()`` when the model has it, else the
top-level children that own parameters, in registration order (parameters registered on the
model itself form a unit of their own, first). Every parameter must belong to exactly one
unit: the uncovered and the doubly covered ones are named in the error.

The optimizer. Any torch optimizer. At construction each param group that spans several
units is split into one group per unit (same options; ``group["st_unit"]`` says which unit a
group trains); a group inside one unit is only annotated. Split before creating the
scheduler, or pass it as ``schedulers=[...]`` so its per-group lists are split alike. At every
``optimizer.step()`` a pre-step hook multiplies each group's lr, as the scheduler left it, by
its unit's multiplier, and a post-step hook puts the scheduler's value back: the scheduler
never sees the multipliers, so any scheduler composes (LambdaLR, OneCycleLR, ...).

A trigger restores model (parameters and buffers: BatchNorm statistics), optimizer state
(momentum, Adam moments; the param groups' hyperparameters stay the scheduler's) and the
torch, CUDA, Python and NumPy RNG states from the in-memory snapshot of the last accepted
check. ``rollback="consume"`` (the paper) moves on; ``"retry"`` sets ``report.retry``: run the
same epoch again (same lr: call end_epoch() before scheduler.step()), up to ``max_retries``.

Under torch.distributed (DDP) ACM is measured on rank 0 only and broadcast, so every rank
takes the same decision and rolls back in lockstep.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .config import STConfig
from .errors import UserError
from .monitor import ACMReading, Probe, check_decision, probe_features, read_acm, unwrap
from .policy import StagedPolicy

# per-group lists a torch LR scheduler keeps (split along with the groups); OneCycleLR keeps
# its per-group values in the groups themselves, so they are copied with them
SCHEDULER_GROUP_LISTS = ("base_lrs", "_last_lr", "lr_lambdas", "min_lrs", "max_lrs")


@dataclass
class CheckReport:
    """What one check decided. ``decision``: "accept" or "rollback"."""

    decision: str
    acm: float                  # mean ACM over the repeats
    acm_std: float
    acm_values: list[float]
    decided: float              # the value compared with tau (mean or lower bound)
    triggered: bool
    c: int                      # triggers acted on, after this check
    multipliers: list[float]    # per-unit multipliers from now on
    epoch: int                  # 1-based epoch of the check
    step: int                   # optimizer steps into that epoch
    retry: bool = False         # rollback="retry": run this epoch again
    stop: bool = False          # step 1 cannot go on (policy stop, rollback cap, all zero)
    reason: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def rolled_back(self) -> bool:
        return self.decision == "rollback"


def resolve_units(model: nn.Module, units) -> tuple[dict[int, int], list[str]]:
    """(id(parameter) -> unit index, unit names); every parameter in exactly one unit."""
    named = list(model.named_parameters())
    if callable(units) and not isinstance(units, nn.Module):
        return _units_from_function(named, units)
    if units is None:
        units = model.units() if callable(getattr(model, "units", None)) else _default_units(model)
    modules = list(units)
    if not modules or not all(isinstance(m, (nn.Module, nn.Parameter)) for m in modules):
        raise UserError("units must be a non-empty list of modules (shallow to deep) or a function "
                        "mapping parameter names to unit indices")
    owner: dict[int, list[int]] = {}
    for i, m in enumerate(modules):
        params = [m] if isinstance(m, nn.Parameter) else list(m.parameters())
        for p in params:
            owner.setdefault(id(p), []).append(i)
    return _check_cover(named, owner, len(modules)), [_unit_name(model, m, i) for i, m in enumerate(modules)]


def _default_units(model: nn.Module) -> list:
    """Top-level children that own parameters, in order; the model's own parameters first."""
    own = list(model.parameters(recurse=False))
    children = [c for c in model.children() if any(True for _ in c.parameters())]
    return [*own, *children]


def _unit_name(model, m, i) -> str:
    for name, child in model.named_children():
        if child is m:
            return name
    return "(own)" if isinstance(m, nn.Parameter) else f"unit{i}"


def _units_from_function(named, fn: Callable[[str], int]) -> tuple[dict[int, int], list[str]]:
    owner = {}
    for name, p in named:
        u = fn(name)
        if isinstance(u, bool) or not isinstance(u, (int, np.integer)) or u < 0:
            raise UserError(f"units({name!r}) returned {u!r}; it must return a unit index >= 0")
        owner[id(p)] = [int(u)]
    n = 1 + max((u[0] for u in owner.values()), default=-1)
    empty = sorted(set(range(n)) - {u[0] for u in owner.values()})
    if empty:
        raise UserError(f"units: unit(s) {empty} have no parameters; number the units 0 .. L-1 without gaps")
    return _check_cover(named, owner, n), [f"unit{i}" for i in range(n)]


def _check_cover(named, owner: dict[int, list[int]], n: int) -> dict[int, int]:
    missing = [name for name, p in named if id(p) not in owner]
    twice = [name for name, p in named if len(owner.get(id(p), [])) > 1]
    if missing:
        raise UserError(f"units cover {len(named) - len(missing)} of {len(named)} parameters; not in any "
                        f"unit: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
    if twice:
        raise UserError(f"parameters in more than one unit: {', '.join(twice[:20])}")
    if n < 1:
        raise UserError("units: the model has no parameters")
    return {pid: units[0] for pid, units in owner.items()}


def unit_param_groups(model: nn.Module, units=None, **options) -> list[dict]:
    """One param group per unit (``options`` in each), for an optimizer that STController then
    only annotates: ``torch.optim.SGD(unit_param_groups(model), lr=0.1)``."""
    unit_of, names = resolve_units(unwrap(model), units)
    groups = [{"params": [], **options} for _ in names]
    for p in unwrap(model).parameters():
        groups[unit_of[id(p)]]["params"].append(p)
    return groups


def split_param_groups(optimizer: torch.optim.Optimizer, unit_of: dict[int, int], schedulers=()) -> int:
    """One param group per (original group, unit), in place; returns how many groups were split.
    Each group gets ``st_unit``. Attached schedulers' per-group lists are split alike."""
    new, origin = [], []
    for gi, group in enumerate(optimizer.param_groups):
        by_unit: dict[int, list] = {}
        for p in group["params"]:
            if id(p) not in unit_of:
                raise UserError("the optimizer holds a parameter that is not the model's")
            by_unit.setdefault(unit_of[id(p)], []).append(p)
        for u in sorted(by_unit):
            new.append({**{k: v for k, v in group.items() if k != "params"}, "params": by_unit[u], "st_unit": u})
            origin.append(gi)
    n_old = len(optimizer.param_groups)
    split = len(new) - n_old
    if split and any("initial_lr" in g for g in optimizer.param_groups) and not schedulers:
        raise UserError("a param group spans several units and an LR scheduler is already attached; "
                        "create STController before the scheduler, or pass it as schedulers=[...]")
    optimizer.param_groups[:] = new  # in place: wrappers (Lightning) share the list
    if split:
        for s in schedulers:
            _split_scheduler(s, origin, n_old)
    return split


def _split_scheduler(scheduler, origin: list[int], n_old: int) -> None:
    for inner in getattr(scheduler, "_schedulers", ()):  # SequentialLR, ChainedScheduler
        _split_scheduler(inner, origin, n_old)
    for name in SCHEDULER_GROUP_LISTS:
        value = getattr(scheduler, name, None)
        if isinstance(value, list) and len(value) == n_old:
            setattr(scheduler, name, [value[o] for o in origin])


def rng_state() -> dict:
    """The torch, CUDA, Python and NumPy generators' states as tensors and plain values (so a
    checkpoint holding them loads with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


class STController:
    """ST's decisions and rollbacks for a user's training loop (see the module docstring)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, units=None, probe=None,
                 tau: float = 3.5, alpha: float = 0.25, rollback: str = "consume", *,
                 trigger: str = "absolute", method: str = "st", max_rollbacks: int = 50,
                 max_retries: int = 3, multiplier_rule: str = "linear", freeze_bn: bool = False,
                 layer: str | None = None, embedding: str | None = "tsne", radius: str = "mean",
                 backend: str = "auto", seed: int = 0, classes=None, repeats: int = 1,
                 decide_on: str = "mean", confidence: float = 0.95, schedulers=(),
                 batch_size: int | None = None, tsne_options: dict | None = None):
        if probe is None:
            raise UserError("STController needs probe=: (images, labels) or a DataLoader of the "
                            "(poisoned) training images ACM is measured on")
        self.st = STConfig(method=method, tau=tau, alpha=alpha, trigger=trigger, rollback=rollback,
                           max_rollbacks=max_rollbacks, max_retries=max_retries,
                           multiplier_rule=multiplier_rule, freeze_bn=freeze_bn,
                           acm_embedding=embedding, acm_radius=radius, acm_backend=backend)
        if self.st.spec.policy == "none":
            raise UserError(f"method {method!r} never acts on ACM; use st_fast.ACMMonitor to only watch it")
        check_decision(decide_on, confidence, repeats)
        self.policy = StagedPolicy(self.st)
        self.model, self.optimizer = unwrap(model), optimizer
        self.unit_of, self.unit_names = resolve_units(self.model, units)
        self.num_units = len(self.unit_names)
        split_param_groups(optimizer, self.unit_of, schedulers)
        self.probe, self.layer = Probe(probe, batch_size), layer
        self.acm_options = dict(embedding=embedding, radius=radius, backend=backend, seed=seed,
                                classes=classes, repeats=repeats, decide_on=decide_on,
                                confidence=confidence, tsne_options=tsne_options)
        self.epoch = 0                # epochs ended (end_epoch calls that moved on)
        self.steps_in_epoch = 0       # optimizer steps since the current epoch began
        self.retries = 0              # retries of the current epoch
        self.stop_reason: str | None = None
        self.readings: list[dict] = []
        self._applied: list | None = None
        self._bn_momentum: dict = {}
        self._hooks = [optimizer.register_step_pre_hook(self._before_step),
                       optimizer.register_step_post_hook(self._after_step)]
        self._apply_freeze_bn()
        self.accepted = self._snapshot()

    # ------------------------------------------------------------------ multipliers
    @property
    def multipliers(self) -> list[float]:
        return self.policy.multipliers(self.num_units)

    def _before_step(self, optimizer, args, kwargs) -> None:
        if self._applied is not None:  # the last step raised before the post hook: undo it
            self._after_step(optimizer, args, kwargs, count=False)
        scales = self.multipliers
        self._applied = []
        for group in optimizer.param_groups:
            if "st_unit" not in group:
                raise UserError("a param group was added after STController split the optimizer; "
                                "add every group before creating the controller")
            scheduled = group["lr"]
            group["lr"] = scheduled * scales[group["st_unit"]]
            self._applied.append((scheduled, group["lr"]))

    def _after_step(self, optimizer, args, kwargs, count: bool = True) -> None:
        for group, (scheduled, applied) in zip(optimizer.param_groups, self._applied or ()):
            if group["lr"] is applied:
                group["lr"] = scheduled
        self._applied = None
        self.steps_in_epoch += count

    def _apply_freeze_bn(self) -> None:
        """freeze_bn: BatchNorm layers of units whose multiplier is 0 keep their statistics."""
        if not self.st.freeze_bn:
            return
        scales = self.multipliers
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                params = list(m.parameters(recurse=False))
                if not params:
                    continue
                frozen = scales[self.unit_of[id(params[0])]] == 0
                self._bn_momentum.setdefault(m, m.momentum)
                m.momentum = 0.0 if frozen else self._bn_momentum[m]

    # ------------------------------------------------------------------ snapshots
    def _snapshot(self) -> dict:
        return {"model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()), "rng": rng_state()}

    def _restore(self, snap: dict) -> None:
        self.model.load_state_dict(snap["model"])
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        # a copy: load_state_dict keeps the tensors it is given, and training must not write
        # into the snapshot a later rollback returns to
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        for group, h in zip(self.optimizer.param_groups, hyper):
            group.update(h)  # lr, momentum, betas: the scheduler's now, not the snapshot's
        set_rng_state(snap["rng"])

    # ------------------------------------------------------------------ checks
    def measure(self) -> ACMReading:
        """ACM of the model on the probe now (rank 0 measures; the value is broadcast)."""
        dist = _dist_info()
        if dist.is_main:
            feats, labels = probe_features(self.model, self.probe, self.layer)
            reading = read_acm(feats, labels, **self.acm_options)
        else:
            reading = ACMReading(0.0, 0.0, [], 0.0, 0.0, "-")
        if dist.enabled:
            from .distributed import broadcast_float

            device = next(self.model.parameters()).device
            reading.decided = broadcast_float(reading.decided, dist, device)
            reading.acm = broadcast_float(reading.acm, dist, device)
        return reading

    def check(self) -> CheckReport:
        """A check now (sub-epoch checks); :meth:`end_epoch` at the end of every epoch."""
        return self._check(end_of_epoch=False)

    def end_epoch(self) -> CheckReport:
        """The check at the end of an epoch. Unless ``report.retry``, the next epoch begins."""
        return self._check(end_of_epoch=True)

    def _check(self, end_of_epoch: bool) -> CheckReport:
        if self.stop_reason is not None:
            raise UserError(f"step 1 has ended ({self.stop_reason}); stop the loop at report.stop")
        reading = self.measure()
        epoch = self.epoch + 1
        res = self.policy.check(reading.decided, epoch=epoch, step=self.steps_in_epoch,
                                seconds=reading.seconds, impl=reading.impl)
        retry = False
        if res["rollback"]:
            self._restore(self.accepted)
            self.stop_reason = self.policy.rolled_back(epoch) or self.policy.end_reason(self.num_units)
            retry = (self.st.rollback == "retry" and self.stop_reason is None and end_of_epoch
                     and self.retries < self.st.max_retries)
            self._apply_freeze_bn()
        else:
            self.accepted = self._snapshot()
        report = CheckReport("rollback" if res["rollback"] else "accept", reading.acm, reading.std,
                             reading.values, reading.decided, res["triggered"], self.policy.c,
                             self.multipliers, epoch, self.steps_in_epoch, retry=retry,
                             stop=self.stop_reason is not None, reason=self.stop_reason)
        self.readings.append({"epoch": epoch, "step": self.steps_in_epoch, "acm": reading.acm,
                              "acm_std": reading.std, "acm_values": reading.values,
                              "decided": reading.decided, "decision": report.decision})
        if end_of_epoch:
            self.retries = self.retries + 1 if retry else 0
            self.steps_in_epoch = 0
            if not retry:
                self.epoch += 1
        return report

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Plain containers and tensors (loads with weights_only=True): the policy's counters
        and readings, this loop's position, and the accepted snapshot a rollback returns to."""
        return {"policy": self.policy.state_dict(), "epoch": self.epoch,
                "steps_in_epoch": self.steps_in_epoch, "retries": self.retries,
                "stop_reason": self.stop_reason, "readings": self.readings,
                "accepted": self.accepted, "st": self.st.to_dict(), "num_units": self.num_units}

    def load_state_dict(self, sd: dict) -> None:
        if sd["num_units"] != self.num_units:
            raise UserError(f"controller state has {sd['num_units']} units, this model {self.num_units}")
        if sd["st"] != self.st.to_dict():
            changed = [f"{k}: {sd['st'].get(k)!r} -> {v!r}" for k, v in self.st.to_dict().items()
                       if sd["st"].get(k) != v]
            raise UserError(f"controller state was saved with other settings ({'; '.join(changed)})")
        self.policy.load_state_dict(sd["policy"])
        self.epoch, self.steps_in_epoch, self.retries = sd["epoch"], sd["steps_in_epoch"], sd["retries"]
        self.stop_reason, self.readings = sd["stop_reason"], list(sd["readings"])
        self.accepted = sd["accepted"]
        self._apply_freeze_bn()

    def close(self) -> None:
        """Remove the optimizer hooks (the param groups stay split)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _dist_info():
    import torch.distributed as dist

    from .distributed import DistInfo

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()
