"""Natural training (NT) on device-resident data; the base that the ST engine extends.

One ``Trainer`` owns the model, the optimizer (one learning-rate multiplier per unit), the
device-resident loaders and the run directory:

    run_dir/config.json     the configuration
    run_dir/history.csv     one row per epoch (also history.json)
    run_dir/checkpoint.pt   written atomically after every epoch; ``resume()`` continues from it
    run_dir/plots/*.png     accuracy curves (ST adds ACM curves and a multiplier heatmap)

Determinism: the model is initialised from ``seed``; each epoch's shuffling and augmentation
draw from a generator seeded by (seed, epoch), so a resumed run replays exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import DeviceLoader, ImageDataset, load_dataset
from .errors import UserError
from .models import UnitNet, build_model
from .utils import (
    Eta,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    resolve_device,
    seed_everything,
)

CHECKPOINT = "checkpoint.pt"
# Version 2: loads with weights_only=True and records the run it belongs to ("run"), so a
# resume can refuse a changed setting. Earlier checkpoints recorded too little to tell.
CHECKPOINT_FORMAT = "st_fast-checkpoint-2"
# TrainConfig fields that do not change a run's result (where the data lives, how it got
# there, the device string: the resolved device type is compared instead)
NOT_RESULT_FIELDS = ("device", "data_root", "download", "poison")


def prepare_data(cfg: TrainConfig, with_val: bool = False):
    """Load, poison and subset the data a config names: (train, test) or (train, test, val).

    val: ``cfg.val_size`` *clean* training images (balanced over classes, seeded), held out of
    the training set; the only data ST's hyperparameters may be tuned on (never the test set).
    If the poison file was made for a subset of the training set (its meta "subset"), training
    uses exactly that subset.
    """
    clean = load_dataset(cfg.dataset, "train", root=cfg.data_root, download=cfg.download)
    test = load_dataset(cfg.dataset, "test", root=cfg.data_root, download=cfg.download)
    train, pool = clean, torch.arange(len(clean))
    if cfg.poison:
        from .attacks import load as load_poison

        poisoned = load_poison(cfg.poison, dataset=clean)
        train = clean.with_images(poisoned.images, poison=poisoned.meta)
        if poisoned.meta.get("subset") is not None:
            pool = torch.as_tensor(poisoned.meta["subset"], dtype=torch.long)
    for name, size, n in (("train_subset", cfg.train_subset, len(clean) - cfg.val_size),
                          ("test_subset", cfg.test_subset, len(test)), ("val_size", cfg.val_size, len(clean) - 1)):
        if size is not None and size > n:
            raise UserError(f"{name} must be at most {n} for {cfg.dataset} ({len(clean)} training, "
                            f"{len(test)} test images), got {size}")
    g = torch.Generator().manual_seed(cfg.seed)
    val_idx = torch.empty(0, dtype=torch.long)
    if cfg.val_size:
        per_class = -(-cfg.val_size // clean.num_classes)
        val_idx = clean.subset(pool).per_class_indices(per_class, g)[: cfg.val_size]
        val_idx = pool[val_idx]
        pool = pool[~torch.isin(pool, val_idx)]
    pool = pool[torch.randperm(len(pool), generator=g)]
    if cfg.train_subset:
        pool = pool[: cfg.train_subset]
    train = train.subset(pool)
    if cfg.test_subset:
        test = test.subset(torch.randperm(len(test), generator=g)[: cfg.test_subset])
    if with_val:
        return train, test, clean.subset(val_idx)
    return train, test


def cosine_lr(base_lr: float, epoch: int, total: int) -> float:
    """Per-epoch cosine decay from base_lr (epoch 0) towards 0 (epoch ``total``)."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, total)))


