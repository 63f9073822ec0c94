"""FusedSGD: torch.optim.SGD with a per-tensor learning-rate scale, in one fused step.

ST trains unit l with lr = eta_t * lambda_l. As torch param groups that is one group per unit,
and torch's optimizer pays its per-group loop (and launches) for every unit. FusedSGD keeps one
group and a list ``lr_scale`` (one float per parameter tensor) beside the group's ``lr``; the
step applies ``lr * lr_scale[i]`` to tensor i inside one fused update.

The result is that of torch.optim.SGD with one group per unit and lr = lr * scale: weight decay
added to the gradient, the momentum buffer set to the gradient on its first step, dampening,
nesterov, parameters without a gradient skipped. A scale of 0 behaves as torch with lr = 0: the
parameter keeps its value and the momentum buffer is still updated. LR schedulers act on
``param_groups[i]["lr"]``; ``lr_scale`` lives in the param group, so state_dict() carries it.

Backends (the fast path ``FUSED_SGD``, see st_fast.backends; ``backend=``; "auto" picks the
first that works for the parameters' device):
    triton       one Triton launch per dtype, the scale read inside the kernel (CUDA)
    cuda         csrc/ multi-tensor-apply CUDA extension, built on demand (CUDA)
    torch_fused  torch._fused_sgd_ (torch's C++/CUDA kernel) once per (dtype, distinct lr)
                 batch; the CPU default (on CPU, tensors under FUSED_MIN_NUMEL values are
                 updated by a worker with a one-thread intra-op team, see one_thread.py)
    foreach      torch._foreach_* ops (several passes over memory); works everywhere
    reference    plain per-tensor loop (kernels/fused_sgd.py), the definition of the update
fp16 / bf16 parameters are updated with fp32 arithmetic by every backend. A batch a backend
does not take (float64 for the kernels, non-dense layouts) goes to its fallback.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from st_fast.backends import FastPath, only_on
from st_fast.errors import UserError
from st_fast.kernels import triton_device_reason, triton_missing
from st_fast.kernels.fused_sgd import (
    SUPPORTED_DTYPES,
    build_table,
    check_batch,
    dense_like,
    fused_sgd_reference,
    fused_sgd_triton,
    is_dense,
)

from . import cuda_ext
from .one_thread import run_on_one_thread


def _kernel_takes(dtype, dense: bool) -> str | None:
    if dtype not in SUPPORTED_DTYPES:
        return f"the kernel takes float32/float16/bfloat16, not {dtype}"
    return None if dense else "the kernel walks storage order: dense layouts only"


FUSED_SGD = FastPath(
    "fused-sgd",
    "FusedSGD",
    auto={
        "cuda": ("triton", "cuda", "torch_fused", "foreach"),
        "cpu": ("torch_fused", "foreach"),
        "*": ("torch_fused", "foreach"),
    },
)
FUSED_SGD.add(
    "triton",
    "one Triton launch per dtype, the lr scale read in the kernel (kernels/fused_sgd.py)",
    detect=triton_missing,
    runs_on=triton_device_reason,
    takes=_kernel_takes,
    fallback="torch_fused",
)
FUSED_SGD.add(
    "cuda",
    "multi-tensor-apply CUDA extension (csrc/fused_sgd*.cu); built on first use",
    detect=cuda_ext.detect,
    runs_on=only_on("cuda"),
    takes=_kernel_takes,
    fallback="torch_fused",
    built=True,
)
FUSED_SGD.add(
    "torch_fused",
    "torch._fused_sgd_ once per (dtype, lr) batch",
    detect=lambda: None if hasattr(torch, "_fused_sgd_") else "this torch has no _fused_sgd_",
    takes=lambda dtype, dense: None if dense else "dense layouts only",
    fallback="reference",
)
FUSED_SGD.add("foreach", "torch._foreach_* ops (several passes over memory)")
FUSED_SGD.add("reference", "plain per-tensor loop (kernels/fused_sgd.py): the definition")
BACKENDS = tuple(FUSED_SGD.backends)


def explain_backends(device: str | torch.device = "cpu") -> dict[str, str | None]:
    """Each backend -> None if it can run on ``device`` here, else the reason it cannot."""
    return FUSED_SGD.explain(device)


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on ``device`` here, in the order "auto" tries them (then the rest)."""
    return FUSED_SGD.available(device)


