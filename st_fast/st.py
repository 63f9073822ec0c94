"""Progressive Staged Training (ST), its variants and the controls that test it.

Step 1 (every method): cosine-decayed lr x per-unit multiplier; train; at each *check* (end
of every epoch, or every ``check_every`` optimizer steps) measure ACM on a fixed subset of
the (poisoned) training set. What a trigger does depends on the method's policy:

    policy "none"   (nt, nt-cg, nt-cg-ft)      nothing; ACM is only logged
    policy "staged" (st, st-cg, st-full)       roll back to the last accepted check, c += 1,
                                               recompute the multipliers lambda(c)
    policy "stop"   (acm-es, acm-es-ft,        roll back to the last accepted check and end step 1
                     acm-es-cg-ft)

Step 2 (methods ending in "-full" / "-ft"): fine-tune all units (multipliers 1) with CG
augmentation for ``ft_epochs`` at ``ft_lr`` (cosine), with a fresh optimizer state.

Rollback restores model, optimizer, BatchNorm statistics, RNG and augmentation state from an
in-memory snapshot (no disk I/O). ``rollback="consume"`` (the paper's algorithm) moves on to
the next epoch; ``"retry"`` re-runs the rejected epoch with the new multipliers (at most
``max_retries`` times, then the epoch is consumed). Step 1 also ends when every multiplier is
0 (nothing can change any more) or when ``max_rollbacks`` rollbacks have happened. Every
rolled-back epoch is logged and counted.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from .config import STConfig, TrainConfig
from .data import ImageDataset
from .errors import UserError
from .methods import METHODS, TRIGGERS, MethodSpec  # noqa: F401  (re-exported)
from .schedule import get_rule
from .trainer import EpochMeter, Trainer, cosine_lr
from .utils import Eta, atomic_write_text


def trigger_fires(kind: str, acm: float, tau: float, first: float | None, last_accepted: float | None) -> bool:
    """Does an ACM reading trigger? ``first``: ACM at the first check; ``last_accepted``: at the
    last accepted check (None before there is one)."""
    if kind == "absolute":
        return acm > tau
    if kind == "relative":
        return first is not None and acm > tau * first
    if kind == "rise":
        return last_accepted is not None and acm - last_accepted > tau
    raise UserError(f"unknown trigger {kind!r}")


class StagedTrainer(Trainer):
    """NT plus ACM checks, rollbacks, per-unit multipliers and the CG fine-tune."""

    def __init__(self, cfg: TrainConfig, st: STConfig, train_set: ImageDataset,
                 test_set: ImageDataset | None, run_dir=None, progress: bool = True, model=None,
                 **run_identity):
        """``run_identity``: ``writer`` and ``run_extra`` (see :class:`Trainer`)."""
        self.st = st.validate()
        cfg = dataclasses.replace(cfg, cg=cfg.cg or st.spec.cg)
        self.method = st.method
        super().__init__(cfg, train_set, test_set, run_dir=run_dir, progress=progress, model=model,
                         **run_identity)
        self.rule = get_rule(st.multiplier_rule)
        self.acm_unit = self._resolve_acm_layer(st.acm_layer)
        self.acm_idx = self._acm_subset(train_set)
        self.c = 0
        self.rollbacks = 0
        self.acm_first: float | None = None
        self.acm_last_accepted: float | None = None
        self.phase = "train"         # "train" (step 1) -> "finetune" (step 2) -> "done"
        self.stop_reason: str | None = None
        self.checks: list[dict] = []
        self.acm_impl = "-"          # how the last ACM reading embedded (set by measure_acm)
        self.accepted = None         # in-memory snapshot of the last accepted check
        self.unit_scales = self.multipliers()

    # ------------------------------------------------------------------ setup
    def _resolve_acm_layer(self, name: str | None) -> int:
        names = self.model.unit_names()
        if name is None or name in ("penultimate", "head"):
            return len(names) - 1
        if name not in names:
            raise UserError(f"unknown --acm-layer {name!r}; units of {self.cfg.arch}: {', '.join(names)}")
        return names.index(name)

    def _acm_subset(self, train_set: ImageDataset) -> torch.Tensor:
        k = train_set.num_classes if self.st.acm_classes is None else min(self.st.acm_classes, train_set.num_classes)
        per_class = self.st.acm_per_class or (100 if train_set.num_classes <= 10 else 50)
        counts = torch.bincount(train_set.labels, minlength=train_set.num_classes)[:k]
        per_class = min(per_class, int(counts.min()))
        if per_class < 2:
            raise UserError("the ACM subset needs at least 2 training images in each of its classes")
        g = torch.Generator().manual_seed(self.cfg.seed + 12345)
        return train_set.per_class_indices(per_class, g, classes=range(k))

    def multipliers(self) -> list[float]:
        if self.st.spec.policy != "staged":
            return [1.0] * self.num_units
        return [float(v) for v in self.rule(self.c, self.num_units, self.st.alpha)]

    # ------------------------------------------------------------------ ACM
    def measure_acm(self) -> tuple[float, float]:
        """(ACM of the current model on the ACM subset, seconds spent)."""
        from .cluster import acm

        t0 = time.perf_counter()
        feats = self.features(self.train_set.images[self.acm_idx], unit=self.acm_unit)
        stats = acm(feats, self.train_set.labels[self.acm_idx], embedding=self.st.acm_embedding,
                    radius=self.st.acm_radius, backend=self.st.acm_backend, seed=self.cfg.seed,
                    return_stats=True)
        # which t-SNE implementation ran: near tau, the paths' ~2% differences can flip a trigger
        self.acm_impl = stats.implementation
        return float(stats), time.perf_counter() - t0

    def wants_acm(self) -> bool:
        return self.st.spec.policy != "none" or self.st.log_acm

    # ------------------------------------------------------------------ BatchNorm freezing
    def before_steps(self, scales: list[float]) -> None:
        """With freeze_bn, BatchNorm layers of units whose multiplier is 0 keep their running
        statistics (momentum 0 keeps the batch-statistics forward pass unchanged)."""
        self._saved_momentum = []
        if not self.st.freeze_bn:
            return
        for unit, s in zip(self.model.units(), scales):
            if s == 0:
                for m in unit.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        self._saved_momentum.append((m, m.momentum))
                        m.momentum = 0.0

    def after_steps(self) -> None:
        for m, momentum in self._saved_momentum:
            m.momentum = momentum
        self._saved_momentum = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["st"] = {"c": self.c, "rollbacks": self.rollbacks, "acm_first": self.acm_first,
                    "acm_last_accepted": self.acm_last_accepted, "phase": self.phase,
                    "stop_reason": self.stop_reason, "checks": self.checks, "config": self.st.to_dict(),
                    "ft_epoch": getattr(self, "ft_epoch", 0)}
        return sd

    def run_record(self) -> dict:
        return {**super().run_record(), "st": self.st.to_dict()}

    def load_state_dict(self, sd: dict) -> None:
        super().load_state_dict(sd)
        st = sd["st"]
        self.c, self.rollbacks = st["c"], st["rollbacks"]
        self.acm_first, self.acm_last_accepted = st["acm_first"], st["acm_last_accepted"]
        self.phase, self.stop_reason, self.checks = st["phase"], st["stop_reason"], list(st["checks"])
        self.ft_epoch = st["ft_epoch"]
        if self.phase == "finetune" and self.augment is None:  # resumed inside step 2
            self.augment = self._make_augment()
            self.loader.transform = self.augment
            if sd.get("augment") is not None:
                self.augment.load_state_dict(sd["augment"])

    def _restore(self, snap: dict) -> None:
        """Roll back to a snapshot; the counters that record the rollback itself survive."""
        keep = (self.c, self.rollbacks, self.acm_first, self.checks, self.history)
        self.load_state_dict(snap)
        self.c, self.rollbacks, self.acm_first, self.checks, self.history = keep

    # ------------------------------------------------------------------ loop
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Step 1 then (for -full / -ft methods) step 2. ``stop_after`` counts epochs of both."""
        self._write_config()
        total = self.cfg.epochs + (self.st.ft_epochs if self.st.spec.finetune else 0)
        end = total if stop_after is None else min(stop_after, total)
        eta = Eta()
        if self.accepted is None:
            self.accepted = self.snapshot()
        while self.phase != "done" and len(self.history) < end:
            if self.phase == "train" and self.epoch >= self.cfg.epochs:
                self._end_step1("schedule finished")
                continue
            row = self.run_epoch(self.epoch) if self.phase == "train" else self.run_finetune_epoch()
            self.history.append(row)
            if self.phase == "train":
                self._maybe_end_step1()
            if self.st.spec.policy != "none" and self.phase == "train":
                self.accepted = self.snapshot()
            self.save_checkpoint()
            self.write_history()
            eta.tick()
            self.log(self._summary(row) + f"  eta {eta.left(total - len(self.history))}")
        if self.phase == "done" or len(self.history) >= total:
            self.phase = "done"
            self.save_checkpoint()
            self.finish()
        return self.history

    def _maybe_end_step1(self) -> None:
        staged = self.st.spec.policy == "staged"
        reason = self.stop_reason
        if reason is None and staged and not any(self.multipliers()):
            reason = f"all multipliers reached 0 after {self.c} triggers"
        elif reason is None and staged and self.rollbacks >= self.st.max_rollbacks:
            reason = f"rollback cap ({self.st.max_rollbacks}) reached"
        elif reason is None and self.epoch >= self.cfg.epochs:
            reason = "schedule finished"
        if reason is not None:
            self._end_step1(reason)

    def _end_step1(self, reason: str) -> None:
        self.stop_reason = reason
        self.log(f"[{self.method}] step 1 ends at epoch {self.epoch}: {reason}")
        if self.st.spec.finetune and self.st.ft_epochs > 0:
            self.phase = "finetune"
            self._start_finetune()
        else:
            self.phase = "done"

    def _start_finetune(self) -> None:
        """Step 2: all units, CG on, fresh optimizer state (momentum starts again)."""
        from .trainer import UnitSGD

        self.ft_epoch = 0
        self.opt = UnitSGD(self.model, dataclasses.replace(self.cfg, lr=self.st.ft_lr))
        if self.augment is None:
            self.augment = self._make_augment()
            self.loader.transform = self.augment

    def run_epoch(self, epoch: int) -> dict:
        """One epoch of step 1: steps, checks, and rollbacks (possibly retried)."""
        lr = self.lr_for_epoch(epoch)
        steps = len(self.loader)
        every = self.st.check_every or steps
        row: dict = {"epoch": len(self.history) + 1, "phase": "train", "schedule_epoch": epoch + 1, "lr": lr,
                     "rolled_back": 0, "time_acm": 0.0}
        meter = EpochMeter(self.device)
        retries, pos = 0, 0
        while pos < steps:
            scales = self.multipliers()
            row.setdefault("multipliers", scales)
            stop = min(steps, pos + every)
            self.train_steps(epoch, lr, scales, pos, stop, meter)
            check = self._check(epoch, stop)
            row["time_acm"] += check.get("time_acm", 0.0)
            if check.get("triggered") and self.st.spec.policy != "none":
                row["rolled_back"] += 1
                row.setdefault("test_acc_rejected", self.evaluate())
                self._restore(self.accepted)
                self.rollbacks += 1
                if self.st.spec.policy == "stop":
                    self.stop_reason = f"ACM trigger at epoch {epoch + 1} (early stop)"
                    break
                self.c += 1
                if self.rollbacks >= self.st.max_rollbacks or not any(self.multipliers()):
                    break
                if self.st.rollback == "retry" and retries < self.st.max_retries:
                    retries += 1
                    pos = self._accepted_position(epoch)
                    continue
            else:
                self.accepted = self.snapshot() if stop < steps else self.accepted
            pos = stop
        if self.st.rollback == "retry" and retries >= self.st.max_retries and row["rolled_back"] > retries:
            row["retry_cap_reached"] = True
        self.epoch = epoch + 1
        row.update(meter.summary())
        t0 = time.perf_counter()
        row.update({"acm": self.checks[-1]["acm"] if self.checks and self.checks[-1]["epoch"] == epoch + 1 else None,
                    "c": self.c, "rollbacks_total": self.rollbacks, "multipliers": row["multipliers"],
                    "unit_lrs": [lr * s for s in row["multipliers"]],
                    "test_acc": self.evaluate(), "time_eval": time.perf_counter() - t0})
        self.unit_scales = self.multipliers()
        return row

    def _accepted_position(self, epoch: int) -> int:
        """Batch index where the last accepted check left ``epoch`` (0 if it was an earlier epoch)."""
        snap_checks = [c for c in self.checks if c["accepted"] and c["epoch"] == epoch + 1]
        return snap_checks[-1]["step"] if snap_checks else 0

    def _check(self, epoch: int, step: int) -> dict:
        if not self.wants_acm():
            return {}
        # ACM runs once (rank 0); its reading is broadcast so all ranks decide alike
        value, seconds = self.measure_acm() if self.dist.is_main else (None, 0.0)
        if self.dist.enabled:
            from .distributed import broadcast_float

            value = broadcast_float(value, self.dist, self.device)
        if self.acm_first is None:
            self.acm_first = value
        fired = trigger_fires(self.st.trigger, value, self.st.tau, self.acm_first, self.acm_last_accepted)
        acted = fired and self.st.spec.policy != "none"
        if not acted:
            self.acm_last_accepted = value
        check = {"epoch": epoch + 1, "step": step, "acm": value, "triggered": fired, "accepted": not acted,
                 "c": self.c, "time_acm": seconds, "acm_impl": self.acm_impl}
        self.checks.append(check)
        return check

    def run_finetune_epoch(self) -> dict:
        lr = cosine_lr(self.st.ft_lr, self.ft_epoch, self.st.ft_epochs)
        scales = [1.0] * self.num_units
        stats = self.train_epoch(self.cfg.epochs + self.ft_epoch, lr, scales,
                                 desc=f"fine-tune {self.ft_epoch + 1}/{self.st.ft_epochs}")
        self.ft_epoch += 1
        t0 = time.perf_counter()
        row = {"epoch": len(self.history) + 1, "phase": "finetune", "lr": lr, **stats,
               "multipliers": scales, "unit_lrs": [lr] * self.num_units, "c": self.c,
               "rollbacks_total": self.rollbacks, "rolled_back": 0, "acm": None, "time_acm": 0.0}
        if self.wants_acm() and self.dist.is_main:
            row["acm"], row["time_acm"] = self.measure_acm()
        row.update({"test_acc": self.evaluate(), "time_eval": time.perf_counter() - t0})
        if self.ft_epoch >= self.st.ft_epochs:
            self.phase = "done"
        return row

    # ------------------------------------------------------------------ reporting
    def _summary(self, row: dict) -> str:
        acm = f"  acm {row['acm']:.3f}" if row.get("acm") is not None else ""
        rb = f"  ROLLED BACK x{row['rolled_back']}" if row.get("rolled_back") else ""
        return (f"[{self.method}] {row['phase']:<8} epoch {row['epoch']:>3}  lr {row['lr']:.4f}  "
                f"train {row['train_acc']:.3f}  test {row['test_acc']:.3f}{acm}  c {row['c']}{rb}  "
                f"{row['images_per_s']:.0f} img/s")

    def summary(self) -> dict:
        acc = [r["test_acc"] for r in self.history]
        return {"method": self.method, "final_test_acc": acc[-1] if acc else None,
                "peak_test_acc_oracle": max(acc) if acc else None, "rollbacks": self.rollbacks,
                "c": self.c, "stop_reason": self.stop_reason,
                "epochs_run": len(self.history),
                "time_train": sum(r["time_train"] for r in self.history),
                "time_acm": sum(r.get("time_acm") or 0 for r in self.history),
                "time_eval": sum(r["time_eval"] for r in self.history)}

    def write_history(self) -> None:
        super().write_history()
        if self.writes_files and self.checks:
            from .trainer import rows_to_csv

            atomic_write_text(self.run_dir / "checks.csv", rows_to_csv(self.checks))

    def finish(self) -> None:
        super().finish()
        if not self.writes_files or not self.history:
            return
        from .plots import plot_acm, plot_multipliers
        from .utils import atomic_write_json

        atomic_write_json(self.run_dir / "summary.json", self.summary())
        if self.checks:
            plot_acm(self.history, self.checks, self.st.tau if self.st.trigger == "absolute" else None,
                     self.run_dir / "plots" / "acm.png", title=self.describe())
        plot_multipliers(self.history, self.model.unit_names(), self.run_dir / "plots" / "multipliers.png",
                         title=self.describe())
