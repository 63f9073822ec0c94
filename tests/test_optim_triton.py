"""The Triton backend of FusedSGD on the CPU under TRITON_INTERPRET=1 (GPU runs: test_optim.py).

The interpreted checks run once, in a fresh interpreter (``run_interpreted``); each test below
asserts on its part of the measurements. Skipped only where Triton does not import.
"""

from __future__ import annotations

import pytest
import torch
from st_fast.kernels import triton_missing
from st_fast.kernels.fused_sgd import build_table, fused_sgd_reference, fused_sgd_triton

from st_fast.optim import FusedSGD

from .helpers import run_interpreted
from .helpers_optim import HYPER, TOL, max_diff, random_grads, run_pair, set_grads

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason=str(triton_missing()))

# The interpreter costs ~1 ms per program (~30 programs a step here): 50 steps of the most
# general update, fewer for nesterov.
PAIRS = {"dampening": (HYPER[3], 50), "nesterov": (HYPER[4], 15)}
CHUNK_CASES = [
    (dtype, momentum, aligned)
    for dtype in ("float32", "bfloat16", "float16")
    for momentum in (0.0, 0.9)
    for aligned in (True, False)
]


def _pair_checks() -> dict:
    out = {}
    for name, (hyper, steps) in PAIRS.items():
        model, twin, fused, reference = run_pair("triton", hyper, steps=steps)
        bufs = [fused.state[p]["momentum_buffer"] for p in model.parameters()]
        twin_bufs = [reference.state[p]["momentum_buffer"] for p in twin.parameters()]
        out[name] = {
            "backend": fused.backend,
            "params": max_diff(model.parameters(), twin.parameters()),
            "bufs": max_diff(bufs, twin_bufs),
        }
    skip = {0, 5, 28}
    model, twin, fused, _ = run_pair(
        "triton", (0.9, 0.1, False, 5e-4), steps=8, layouts=True, skip=skip
    )
    out["layouts"] = {
        "params": max_diff(model.parameters(), twin.parameters()),
        "skipped_have_no_buffer": all(
            "momentum_buffer" not in fused.state[p]
            for i, p in enumerate(model.parameters())
            if i in skip
        ),
        "zero_scale_unchanged": all(  # the stem's scale is 0
            torch.equal(p, q) for p, q in zip(model.stem.parameters(), twin.stem.parameters())
        ),
    }
    return out


def _chunk_check(dtype, momentum: float, aligned: bool) -> dict:
    """Small blocks so tensors span several programs (full and partial); mixed first steps."""
    gen = torch.Generator().manual_seed(1)
    sizes = [1, 63, 64, 65, 300]

    def tensors():  # misaligned: views one element into their storage
        skip = 0 if aligned else 1
        return [torch.randn(n + skip, generator=gen).to(dtype)[skip:] for n in sizes]

    params, grads, bufs = tensors(), tensors(), tensors()
    scales = [0.0, 0.5, 1.0, 2.0, 0.25]
    first = [True, False, True, False, False]
    expected = [t.clone() for t in params], [b.clone() for b in bufs]
    hyper = dict(lr=0.1, weight_decay=1e-2, momentum=momentum, dampening=0.1)
    if momentum == 0:
        bufs, first = None, None
    fused_sgd_reference(expected[0], grads, expected[1], scales, first, **hyper)
    table = build_table(params, grads, bufs, scales, first, block=64)
    fused_sgd_triton(params, grads, bufs, scales, first, table=table, **hyper)
    tol = 1e-6 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    pairs = zip(params + (bufs or []), expected[0] + (expected[1] if bufs else []))
    return {
        "n_blocks": table.n_blocks,
        "aligned": table.aligned,
        # assert_close's rule |got - want| <= atol + rtol |want|, as a ratio (<= 1 passes)
        "error_ratio": max(
            ((g.float() - w.float()).abs() / (tol + tol * w.float().abs())).max().item()
            for g, w in pairs
        ),
    }


def _table_check() -> bool:
    params = [torch.nn.Parameter(torch.randn(10)) for _ in range(3)]
    opt = FusedSGD(params, lr=0.1, momentum=0.9, backend="triton")
    for step in range(3):
        set_grads(params, random_grads(params, seed=step))  # fresh grad tensors each step
        opt.step()
    ((key, _),) = opt._tables.values()
    return key[1] == tuple(p.grad.data_ptr() for p in params)


def interpreted_checks() -> dict:
    """Everything that launches the kernel; runs under TRITON_INTERPRET=1 (see helpers)."""
    chunks = {
        "/".join(map(str, case)): _chunk_check(getattr(torch, case[0]), *case[1:])
        for case in CHUNK_CASES
    }
    return {"pairs": _pair_checks(), "chunks": chunks, "table_rebuilt": _table_check()}


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted("tests.test_optim_triton:interpreted_checks")


@pytest.mark.parametrize("name", PAIRS)
def test_triton_matches_torch_sgd_per_unit_groups(interpreted, name):
    result = interpreted["pairs"][name]
    assert result["backend"] == "triton"
    assert result["params"] <= TOL and result["bufs"] <= TOL


def test_triton_layouts_missing_grads_and_zero_scale(interpreted):
    result = interpreted["pairs"]["layouts"]
    assert result["params"] <= TOL
    assert result["skipped_have_no_buffer"] and result["zero_scale_unchanged"]


@pytest.mark.parametrize("dtype,momentum,aligned", CHUNK_CASES)
def test_kernel_matches_reference_across_chunks(interpreted, dtype, momentum, aligned):
    result = interpreted["chunks"][f"{dtype}/{momentum}/{aligned}"]
    assert result["n_blocks"] == 1 + 1 + 1 + 2 + 5  # programs: ceil(n / 64) per tensor
    assert result["aligned"] == aligned
    assert result["error_ratio"] <= 1.0


def test_table_is_rebuilt_when_grads_move(interpreted):
    assert interpreted["table_rebuilt"]


def test_kernel_compiles_for_a_gpu_target():
    """The real (not interpreted) kernel compiles to PTX for sm_90 here, no GPU needed; with
    aligned addresses its full blocks use 16-byte vector loads and stores."""
    import re

    import triton
    import triton.language as tl
    from st_fast.kernels.fused_sgd import _fused_sgd_kernel
    from triton.backends.compiler import GPUTarget

    signature = dict(
        table_ptr="*i64",
        n_tensors="i32",
        n_blocks="i32",
        lr="fp32",
        weight_decay="fp32",
        momentum="fp32",
        dampening="fp32",
    )
    constants = dict(
        ELEM=tl.bfloat16,
        HAS_WEIGHT_DECAY=True,
        HAS_MOMENTUM=True,
        NESTEROV=True,
        ALIGNED=True,
        BLOCK=4096,
    )
    signature.update({name: "constexpr" for name in constants})
    source = triton.compiler.ASTSource(
        fn=_fused_sgd_kernel, signature=signature, constexprs=constants
    )
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
    except (FileNotFoundError, RuntimeError) as exc:  # only a missing ptxas may skip
        if "ptxas" in str(exc):
            pytest.skip(f"no ptxas in this triton install: {exc}")
        raise
    ptx = compiled.asm["ptx"]
    assert re.search(r"ld\.global(\.\w+)*\.v4", ptx) and re.search(r"st\.global(\.\w+)*\.v4", ptx)


def test_kernel_rejects_mismatched_layouts():
    p = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="strides"):  # checked on the host, before a launch
        fused_sgd_triton([p], [torch.zeros(3, 4).t()], None, [1.0], None, lr=0.1)
