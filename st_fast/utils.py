"""Small shared helpers: devices, seeding, atomic file writes, progress lines."""

from __future__ import annotations

import contextlib
import os
import random
import time
from pathlib import Path

import numpy as np
import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; anything else as torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import UserError

        raise UserError(f"device {device!r} asked for, but CUDA is not available; use --device cpu")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# file helpers live in st_fast.files; re-exported here for existing callers
from .files import (  # noqa: E402,F401
    atomic_path,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)


class Eta:
    """Time left from a smoothed rate: an exponential moving average of the seconds per unit
    (epoch), so a machine that becomes busy (or idle) moves the estimate within a few units,
    where a cumulative average would lag for the rest of the run."""

    def __init__(self, smoothing: float = 0.5):
        self.smoothing = smoothing
        self.per_unit: float | None = None
        self._last = time.perf_counter()

    def tick(self, units: int = 1) -> None:
        now = time.perf_counter()
        sample = (now - self._last) / max(1, units)
        self._last = now
        self.per_unit = sample if self.per_unit is None else (
            self.smoothing * sample + (1 - self.smoothing) * self.per_unit)

    def left(self, units_left: int) -> str:
        return format_duration((self.per_unit or 0.0) * max(0, units_left))


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Stopwatch:
    """Wall time of a region; synchronises CUDA so device work is counted honestly."""

    def __init__(self, device: torch.device | None = None):
        self.device = device
        self.elapsed = 0.0

    def __enter__(self):
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._sync()
        self.elapsed += time.perf_counter() - self._t0

    def _sync(self):
        if self.device is not None and torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)


def _widest_capability(isa: list[str]) -> str:
    return "AVX512" if "avx512f" in isa else "AVX2" if "avx2" in isa else "DEFAULT"


def effective_isa(machine: dict) -> list[str]:
    """The instruction sets a result's kernels could use: the CPU's (``machine_info``), less
    what an ISA limit in force excluded (both torch's and oneDNN's must be limited to count)."""
    isa = list(machine.get("cpu_isa") or [])
    limit = machine.get("kernel_isa")
    if limit and limit.get("aten") == "AVX2" and str(limit.get("dnnl") or "").upper().startswith("AVX2"):
        isa = [f for f in isa if f in ("avx2", "fma")]
    return isa


def machine_type(machine: dict | None) -> str:
    """A result's machine type, the unit within which CPU results are bit-reproducible and so
    may be paired: the CPU model and the instruction sets its kernels could use."""
    if not machine or not machine.get("cpu"):
        return "unrecorded"
    isa = effective_isa(machine)
    return f"{machine['cpu']} ({'+'.join(isa) if isa else 'no AVX2'})"


def machine_info(device: torch.device | None = None) -> dict:
    """What a result was computed on. CPU training is bit-reproducible on one machine type but
    not across CPU types (different SIMD kernels round differently), so results record it."""
    import platform

    cpu, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    info = {"cpu": cpu, "cpu_isa": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}
    # the kernels' ISA limit, when set (ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 make an
    # AVX-512 machine compute what an AVX2-only one of its type does: docs/bench.md)
    capability, dnnl = torch.backends.cpu.get_cpu_capability(), os.environ.get("DNNL_MAX_CPU_ISA")
    if dnnl or capability != _widest_capability(info["cpu_isa"]):
        info["kernel_isa"] = {"aten": capability, "dnnl": dnnl}
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