class UnitSGD:
    """SGD with one learning-rate multiplier per model unit.

    Uses st_fast.optim.FusedSGD (multipliers applied inside one multi-tensor step) when it is
    available, else torch.optim.SGD with one param group per unit.
    """

    def __init__(self, model: UnitNet, cfg: TrainConfig):
        self.units = model.units()
        self.backend = "torch"
        opt = None
        if cfg.optimizer in ("auto", "fused"):
            try:
                from .optim import FusedSGD
            except ImportError:
                if cfg.optimizer == "fused":
                    raise UserError("optimizer 'fused' asked for but st_fast.optim is unavailable") from None
            else:
                opt = FusedSGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
                self.backend = f"fused-{opt.backend}"
        if opt is None:
            groups = [{"params": list(u.parameters())} for u in self.units]
            opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        self.optimizer = opt

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


class Trainer:
    """Natural training; subclasses override ``run_epoch`` hooks (see st_fast.st)."""

    method = "nt"

    def __init__(self, cfg: TrainConfig, train_set: ImageDataset, test_set: ImageDataset | None,
                 run_dir: str | Path | None = None, progress: bool = True, model: UnitNet | None = None,
                 writer: str = "api", run_extra: dict | None = None):
        self.cfg = cfg.validate()
        # who writes the run directory ("train", "demo", "tune", "bench", "api") and what else
        # defines the run (a bench cell's defence); both are checked on resume
        self.writer = writer
        self.run_extra = dict(run_extra or {})
        from .distributed import setup

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
        self.unit_scales = [1.0] * self.num_units
        self.augment = self._make_augment() if cfg.cg else None
        # the module that runs training steps: DDP-wrapped under torchrun, else the model itself
        self.step_model = self._wrap_ddp() if self.dist.enabled else self.model
        self.loader = DeviceLoader(train_set.images, train_set.labels, cfg.batch_size, shuffle=True,
                                   drop_last=len(train_set) > cfg.batch_size,
                                   rank=self.dist.rank, world=self.dist.world,
                                   crop_padding=cfg.crop_padding, flip=cfg.flip, seed=cfg.seed,
                                   device=self.device, channels_last=self.channels_last,
                                   transform=self.augment)
        self.epoch = 0          # epochs completed
        self.history: list[dict] = []
        # Optional per-batch hook (defences: mixup/cutmix/cutout, adversarial training, ...):
        # (x, y) -> (x, y) where the returned y may be soft targets of shape (B, num_classes).
        self.batch_transform = None

    # ------------------------------------------------------------------ pieces
    def _wrap_ddp(self):
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids)

    def _make_augment(self):
        try:
            from .augment import ColorGray
        except ImportError as err:
            raise UserError("CG augmentation needs st_fast.augment, which is unavailable") from err
        return ColorGray(seed=self.cfg.seed)

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def lr_for_epoch(self, epoch: int) -> float:
        return cosine_lr(self.cfg.lr, epoch, self.cfg.epochs)

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
        self.before_steps(scales)
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
        self.after_steps()

    def before_steps(self, scales: list[float]) -> None:
        """Hook run before a block of optimizer steps (ST freezes BatchNorm statistics here)."""

    def after_steps(self) -> None:
        """Hook run after a block of optimizer steps."""

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
                "train": train, **self.run_extra}

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

    def snapshot(self) -> dict:
        """An in-memory copy of the full training state (for rollbacks; no disk I/O)."""
        return copy.deepcopy(self.state_dict())

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
        from .files import load_torch_file

        path = self.run_dir / CHECKPOINT if self.run_dir else None
        if path is None or not path.exists():
            if require:
                raise UserError(f"{path or 'no run directory'}: no checkpoint to resume; "
                                "drop --resume to start a new run")
            return False
        check_same_run(path, peek_checkpoint(self.run_dir, self.writer), self.run_record())
        self.load_state_dict(load_torch_file(path, "st_fast checkpoint", map_location=self.device))
        return True

    # ------------------------------------------------------------------ loop
    def fit(self, stop_after: int | None = None) -> list[dict]:
        """Train until ``cfg.epochs`` epochs are done; returns the history rows.

        ``stop_after`` ends early after that many completed epochs (the schedule still spans
        ``cfg.epochs``), as an interruption would; ``resume`` continues from there.
        """
        self._write_config()
        eta = Eta()
        end = self.cfg.epochs if stop_after is None else min(stop_after, self.cfg.epochs)
        while self.epoch < end:
            row = self.run_epoch(self.epoch)
            self.epoch += 1
            self.history.append(row)
            self.save_checkpoint()
            self.write_history()
            eta.tick()
            self.log(self._summary(row) + f"  eta {eta.left(self.cfg.epochs - self.epoch)}")
        if self.epoch >= self.cfg.epochs:
            self.finish()
        return self.history

    def run_epoch(self, epoch: int) -> dict:
        lr = self.lr_for_epoch(epoch)
        stats = self.train_epoch(epoch, lr, self.unit_scales)
        t0 = time.perf_counter()
        test_acc = self.evaluate()
        return {"epoch": epoch + 1, "lr": lr, **stats, "test_acc": test_acc,
                "time_eval": time.perf_counter() - t0}

    def finish(self) -> None:
        """Write plots (subclasses add their own)."""
        if self.writes_files and self.history:
            from .plots import plot_accuracy

            plot_accuracy(self.history, self.run_dir / "plots" / "accuracy.png", title=self.describe())

    def describe(self) -> str:
        poison = self.train_set.meta.get("poison", {}).get("attack") if self.train_set.meta else None
        return f"{self.method.upper()} {self.cfg.arch} on {self.cfg.dataset}" + (f" ({poison})" if poison else "")

    def _summary(self, row: dict) -> str:
        return (f"[{self.method}] epoch {row['epoch']:>3}/{self.cfg.epochs}  lr {row['lr']:.4f}  "
                f"loss {row['train_loss']:.3f}  train {row['train_acc']:.3f}  test {row['test_acc']:.3f}  "
                f"{row['images_per_s']:.0f} img/s")

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