def _float_list(values, what: str) -> list[float]:
    """A 1-D sequence / tensor / array of numbers as Python floats, each finite and >= 0."""
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise UserError(f"{what} must be 1-D, got a tensor of shape {tuple(values.shape)}")
        values = values.tolist()
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise UserError(f"{what} must be a flat sequence of numbers ({exc})") from exc
    for i, v in enumerate(out):
        if not math.isfinite(v) or v < 0:
            raise UserError(f"{what}[{i}] = {v}: learning-rate scales must be finite and >= 0")
    return out


@dataclass
class _Batch:
    """The tensors of one (device, dtype) in one param group that take a step."""

    params: list = field(default_factory=list)
    grads: list = field(default_factory=list)
    bufs: list = field(default_factory=list)
    scales: list = field(default_factory=list)
    first: list = field(default_factory=list)
    dense: bool = True  # every parameter dense, so the fused kernels may walk storage order


class FusedSGD(torch.optim.Optimizer):
    """SGD (momentum, dampening, weight decay, nesterov) with one lr scale per parameter tensor.

    Args:
        params: parameters or param groups; a group may carry ``lr_scale`` (one float per tensor).
        lr, momentum, dampening, weight_decay, nesterov: as torch.optim.SGD.
        lr_scale: one scale per parameter tensor, in parameter order (default all 1).
        backend: "auto" or one of BACKENDS; ``self.backend`` says which runs and
            ``self.backend_reason`` why.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        lr_scale=None,
        backend: str = "auto",
    ):
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UserError(f"FusedSGD {name} must be a finite number >= 0, got {value!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise UserError("FusedSGD nesterov=True needs momentum > 0 and dampening = 0")
        defaults = dict(
            lr=float(lr),
            momentum=float(momentum),
            dampening=float(dampening),
            weight_decay=float(weight_decay),
            nesterov=bool(nesterov),
        )
        super().__init__(params, defaults)
        if lr_scale is not None:
            self.set_lr_scale(lr_scale)
        device_types = {p.device.type for p in self._all_params()} or {"cpu"}
        self.backend, self.backend_reason = FUSED_SGD.select(backend, device_types)
        self._tables: dict = {}  # (group index, device, dtype) -> (key, packed Triton table)

    def __getstate__(self):  # pickling / deepcopy keep the backend
        state = super().__getstate__()
        state.update(backend=self.backend, backend_reason=self.backend_reason)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._tables = {}
        if "backend" not in self.__dict__:  # pickled by an older version
            device_types = {p.device.type for p in self._all_params()} or {"cpu"}
            self.backend, self.backend_reason = FUSED_SGD.select("auto", device_types)

    # ------------------------------------------------------------------ param groups, scales

    def add_param_group(self, param_group):
        if isinstance(param_group, dict):
            param_group = dict(param_group)
            scales = param_group.pop("lr_scale", None)
        else:
            scales = None
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        n = len(group["params"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise UserError("FusedSGD nesterov=True needs momentum > 0 and dampening = 0")
        if scales is None:
            group["lr_scale"] = [1.0] * n
        else:
            scales = _float_list(scales, "lr_scale")
            if len(scales) != n:
                raise UserError(
                    f"param group {len(self.param_groups) - 1} has {n} parameter tensors but "
                    f"{len(scales)} lr_scale values; give one scale per tensor"
                )
            group["lr_scale"] = scales

    def _all_params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @property
    def lr_scales(self) -> list[float]:
        """One scale per parameter tensor, in parameter order (a copy)."""
        return [s for group in self.param_groups for s in group["lr_scale"]]

    def set_lr_scale(self, scales, units: Iterable[nn.Module] | None = None) -> None:
        """Set the lr multipliers: one per parameter tensor, or one per unit with ``units``.

        ``units`` is an ordered iterable of modules (e.g. ``model.units()``); every parameter of
        this optimizer must belong to exactly one of them. Parameter i then trains with
        ``lr * scales[unit of i]``.
        """
        params = self._all_params()
        values = _float_list(scales, "lr scales")
        if units is None:
            if len(values) != len(params):
                raise UserError(
                    f"set_lr_scale got {len(values)} scales for {len(params)} parameter tensors: "
                    "pass one scale per tensor in parameter order, or one per unit with "
                    "units=model.units()"
                )
            per_param = values
        else:
            per_param = self._scales_from_units(values, list(units), params)
        start = 0
        for group in self.param_groups:
            n = len(group["params"])
            # A new list, never in place: state_dict() shares the group's objects.
            group["lr_scale"] = per_param[start : start + n]
            start += n

    @staticmethod
    def _scales_from_units(values, units, params) -> list[float]:
        if len(values) != len(units):
            raise UserError(
                f"set_lr_scale got {len(values)} scales for {len(units)} units: give one per unit"
            )
        owner: dict[int, int] = {}
        for u, unit in enumerate(units):
            unit_params = unit.parameters() if isinstance(unit, nn.Module) else unit
            for p in unit_params:
                if owner.get(id(p), u) != u:
                    raise UserError(
                        f"a parameter of shape {tuple(p.shape)} belongs to units {owner[id(p)]} "
                        f"and {u}; every parameter must belong to exactly one unit"
                    )
                owner[id(p)] = u
        per_param = []
        for i, p in enumerate(params):
            if id(p) not in owner:
                raise UserError(
                    f"parameter tensor {i} (shape {tuple(p.shape)}) of the optimizer belongs to "
                    "no unit; units must cover every parameter"
                )
            per_param.append(values[owner[id(p)]])
        return per_param

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        for i, group in enumerate(self.param_groups):
            n = len(group["params"])
            scales = group.get("lr_scale")
            if scales is None:  # e.g. a torch.optim.SGD state dict
                group["lr_scale"] = [1.0] * n
                continue
            scales = _float_list(scales, f"param_groups[{i}]['lr_scale']")
            if len(scales) != n:
                raise UserError(
                    f"state dict param group {i} has {len(scales)} lr scales for {n} tensors; "
                    "it was saved from a different model"
                )
            group["lr_scale"] = scales
        self._tables.clear()

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            for (device, dtype), batch in self._collect(group).items():
                self._apply(index, group, device, dtype, batch)
        return loss

    def _collect(self, group) -> dict[tuple, _Batch]:
        """Tensors with a gradient, grouped by (device, dtype); momentum buffers created here.

        This loop is most of the host time of a step, hence the plain style.
        """
        has_momentum = group["momentum"] != 0
        state = self.state
        batches: dict[tuple, _Batch] = {}
        for p, scale in zip(group["params"], group["lr_scale"], strict=True):
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise UserError("FusedSGD does not take sparse gradients; use torch.optim.SGD")
            key = (p.device, p.dtype)
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = _Batch()
            stride = p.stride()
            if grad.stride() != stride:
                grad = dense_like(grad, p)
            if batch.dense and not p.is_contiguous():
                batch.dense = is_dense(p)
            batch.params.append(p)
            batch.grads.append(grad)
            batch.scales.append(scale)
            if has_momentum:
                buf = state[p].get("momentum_buffer")
                first = buf is None
                if first:
                    buf = state[p]["momentum_buffer"] = torch.empty_like(p)
                elif buf.stride() != stride:  # e.g. loaded from another optimizer's state
                    buf = state[p]["momentum_buffer"] = dense_like(buf, p)
                batch.bufs.append(buf)
                batch.first.append(first)
        return batches

    def _apply(self, index: int, group, device, dtype, batch: _Batch) -> None:
        hyper = dict(
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
        )
        bufs = batch.bufs if hyper["momentum"] != 0 else None
        first = batch.first if hyper["momentum"] != 0 else None
        backend = FUSED_SGD.fit(self.backend, dtype=dtype, dense=batch.dense)

        if backend == "triton":
            table = self._triton_table(index, device, dtype, batch, bufs, first)
            fused_sgd_triton(
                batch.params, batch.grads, bufs, batch.scales, first, table=table, **hyper
            )
        elif backend == "cuda":
            cuda_ext.load_extension().fused_sgd_step(
                batch.params, batch.grads, bufs or [], batch.scales, first or [], **hyper
            )
        elif backend == "torch_fused":
            _torch_fused_step(batch.params, batch.grads, bufs, batch.scales, first, **hyper)
        elif backend == "foreach":
            _foreach_step(batch.params, batch.grads, bufs, batch.scales, first, **hyper)
        else:
            fused_sgd_reference(batch.params, batch.grads, bufs, batch.scales, first, **hyper)

    def _triton_table(self, index, device, dtype, batch: _Batch, bufs, first):
        """The packed kernel table, rebuilt only when an address, scale or first-step flag moved."""
        key = (
            tuple(p.data_ptr() for p in batch.params),
            tuple(g.data_ptr() for g in batch.grads),
            tuple(b.data_ptr() for b in bufs) if bufs else (),
            tuple(batch.scales),
            tuple(first) if first else (),
        )
        slot = (index, device, dtype)
        cached = self._tables.get(slot)
        if cached is None or cached[0] != key:
            check_batch(batch.params, batch.grads, bufs)
            table = build_table(batch.params, batch.grads, bufs, batch.scales, first)
            cached = self._tables[slot] = (key, table)
        return cached[1]


def _lr_batches(scales: list[float], first: list[bool] | None) -> dict[tuple, list[int]]:
    """Indices grouped by (scale, first-step flag): the unit torch's fused kernel can take."""
    out: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(scales):
        out[(s, first[i] if first else False)].append(i)
    return out


