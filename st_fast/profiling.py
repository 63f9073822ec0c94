"""Where does training time go? ``profile_training`` runs a few real optimizer steps of a
trainer under torch.profiler and writes, into ``out_dir``:

    trace.json            Chrome trace (open in chrome://tracing or https://ui.perfetto.dev)
    profile_summary.txt   the top operators by self CPU time (and by self CUDA time on a GPU)

The steps are the trainer's own ``train_steps`` (same loader, augmentation, batch_transform,
autocast and optimizer), after a few unprofiled warm-up steps. By default the trainer's full
state (model, optimizer, RNG) is restored afterwards, so profiling does not change the run.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from .engine import EpochMeter
from .errors import UserError
from .utils import atomic_path, atomic_write_text

TRACE = "trace.json"
SUMMARY = "profile_summary.txt"


def profile_training(trainer, steps: int = 20, out_dir: str | Path = "profile", warmup: int = 3,
                     epoch: int | None = None, row_limit: int = 25, restore: bool = True) -> dict:
    """Profile ``steps`` training steps of ``trainer`` (a Trainer or Trainer).

    Returns {"trace", "summary": paths, "steps", "images_per_s", "device", "top_ops": [...]}
    where top_ops lists (name, self_cpu_ms, self_device_ms, calls) by self CPU time.
    """
    if steps < 1 or warmup < 0:
        raise UserError(f"profiling needs steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    n_batches = len(trainer.loader)
    if n_batches < 1:
        raise UserError("profiling needs a training set with at least one batch")
    warmup = min(warmup, max(0, n_batches - 1))
    steps = min(steps, n_batches - warmup)   # one epoch's batches at most: no epoch boundary inside
    out_dir = Path(out_dir)
    epoch = trainer.epoch if epoch is None else epoch
    lr, scales = trainer.lr_for_epoch(epoch), list(trainer.unit_scales)
    snapshot = trainer.snapshot() if restore else None
    progress, trainer.progress = trainer.progress, False
    cuda = trainer.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    try:
        if warmup:
            trainer.train_steps(epoch, lr, scales, 0, warmup, EpochMeter(trainer.device))
        meter = EpochMeter(trainer.device)
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
            with torch.profiler.record_function("st_fast.train_steps"):
                trainer.train_steps(epoch, lr, scales, warmup, warmup + steps, meter)
        seconds = time.perf_counter() - t0
    finally:
        trainer.progress = progress
        if snapshot is not None:
            trainer.load_state_dict(snapshot)

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / TRACE) as tmp:
        prof.export_chrome_trace(str(tmp))
    averages = prof.key_averages()
    images_per_s = meter.n / max(seconds, 1e-9)
    header = [
        f"st_fast profile: {steps} training steps (after {warmup} warm-up steps), epoch {epoch + 1}",
        f"device {trainer.device} ({_device_name(trainer.device)}), torch {torch.__version__}, "
        f"python {platform.python_version()}",
        f"arch {trainer.cfg.arch}, batch {trainer.cfg.batch_size}, amp {trainer.amp_dtype}, "
        f"channels_last {trainer.channels_last}, optimizer {trainer.opt.backend}, "
        f"batch_transform {'yes' if trainer.batch_transform is not None else 'no'}",
        f"{meter.n} images in {seconds:.3f} s under the profiler = {images_per_s:.0f} img/s "
        "(profiler overhead included; benchmarks/ has the clean figures)",
        "",
    ]
    sections = [("self CPU time", "self_cpu_time_total")]
    if cuda:
        sections.append(("self CUDA time", _device_sort_key()))
    body = []
    for title, key in sections:
        body += [f"== top {row_limit} operators by {title} ==",
                 averages.table(sort_by=key, row_limit=row_limit, max_name_column_width=60), ""]
    atomic_write_text(out_dir / SUMMARY, "\n".join(header + body))
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:row_limit]
    return {
        "trace": str(out_dir / TRACE), "summary": str(out_dir / SUMMARY), "steps": steps,
        "images_per_s": images_per_s, "device": str(trainer.device),
        "top_ops": [(e.key, e.self_cpu_time_total / 1e3, _self_device_us(e) / 1e3, e.count) for e in top],
    }


def _device_sort_key() -> str:
    # torch >= 2.4 names it self_device_time_total; older releases self_cuda_time_total
    from torch.autograd.profiler_util import FunctionEventAvg

    return "self_device_time_total" if hasattr(FunctionEventAvg, "self_device_time_total_str") else "self_cuda_time_total"


def _self_device_us(event) -> float:
    return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)) or 0.0)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()
