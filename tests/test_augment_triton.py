"""The fused Triton CG kernel agrees with the torch backend (TRITON_INTERPRET=1, on the CPU).

The interpreted checks run once in a fresh interpreter (``run_interpreted``: Triton decides at
decoration time whether a kernel is interpreted); skipped only where Triton does not import.
"""

from __future__ import annotations

import os

import pytest
import torch
from st_fast.kernels import TRITON_AVAILABLE

from .helpers import run_interpreted

# (dtype, channels, H, W, block): block < H*W exercises the chunk loop
CASES = [
    ("float32", 3, 5, 7, None), ("float32", 3, 6, 6, 16),
    ("uint8", 3, 5, 7, None), ("uint8", 3, 6, 6, 16),
    ("float32", 1, 4, 5, None), ("uint8", 1, 6, 6, 16),
    ("float16", 3, 4, 4, None),
]  # fmt: skip
TOL = {"uint8": 1, "float16": 2e-3, "float32": 1e-5}


def interpreted_checks() -> dict:
    """Kernel vs torch backend per case, and through the public API (run interpreted)."""
    from st_fast.kernels.color_gray import color_gray_torch, color_gray_triton

    from st_fast.augment import ColorGray

    torch.manual_seed(0)
    cg = ColorGray(seed=3)
    out = {}
    for dtype_name, channels, h, w, block in CASES:
        dtype = getattr(torch, dtype_name)
        x = torch.rand(10, channels, h, w)
        x[:, :, 0, 0] = 1.0
        x[:, :, 0, 1] = 0.5
        x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
        params = cg.sample_params(10).for_channels(channels)
        got = color_gray_triton(x, params.factors, params.order, params.gray, block=block)
        ref = color_gray_torch(x, params.factors, params.order, params.gray)
        out[repr((dtype_name, channels, h, w, block))] = {
            "same_dtype_and_shape": got.dtype == dtype and got.shape == x.shape,
            "diff": (got.double() - ref.double()).abs().max().item(),
        }
    x = torch.rand(6, 3, 4, 4)
    cg_triton, cg_torch = ColorGray(backend="triton", seed=1), ColorGray(backend="torch", seed=1)
    out["api"] = {"diff": (cg_triton(x) - cg_torch(x)).abs().max().item(), "backend": None}
    out["api"]["backend"] = cg_triton.backend
    return out


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.test_augment_triton:interpreted_checks")


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_triton_kernel_matches_torch_backend_interpreted(interpreted, case):
    result = interpreted[repr(case)]
    assert result["same_dtype_and_shape"]
    assert result["diff"] <= TOL[case[0]]


def test_public_api_runs_the_kernel_interpreted(interpreted):
    assert interpreted["api"]["backend"] == "triton" and interpreted["api"]["diff"] < 1e-5


@pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton is not installed")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="kernel is interpreted")
def test_triton_kernel_compiles_for_an_h100_without_one():
    """The interpreter does not type-check control flow; compiling for sm_90 does (no GPU needed)."""
    import triton
    from st_fast.kernels.color_gray import _color_gray_kernel
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {"x_ptr": "*u8", "out_ptr": "*u8", "factor_ptr": "*fp32", "order_ptr": "*i32",
                 "gray_ptr": "*i32", "HW": "i32", "C": "constexpr", "IS_UINT8": "constexpr",
                 "BLOCK": "constexpr"}  # fmt: skip
    source = ASTSource(
        fn=_color_gray_kernel,
        signature=signature,
        constexprs={"C": 3, "IS_UINT8": True, "BLOCK": 1024},
    )
    try:
        kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    except (FileNotFoundError, RuntimeError) as exc:  # no ptxas in this install
        if "ptxas" in str(exc):
            pytest.skip(f"cannot compile for CUDA here: {exc}")
        raise
    assert "fma" in kernel.asm["ptx"]