# Tensors below torch's own elementwise grain size (where its plain ops stay on one thread) are
# updated on a worker with a one-thread intra-op team on the CPU (one_thread.py says why).
FUSED_MIN_NUMEL = 32768


def _torch_fused_step(params, grads, bufs, scales, first, **hyper):
    """torch._fused_sgd_ once per distinct (scale, first step): one pass over memory."""
    if params[0].device.type != "cpu":
        _fused_calls(params, grads, bufs, scales, first, **hyper)
        return
    small = [i for i, p in enumerate(params) if p.numel() < FUSED_MIN_NUMEL]
    if len(small) < len(params):
        large = [i for i, p in enumerate(params) if p.numel() >= FUSED_MIN_NUMEL]
        _fused_calls(*_subset(large, params, grads, bufs, scales, first), **hyper)
    if small:
        run_on_one_thread(
            _fused_calls, *_subset(small, params, grads, bufs, scales, first), **hyper
        )


def _fused_calls(
    params, grads, bufs, scales, first, *, lr, weight_decay, momentum, dampening, nesterov
):
    for (scale, is_first), idx in _lr_batches(scales, first).items():
        torch._fused_sgd_(
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [bufs[i] for i in idx] if bufs is not None else [],
            weight_decay=weight_decay,
            momentum=momentum,
            lr=lr * scale,
            dampening=dampening,
            nesterov=nesterov,
            maximize=False,
            is_first_step=is_first,
        )


