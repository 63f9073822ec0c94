"""The one training engine: NT, ST and every control are this loop with a staged policy.

A :class:`Trainer` owns the model, the optimizer (one learning-rate multiplier per unit), the
device-resident loader, the in-memory snapshots and the run directory; its
:class:`~st_fast.policy.StagedPolicy` decides at each ACM check (accept, roll back, stop).

Step 1: cosine-decayed lr x per-unit multiplier; train; at each check (end of every epoch, or
every ``check_every`` optimizer steps) measure ACM on a fixed subset of the (poisoned)
training set and ask the policy. A rollback restores model, optimizer, BatchNorm statistics,
RNG and augmentation state from the last accepted snapshot; ``rollback="consume"`` (the
paper) moves on to the next epoch, ``"retry"`` re-runs the rejected epoch with the new
multipliers (at most ``max_retries`` times). Step 1 also ends when every multiplier is 0 or
after ``max_rollbacks`` rollbacks. Step 2 (methods ending in "-full" / "-ft"): fine-tune every
unit with CG for ``ft_epochs`` at ``ft_lr`` (cosine), with a fresh optimizer state.

    run_dir/config.json     the configuration
    run_dir/history.csv     one row per epoch (also history.json); checks.csv: every ACM check
    run_dir/checkpoint.pt   atomic, every epoch; ``try_resume()`` continues it (st_fast.checkpoint)
    run_dir/summary.json, plots/*.png

Determinism: the model is initialised from ``seed``; each epoch's shuffling and augmentation
draw from a generator seeded by (seed, epoch), so a resumed run replays exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    NOT_RESULT_FIELDS,
    check_same_run,
    read_checkpoint,
)
from .config import STConfig, TrainConfig
from .data import DeviceLoader, ImageDataset
from .errors import TrainingDiverged, UserError
from .files import atomic_torch_save, atomic_write_json, atomic_write_text, rows_to_csv
from .models import UnitNet, build_model
from .optim import UnitSGD
from .policy import StagedPolicy
from .schedule import cosine_lr
from .utils import Eta, resolve_device, seed_everything


class Trainer:
    """One run: ``Trainer(cfg, st, train_set, test_set).fit()``; ``st`` None is plain NT."""

    def __init__(self, cfg: TrainConfig, st: STConfig | None, train_set: ImageDataset,
                 test_set: ImageDataset | None, run_dir: str | Path | None = None, progress: bool = True,
                 model: UnitNet | None = None, writer: str = "api", run_extra: dict | None = None):
        from .distributed import setup

        self.st = (st or STConfig(method="nt", log_acm=False)).validate()
        self.policy = StagedPolicy(self.st)
        self.method = self.st.method
        # the method's CG (nt-cg, st-full, ...) is part of the recorded config, not hidden
        self.cfg = dataclasses.replace(cfg, cg=cfg.cg or self.st.spec.cg)   # replace() re-validates
        cfg = self.cfg
        # who writes the run directory ("train", "demo", "tune", "bench", "api") and what else
        # defines the run (a defence); both are checked on resume
        self.writer, self.run_extra = writer, dict(run_extra or {})
        self.dist, self.device = setup(resolve_device(cfg.device))
        self.train_set, self.test_set = train_set, test_set
        self.run_dir = Path(run_dir) if run_dir else None
        self.progress = progress
        seed_everything(cfg.seed)
        h, w = train_set.image_size
        self.model = model or build_model(cfg.arch, train_set.num_classes, train_set.channels,
                                          mean=train_set.mean, std=train_set.std, image_size=h,
                                          dropout=cfg.dropout)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.amp_dtype = torch.bfloat16 if (cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")) else None
        self.opt = UnitSGD(self.model, cfg)
        self.num_units = len(self.model.units())
        self.augment = self._make_augment() if cfg.cg else None
        # the module that runs training steps: DDP-wrapped under torchrun, else the model itself
        self.step_model = self._wrap_ddp() if self.dist.enabled else self.model
        self.loader = DeviceLoader(train_set.images, train_set.labels, cfg.batch_size, shuffle=True,
                                   drop_last=len(train_set) > cfg.batch_size,
                                   rank=self.dist.rank, world=self.dist.world,
                                   crop_padding=cfg.crop_padding, flip=cfg.flip, seed=cfg.seed,
                                   device=self.device, channels_last=self.channels_last,
                                   transform=self.augment)
        # Optional per-batch hook (defences: mixup/cutmix/cutout, adversarial training, ...):
        # (x, y) -> (x, y) where the returned y may be soft targets of shape (B, num_classes).
        self.batch_transform = None
        self.acm_unit = self._resolve_acm_layer(self.st.acm_layer)
        # the fixed ACM subset (own generator: drawing it changes no other random stream)
        self.acm_idx = self._acm_subset(train_set) if self.policy.wants_acm() else None
        self.acm_impl = "-"          # how the last ACM reading embedded (set by measure_acm)
        self.epoch = 0               # schedule epochs of step 1 completed
        self.ft_epoch = 0            # fine-tune epochs completed
        self.history: list[dict] = []
        self.phase = "train"         # "train" (step 1) -> "finetune" (step 2) -> "done"
        self.stop_reason: str | None = None
        self.accepted = None         # in-memory snapshot of the last accepted check
        # early stopping on clean validation images (defences val-es / cg-val-es): the epoch
        # with the best accuracy there, and its weights; None: off
        self.select_on: ImageDataset | None = None
        self.best: dict | None = None
        self._saved_momentum: list = []
        self.unit_scales = self.policy.multipliers(self.num_units)

    # ------------------------------------------------------------------ pieces
    def _wrap_ddp(self):
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _make_augment(self):
        from .augment import ColorGray

        return ColorGray(seed=self.cfg.seed)

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
        return self.policy.multipliers(self.num_units)

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def lr_for_epoch(self, epoch: int) -> float:
        return cosine_lr(self.cfg.lr, epoch, self.cfg.epochs)

    # ------------------------------------------------------------------ steps
    def train_epoch(self, epoch: int, lr: float, scales: list[float], desc: str = "") -> dict:
        """One pass over the training set with per-unit lr = lr * scales[unit]."""
        meter = EpochMeter(self.device)
        self.train_steps(epoch, lr, scales, 0, None, meter, desc)
        return meter.summary()

    def train_steps(self, epoch: int, lr: float, scales: list[float], start: int, stop: int | None,
                    meter: EpochMeter, desc: str = "") -> None:
        """Optimizer steps on batches ``start`` .. ``stop - 1`` of ``epoch``."""
        self.opt.set_lrs(lr, scales)
        self.model.train()
        self._freeze_bn(scales)
        n_batches = (len(self.loader) if stop is None else min(stop, len(self.loader))) - start
        batches = _progress(self.loader.batches(epoch, start, stop), n_batches,
                            desc or f"epoch {epoch + 1}/{self.cfg.epochs}", self.progress and self.dist.is_main,
                            self.loader.batch_size)
        t0 = time.perf_counter()
        for x, y in batches:
            if self.batch_transform is not None:
                x, y = self.batch_transform(x, y)
            with self.autocast():
                out = self.step_model(x)
                loss = F.cross_entropy(out, y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            meter.add(loss.detach(), out.detach(), y)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        meter.seconds += time.perf_counter() - t0
        if not math.isfinite(float(meter.loss_sum)):   # one read per call: never a silent NaN
            raise TrainingDiverged(f"training diverged: the loss is {float(meter.loss_sum)} in epoch "
                                   f"{epoch + 1} (lr {lr:g}); lower --lr or turn off --amp")
        self._unfreeze_bn()

    def _freeze_bn(self, scales: list[float]) -> None:
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

    def _unfreeze_bn(self) -> None:
        for m, momentum in self._saved_momentum:
            m.momentum = momentum
        self._saved_momentum = []

    # ------------------------------------------------------------------ evaluation and ACM
    @property
    def inference_batch_size(self) -> int:
        # On the CPU, batches of 1000 spill the caches: 128 evaluated the ACM subset 2x faster
        # (small-resnet, 28 px, one thread: 1.1 s -> 0.5 s). The GPU wants large batches.
        return 1000 if self.device.type == "cuda" else 128

    def _inference_input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device).float().div_(255)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def evaluate(self, dataset: ImageDataset | None = None, batch_size: int | None = None) -> float:
        dataset = dataset or self.test_set
        if dataset is None:
            return float("nan")
        self.model.eval()
        batch_size = batch_size or self.inference_batch_size
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for i in range(0, len(dataset), batch_size):
            with self.autocast():
                pred = self.model(self._inference_input(dataset.images[i:i + batch_size])).argmax(1)
            correct += (pred == dataset.labels[i:i + batch_size].to(self.device)).sum()
        return float(correct) / len(dataset)

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int | None = None, unit: int = -1) -> torch.Tensor:
        """Activations (float32) of ``unit`` (default: penultimate) for uint8 images, eval mode."""
        self.model.eval()
        batch_size = batch_size or self.inference_batch_size
        outs = []
        for i in range(0, len(images), batch_size):
            with self.autocast():
                outs.append(self.model.unit_output(self._inference_input(images[i:i + batch_size]), unit).float())
        return torch.cat(outs)

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
        return self.policy.wants_acm()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "unit_scales": list(self.unit_scales),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "augment": self.augment.state_dict() if self.augment is not None else None,
            "config": self.cfg.to_dict(),
            "method": self.method,
            "st": {**self.policy.state_dict(), "phase": self.phase, "stop_reason": self.stop_reason,
                   "config": self.st.to_dict(), "ft_epoch": self.ft_epoch},
            "best": self.best,
            "format": CHECKPOINT_FORMAT,
            "run": self.run_record(),
        }

    def run_record(self) -> dict:
        """Everything that decides this run's result, as plain values: a checkpoint whose
        record differs belongs to another run."""
        train = {k: v for k, v in self.cfg.to_dict().items() if k not in NOT_RESULT_FIELDS}
        if self.cfg.poison:
            if not hasattr(self, "_poison_sha256"):
                from .files import file_sha256

                self._poison_sha256 = file_sha256(self.cfg.poison)
            train["poison_sha256"] = self._poison_sha256
        return {"writer": self.writer, "method": self.method, "device_type": self.device.type,
                "train": train, "st": self.st.to_dict(), **self.run_extra}

    def load_state_dict(self, sd: dict) -> None:
        self.model.load_state_dict(sd["model"])
        self.opt.load_state_dict(sd["optimizer"])
        self.epoch = sd["epoch"]
        self.history = list(sd["history"])
        self.unit_scales = list(sd["unit_scales"])
        torch.set_rng_state(sd["torch_rng"])
        if sd.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(sd["cuda_rng"])
        if self.augment is not None and sd.get("augment") is not None:
            self.augment.load_state_dict(sd["augment"])
        self.best = sd.get("best")
        st = sd["st"]
        self.policy.load_state_dict(st)
        self.phase, self.stop_reason, self.ft_epoch = st["phase"], st["stop_reason"], st["ft_epoch"]
        if self.phase == "finetune" and self.augment is None:  # resumed inside step 2
            self.augment = self._make_augment()
            self.loader.transform = self.augment
            if sd.get("augment") is not None:
                self.augment.load_state_dict(sd["augment"])

    def snapshot(self) -> dict:
        """An in-memory copy of the full training state (for rollbacks; no disk I/O)."""
        return copy.deepcopy(self.state_dict())

    def _restore(self, snap: dict) -> None:
        """Roll back to a snapshot; the counters that record the rollback itself survive.

        From a copy: optimizer.load_state_dict keeps the tensors it is given as its momentum
        buffers, so restoring the snapshot itself would let the next steps write into it and a
        second rollback to the same snapshot (consecutive triggers, retry) would not return to
        the accepted state. Before 2026-12-01 (commit 61ca44f and earlier) it did exactly that."""
        p = self.policy
        keep = (p.c, p.rollbacks, p.acm_first, p.checks, self.history)
        self.load_state_dict(copy.deepcopy(snap))
        p.c, p.rollbacks, p.acm_first, p.checks, self.history = keep

    @property
    def writes_files(self) -> bool:
        """Only one process (rank 0) writes the run directory."""
        return self.run_dir is not None and self.dist.is_main

    def save_checkpoint(self) -> None:
        if self.writes_files:
            atomic_torch_save(self.state_dict(), self.run_dir / CHECKPOINT)

    def try_resume(self, require: bool = False) -> bool:
        """Load run_dir/checkpoint.pt if it exists; True if training resumes from it.

        The checkpoint must be this run's: every setting that changes the result must match
        (else one line lists each differing field, old -> new). ``require``: a missing
        checkpoint is an error too. Nothing in the file can run code (weights_only)."""
        path = self.run_dir / CHECKPOINT if self.run_dir else None
        if path is None or not path.exists():
            if require:
                raise UserError(f"{path or 'no run directory'}: no checkpoint to resume; "
                                "drop --resume to start a new run")
            return False
        sd = read_checkpoint(path, self.writer, map_location=self.device)   # one read of the file
        check_same_run(path, sd["run"], self.run_record())
        self.load_state_dict(sd)
        return True

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Step 1 then (for -full / -ft methods) step 2; returns the history rows.
        ``stop_after`` ends early after that many epochs of both, as an interruption would."""
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
            if self.select_on is not None:
                self._consider_for_selection(row)
            if self.phase == "train":
                self._maybe_end_step1()
            if self.policy.acts and self.phase == "train":
                self.accepted = self.snapshot()
            self.save_checkpoint()
            self.write_history()
            eta.tick()
            self.log(self._summary(row) + f"  eta {eta.left(total - len(self.history))}")
        if self.phase == "done" or len(self.history) >= total:
            self.phase = "done"
            if self.best is not None:   # end with the selected epoch's weights
                self.model.load_state_dict(self.best["model"])
            self.save_checkpoint()
            self.finish()
        return self.history

    def _consider_for_selection(self, row: dict) -> None:
        """Evaluate the clean validation images; keep this epoch's weights if it is the best so
        far (strictly better: ties go to the earliest epoch). Never looks at the test set."""
        row["val_acc"] = self.evaluate(self.select_on)
        if self.best is None or row["val_acc"] > self.best["val_acc"]:
            self.best = {"epoch": row["epoch"], "val_acc": row["val_acc"],
                         "model": copy.deepcopy(self.model.state_dict())}

    def _maybe_end_step1(self) -> None:
        reason = self.stop_reason or self.policy.end_reason(self.num_units)
        if reason is None and self.epoch >= self.cfg.epochs:
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
            if check.get("rollback"):
                row["rolled_back"] += 1
                row.setdefault("test_acc_rejected", self.evaluate())
                self._restore(self.accepted)
                self.stop_reason = self.policy.rolled_back(epoch + 1) or self.stop_reason
                if self.stop_reason is not None or self.policy.exhausted(self.num_units):
                    break
                if self.st.rollback == "retry" and retries < self.st.max_retries:
                    retries += 1
                    pos = self.policy.accepted_step(epoch + 1)
                    continue
            else:
                self.accepted = self.snapshot() if stop < steps else self.accepted
            pos = stop
        if self.st.rollback == "retry" and retries >= self.st.max_retries and row["rolled_back"] > retries:
            row["retry_cap_reached"] = True
        self.epoch = epoch + 1
        row.update(meter.summary())
        t0 = time.perf_counter()
        checks = self.policy.checks
        row.update({"acm": checks[-1]["acm"] if checks and checks[-1]["epoch"] == epoch + 1 else None,
                    "c": self.policy.c, "rollbacks_total": self.policy.rollbacks,
                    "multipliers": row["multipliers"], "unit_lrs": [lr * s for s in row["multipliers"]],
                    "test_acc": self.evaluate(), "time_eval": time.perf_counter() - t0})
        self.unit_scales = self.multipliers()
        return row

    def _check(self, epoch: int, step: int) -> dict:
        if not self.wants_acm():
            return {}
        # ACM runs once (rank 0); its reading is broadcast so all ranks decide alike
        value, seconds = self.measure_acm() if self.dist.is_main else (None, 0.0)
        if self.dist.enabled:
            from .distributed import broadcast_float

            value = broadcast_float(value, self.dist, self.device)
        return self.policy.check(value, epoch=epoch + 1, step=step, seconds=seconds, impl=self.acm_impl)

    def run_finetune_epoch(self) -> dict:
        lr = cosine_lr(self.st.ft_lr, self.ft_epoch, self.st.ft_epochs)
        scales = [1.0] * self.num_units
        stats = self.train_epoch(self.cfg.epochs + self.ft_epoch, lr, scales,
                                 desc=f"fine-tune {self.ft_epoch + 1}/{self.st.ft_epochs}")
        self.ft_epoch += 1
        t0 = time.perf_counter()
        row = {"epoch": len(self.history) + 1, "phase": "finetune", "lr": lr, **stats,
               "multipliers": scales, "unit_lrs": [lr] * self.num_units, "c": self.policy.c,
               "rollbacks_total": self.policy.rollbacks, "rolled_back": 0, "acm": None, "time_acm": 0.0}
        if self.wants_acm() and self.dist.is_main:
            row["acm"], row["time_acm"] = self.measure_acm()
        row.update({"test_acc": self.evaluate(), "time_eval": time.perf_counter() - t0})
        if self.ft_epoch >= self.st.ft_epochs:
            self.phase = "done"
        return row

    # ------------------------------------------------------------------ reporting
    @property
    def checks(self) -> list[dict]:
        return self.policy.checks

    @property
    def rollbacks(self) -> int:
        return self.policy.rollbacks

    @property
    def c(self) -> int:
        return self.policy.c

    def describe(self) -> str:
        poison = self.train_set.meta.get("poison", {}).get("attack") if self.train_set.meta else None
        return f"{self.method.upper()} {self.cfg.arch} on {self.cfg.dataset}" + (f" ({poison})" if poison else "")

    def _summary(self, row: dict) -> str:
        acm = f"  acm {row['acm']:.3f}" if row.get("acm") is not None else ""
        rb = f"  ROLLED BACK x{row['rolled_back']}" if row.get("rolled_back") else ""
        return (f"[{self.method}] {row['phase']:<8} epoch {row['epoch']:>3}  lr {row['lr']:.4f}  "
                f"train {row['train_acc']:.3f}  test {row['test_acc']:.3f}{acm}  c {row['c']}{rb}  "
                f"{row['images_per_s']:.0f} img/s")

    def summary(self) -> dict:
        """final_test_acc: the model the run ends with (the selected epoch's, with selection)."""
        acc = [r["test_acc"] for r in self.history]
        final = acc[-1] if acc else None
        extra = {}
        if self.best is not None:
            final = self.history[self.best["epoch"] - 1]["test_acc"]
            extra = {"selected_epoch": self.best["epoch"], "selected_val_acc": self.best["val_acc"]}
        return {"method": self.method, "final_test_acc": final, **extra,
                "peak_test_acc_oracle": max(acc) if acc else None, "rollbacks": self.policy.rollbacks,
                "c": self.policy.c, "stop_reason": self.stop_reason,
                "epochs_run": len(self.history),
                "time_train": sum(r["time_train"] for r in self.history),
                "time_acm": sum(r.get("time_acm") or 0 for r in self.history),
                "time_eval": sum(r["time_eval"] for r in self.history)}

    def log(self, msg: str) -> None:
        """Epoch summaries go to stderr always (``progress`` only controls the batch bar)."""
        if self.dist.is_main:
            print(msg, file=sys.stderr, flush=True)

    def _write_config(self) -> None:
        if self.writes_files:
            atomic_write_json(self.run_dir / "config.json",
                              {"method": self.method, "optimizer_backend": self.opt.backend,
                               "device": str(self.device), **self.cfg.to_dict()})

    def write_history(self) -> None:
        if not self.writes_files:
            return
        atomic_write_json(self.run_dir / "history.json", self.history)
        atomic_write_text(self.run_dir / "history.csv", rows_to_csv(self.history))
        if self.policy.checks:
            atomic_write_text(self.run_dir / "checks.csv", rows_to_csv(self.policy.checks))

    def finish(self) -> None:
        """summary.json and the plots (accuracy, ACM, multipliers)."""
        if not self.writes_files or not self.history:
            return
        from .plots import plot_accuracy, plot_acm, plot_multipliers

        plot_accuracy(self.history, self.run_dir / "plots" / "accuracy.png", title=self.describe())
        atomic_write_json(self.run_dir / "summary.json", self.summary())
        if self.policy.checks:
            plot_acm(self.history, self.policy.checks, self.st.tau if self.st.trigger == "absolute" else None,
                     self.run_dir / "plots" / "acm.png", title=self.describe())
        plot_multipliers(self.history, self.model.unit_names(), self.run_dir / "plots" / "multipliers.png",
                         title=self.describe())


class EpochMeter:
    """Loss / accuracy / throughput of the steps of one epoch (kept on the device, read once)."""

    def __init__(self, device):
        self.n = 0
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.seconds = 0.0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.n += len(y)
        self.loss_sum += loss.float() * len(y)
        hard = y.argmax(1) if y.dim() == 2 else y  # soft targets (mixup/cutmix): their argmax
        self.correct += (logits.argmax(1) == hard).sum()

    def summary(self) -> dict:
        n = max(1, self.n)
        return {"train_loss": float(self.loss_sum) / n, "train_acc": float(self.correct) / n,
                "time_train": self.seconds, "images_per_s": self.n / max(self.seconds, 1e-9)}


def _progress(iterable, total: int, desc: str, enabled: bool, batch_size: int = 1):
    """A tqdm bar on stderr counting images (so its rate reads in img/s, with an ETA)."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, unit="img", unit_scale=batch_size,
                file=sys.stderr, dynamic_ncols=True)