def peek_checkpoint(run_dir: Path, writer: str) -> dict | None:
    """The run record of ``run_dir``'s checkpoint (None if there is none), refusing, before any
    work, a file that is not a current st_fast checkpoint or was written by another command."""
    from .files import load_torch_file

    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    sd = load_torch_file(path, "st_fast checkpoint", hint="delete it to start over, or use another --out")
    if not isinstance(sd, dict) or sd.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not an st_fast checkpoint of format {CHECKPOINT_FORMAT} (an older "
                        "version's checkpoint records too little of its run to be resumed safely); "
                        "delete it to start over, or use another --out")
    record = sd.get("run", {})
    if record.get("writer") != writer:
        raise UserError(f"{path} belongs to another run (writer {record.get('writer')!r} -> {writer!r}: "
                        f"written by another command); use another --out")
    return record


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_same_run(path, old: dict, new: dict) -> None:
    """One line naming every field whose value differs between a checkpoint and this run."""
    a, b = _flat(old), _flat(new)
    diffs = [f"{k.split('.', 1)[-1] if k.startswith(('train.', 'st.')) else k} "
             f"{a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        raise UserError(f"{path} belongs to another run ({'; '.join(diffs)}); resume with the same "
                        "settings, or start in another --out")


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


def rows_to_csv(rows: list[dict]) -> str:
    """CSV text of dict rows; list values are joined with ';' so each row stays one line."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (";".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in val)
                             if isinstance(val, (list, tuple)) else val) for k, val in r.items()})
    return buf.getvalue()


def _progress(iterable, total: int, desc: str, enabled: bool, batch_size: int = 1):
    """A tqdm bar on stderr counting images (so its rate reads in img/s, with an ETA)."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, unit="img", unit_scale=batch_size,
                file=sys.stderr, dynamic_ncols=True)
