"""Fused multi-tensor SGD step with a per-tensor learning-rate scale.

One launch updates every tensor of a dtype: a packed int64 table gives each program its tensor
(addresses of param / grad / momentum buffer, size, lr scale, first-step flag) and its chunk, so
the per-tensor scale is read inside the kernel and costs no extra launch.

    fused_sgd_triton(...)     Triton kernel + host wrapper (CUDA, or CPU under TRITON_INTERPRET=1)
    fused_sgd_reference(...)  plain per-tensor torch loop, the definition the kernel must match

The update is torch.optim.SGD's, with lr replaced by ``lr * lr_scales[i]`` for tensor i::

    d = grad + weight_decay * param
    buf = d                                            (first step)
    buf = momentum * buf + (1 - dampening) * d         (later steps)
    d = d + momentum * buf if nesterov else buf        (when momentum != 0)
    param = param - lr * lr_scales[i] * d

Arithmetic is fp32 for fp32 / fp16 / bf16 tensors; buffers keep the parameter's dtype.
Every tensor of a call must share one device and dtype, and each grad and buffer must have its
parameter's strides with the parameter dense (callers re-lay them out; see ``dense_like``).
"""

from typing import NamedTuple

import torch

from . import TRITON_AVAILABLE

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEFAULT_BLOCK = 4096


def fused_sgd_reference(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor] | None,
    lr_scales: list[float],
    first_step: list[bool] | None,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
) -> None:
    """torch.optim.SGD's single-tensor loop, one lr per tensor; updates params and bufs in place."""
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        low_precision = param.dtype != torch.float32 and param.dtype != torch.float64
        p = param.float() if low_precision else param
        d = grad.to(p.dtype)
        if weight_decay != 0:
            d = d.add(p, alpha=weight_decay)
        if momentum != 0:
            buf = bufs[i].to(p.dtype) if low_precision else bufs[i]
            if first_step[i]:
                buf.copy_(d)
            else:
                buf.mul_(momentum).add_(d, alpha=1 - dampening)
            d = d.add(buf, alpha=momentum) if nesterov else buf
            if low_precision:
                bufs[i].copy_(buf)
        p.add_(d, alpha=-(lr * lr_scales[i]))
        if low_precision:
            param.copy_(p)


def is_dense(t: torch.Tensor) -> bool:
    """No gaps and no overlap: the elements fill exactly ``numel`` slots of storage, any order."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda s: s[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def dense_like(t: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``t`` itself if it shares ``param``'s strides, else a copy laid out like ``param``.

    The fused kernels walk the three tensors in storage order, which is only right when they
    share one layout (torch's own fused CPU SGD gets this wrong for mismatched layouts).
    """
    if t.stride() == param.stride():
        return t
    out = torch.empty_like(param, dtype=t.dtype)  # preserve_format: param's strides
    out.copy_(t)
    return out


# ----------------------------------------------------------------------------------------------
# Triton kernel (interpreted on the CPU when TRITON_INTERPRET=1 is set before this import).

# The packed int64 table (see build_table): six rows of n_tensors entries (param, grad and
# buffer addresses, numel, lr scale as float64 bits, first-step flag), then two rows of n_blocks
# (tensor index and start element of each program).


