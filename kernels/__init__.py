"""Triton kernels (imported as ``st_fast.kernels``).

One file per op: the Triton kernel, its host wrapper and a plain torch reference beside it.
Triton is optional: ``TRITON_AVAILABLE`` says whether it imported. Which kernel runs is decided
by the fast-path registry (st_fast.backends) from the two questions below, and every caller
falls back to the torch reference when Triton cannot run on its tensors.
"""

from __future__ import annotations

import os

try:  # triton ships with CUDA builds of torch; CPU-only installs may lack it
    import triton  # noqa: F401

    TRITON_AVAILABLE = True
    _IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - depends on the install
    TRITON_AVAILABLE = False
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def interpret_mode() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (slow; tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_missing() -> str | None:
    """Why Triton cannot be used here at all; None when it imported."""
    return None if TRITON_AVAILABLE else f"triton is not importable ({_IMPORT_ERROR})"


def triton_device_reason(device_type: str) -> str | None:
    """Why Triton kernels cannot take tensors of this device type; None if they can."""
    if device_type == "cuda" or (device_type == "cpu" and interpret_mode()):
        return None
    return f"needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU), got {device_type}"


def triton_usable(device) -> bool:
    """Can a Triton kernel run on tensors of ``device``?"""
    import torch

    return triton_missing() is None and triton_device_reason(torch.device(device).type) is None