def _subset(idx, *lists):
    """The entries ``idx`` of each list (None stays None)."""
    return tuple(None if values is None else [values[i] for i in idx] for values in lists)


def _foreach_step(
    params, grads, bufs, scales, first, *, lr, weight_decay, momentum, dampening, nesterov
):
    """torch._foreach_* ops; fp16/bf16 are computed on fp32 copies and written back."""
    low_precision = params[0].dtype in (torch.float16, torch.bfloat16)
    if low_precision:
        work_params = [p.float() for p in params]
        grads = [g.float() for g in grads]
        work_bufs = [b.float() for b in bufs] if bufs is not None else None
    else:
        work_params, work_bufs = params, bufs

    if weight_decay != 0:
        updates = torch._foreach_add(grads, work_params, alpha=weight_decay)  # grads untouched
    else:
        updates = list(grads)
    if momentum != 0:
        new = [i for i, f in enumerate(first) if f]
        old = [i for i, f in enumerate(first) if not f]
        if new:
            torch._foreach_copy_([work_bufs[i] for i in new], [updates[i] for i in new])
        if old:
            old_bufs = [work_bufs[i] for i in old]
            torch._foreach_mul_(old_bufs, momentum)
            torch._foreach_add_(old_bufs, [updates[i] for i in old], alpha=1 - dampening)
        if nesterov:
            updates = torch._foreach_add(updates, work_bufs, alpha=momentum)
        else:
            updates = work_bufs
    for (scale, _), idx in _lr_batches(scales, None).items():
        torch._foreach_add_(
            [work_params[i] for i in idx], [updates[i] for i in idx], alpha=-(lr * scale)
        )

    if low_precision:
        torch._foreach_copy_(params, work_params)
        if bufs is not None:
            torch._foreach_copy_(bufs, work_bufs)