if TRITON_AVAILABLE:

    @triton.jit
    def _fused_sgd_kernel(
        table_ptr,
        n_tensors,
        n_blocks,
        lr,
        weight_decay,
        momentum,
        dampening,
        ELEM: tl.constexpr,
        HAS_WEIGHT_DECAY: tl.constexpr,
        HAS_MOMENTUM: tl.constexpr,
        NESTEROV: tl.constexpr,
        ALIGNED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        tensor = tl.load(table_ptr + 6 * n_tensors + pid)
        start = tl.load(table_ptr + 6 * n_tensors + n_blocks + pid)
        numel = tl.load(table_ptr + 3 * n_tensors + tensor)
        scale = tl.load(table_ptr + 4 * n_tensors + tensor).to(tl.float64, bitcast=True)
        param_ptr = tl.load(table_ptr + tensor).to(tl.pointer_type(ELEM))
        grad_ptr = tl.load(table_ptr + n_tensors + tensor).to(tl.pointer_type(ELEM))
        buf_ptr = tl.load(table_ptr + 2 * n_tensors + tensor).to(tl.pointer_type(ELEM))
        if ALIGNED:  # every address is 16-byte aligned (checked on the host): vector accesses
            param_ptr = tl.multiple_of(param_ptr, 16)
            grad_ptr = tl.multiple_of(grad_ptr, 16)
            buf_ptr = tl.multiple_of(buf_ptr, 16)
            start = tl.multiple_of(start, BLOCK)

        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < numel
        # Only a tensor's last block is partial; the others load and store without a mask,
        # which is what lets the compiler vectorise.
        full = start + BLOCK <= numel
        if full:
            p = tl.load(param_ptr + offsets).to(tl.float32)
            d = tl.load(grad_ptr + offsets).to(tl.float32)
        else:
            p = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
            d = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
        if HAS_WEIGHT_DECAY:
            d = d + weight_decay * p
        if HAS_MOMENTUM:
            first = tl.load(table_ptr + 5 * n_tensors + tensor)
            if full:
                b = tl.load(buf_ptr + offsets).to(tl.float32)
            else:
                b = tl.load(buf_ptr + offsets, mask=mask).to(tl.float32)
            # The buffer is uninitialised memory on the first step; where() never lets it through.
            b = tl.where(first != 0, d, momentum * b + (1.0 - dampening) * d)
            if full:
                tl.store(buf_ptr + offsets, b.to(ELEM))
            else:
                tl.store(buf_ptr + offsets, b.to(ELEM), mask=mask)
            if NESTEROV:
                d = d + momentum * b
            else:
                d = b
        p = p - (lr * scale.to(tl.float32)) * d
        if full:
            tl.store(param_ptr + offsets, p.to(ELEM))
        else:
            tl.store(param_ptr + offsets, p.to(ELEM), mask=mask)


def _triton_dtype(dtype: torch.dtype):
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[
        dtype
    ]


class KernelTable(NamedTuple):
    """What one launch needs besides the hyperparameters (see build_table)."""

    packed: torch.Tensor  # int64, on the tensors' device
    n_tensors: int
    n_blocks: int
    block: int
    aligned: bool  # every address 16-byte aligned: the kernel may use vector accesses


def build_table(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor] | None,
    lr_scales: list[float],
    first_step: list[bool] | None,
    block: int = DEFAULT_BLOCK,
) -> KernelTable:
    """Pack the per-tensor and per-program metadata into one int64 tensor on the params' device.

    One program updates ``block`` elements of one tensor. One host-to-device copy per call.
    """
    n = len(params)
    block_tensor: list[int] = []
    block_start: list[int] = []
    for i, p in enumerate(params):
        starts = range(0, p.numel(), block)
        block_tensor.extend([i] * len(starts))
        block_start.extend(starts)
    scale_bits = torch.tensor([float(s) for s in lr_scales], dtype=torch.float64).view(torch.int64)
    rows = [
        [p.data_ptr() for p in params],
        [g.data_ptr() for g in grads],
        [b.data_ptr() for b in bufs] if bufs else [0] * n,
        [p.numel() for p in params],
        scale_bits.tolist(),
        [int(bool(f)) for f in first_step] if first_step else [0] * n,
        block_tensor,
        block_start,
    ]
    aligned = all(address % 16 == 0 for row in rows[:3] for address in row) and block % 16 == 0
    flat = [v for row in rows for v in row]
    table = torch.tensor(flat, dtype=torch.int64)
    device = params[0].device
    if device.type != "cpu":
        table = table.pin_memory().to(device, non_blocking=True)
    return KernelTable(table, n, len(block_tensor), block, aligned)


def check_batch(params, grads, bufs) -> None:
    """Raise ValueError unless the tensors can be walked together in storage order.

    ``bufs`` is None when there is no momentum."""
    if not params:
        return
    device, dtype = params[0].device, params[0].dtype
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"fused SGD kernels take float32/float16/bfloat16 tensors, got {dtype}")
    for i, p in enumerate(params):
        others = [("grad", grads[i])] + ([("momentum buffer", bufs[i])] if bufs is not None else [])
        if p.device != device or p.dtype != dtype:
            raise ValueError("one fused SGD call takes tensors of one device and dtype")
        if not is_dense(p):
            raise ValueError(f"parameter {i} is not dense (strides {p.stride()})")
        for what, t in others:
            if t.shape != p.shape or t.stride() != p.stride() or t.dtype != dtype:
                raise ValueError(
                    f"{what} {i} must have the shape, strides and dtype of its parameter "
                    f"(got {tuple(t.shape)} {t.stride()} {t.dtype}, param {tuple(p.shape)} "
                    f"{p.stride()} {dtype}); lay it out with dense_like()"
                )


def fused_sgd_triton(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    bufs: list[torch.Tensor] | None,
    lr_scales: list[float],
    first_step: list[bool] | None,
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    block: int = DEFAULT_BLOCK,
    table: KernelTable | None = None,
) -> None:
    """One Triton launch updating every tensor (one device and dtype) in place.

    ``table`` is a cached result of ``build_table`` for these exact tensors, scales and flags
    (whoever built it ran ``check_batch``); without it the tensors are checked and the table is
    built here.
    """
    if not TRITON_AVAILABLE:
        raise RuntimeError("triton is not installed")
    if not params:
        return
    if table is None:
        check_batch(params, grads, bufs)
        table = build_table(params, grads, bufs, lr_scales, first_step, block)
    if table.n_blocks == 0:
        return
    _fused_sgd_kernel[(table.n_blocks,)](
        table.packed,
        table.n_tensors,
        table.n_blocks,
        float(lr),
        float(weight_decay),
        float(momentum),
        float(dampening),
        ELEM=_triton_dtype(params[0].dtype),
        HAS_WEIGHT_DECAY=weight_decay != 0,
        HAS_MOMENTUM=momentum != 0,
        NESTEROV=bool(nesterov),
        ALIGNED=table.aligned,
        BLOCK=table.block,
    )
