"""FusedSGD against torch.optim.SGD with one param group per unit (lr = lr * scale)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from st_fast.kernels.fused_sgd import fused_sgd_reference
from torch import nn

from st_fast.errors import UserError
from st_fast.optim import FusedSGD, available_backends, explain_backends

from .helpers_optim import (
    HYPER,
    TOL,
    UNIT_SCALES,
    TinyResNet,
    max_diff,
    random_grads,
    run_pair,
    set_grads,
    torch_sgd_per_unit,
    train_together,
)

CPU_BACKENDS = ("torch_fused", "foreach", "reference")

@pytest.mark.parametrize("hyper", HYPER, ids=lambda h: "m{}-d{}-n{}-wd{}".format(*h))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_torch_sgd_per_unit_groups(backend, hyper):
    model, twin, fused, reference = run_pair(backend, hyper)
    assert fused.backend == backend
    assert max_diff(model.parameters(), twin.parameters()) <= TOL
    if hyper[0] != 0:
        bufs = [fused.state[p]["momentum_buffer"] for p in model.parameters()]
        twin_bufs = [reference.state[p]["momentum_buffer"] for p in twin.parameters()]
        assert max_diff(bufs, twin_bufs) <= TOL


@pytest.fixture
def fused_kernel_for_small_tensors(monkeypatch):
    """Send even tiny tensors through torch._fused_sgd_ (normally they take the foreach ops),
    on one thread so a busy machine cannot stall the kernel's thread pool."""
    import st_fast.optim.fused_sgd as fused_sgd_module

    monkeypatch.setattr(fused_sgd_module, "FUSED_MIN_NUMEL", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("hyper", HYPER, ids=lambda h: "m{}-d{}-n{}-wd{}".format(*h))
def test_torch_fused_kernel_path_matches(fused_kernel_for_small_tensors, hyper):
    model, twin, fused, reference = run_pair("torch_fused", hyper)
    assert max_diff(model.parameters(), twin.parameters()) <= TOL
    model, twin, _, _ = run_pair("torch_fused", hyper, steps=5, layouts=True, skip={3})
    assert max_diff(model.parameters(), twin.parameters()) <= TOL


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_grads_and_missing_grads(backend):
    params = list(TinyResNet().parameters())
    skip = {0, 5, len(params) - 1}  # stem conv, a block's bn, head bias: grad None
    hyper = (0.9, 0.1, False, 5e-4)
    model, twin, fused, _ = run_pair(backend, hyper, steps=10, layouts=True, skip=skip)
    assert max_diff(model.parameters(), twin.parameters()) <= TOL
    torch.manual_seed(0)
    untouched = list(TinyResNet().parameters())
    for i, p in enumerate(model.parameters()):
        if i in skip:
            assert torch.equal(p, untouched[i]), "a parameter without grad must not move"
            assert "momentum_buffer" not in fused.state[p]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_channels_last_params(backend):
    """Param and grad layouts differ (torch's own fused CPU SGD gets this case wrong)."""
    torch.manual_seed(0)
    model = TinyResNet().to(memory_format=torch.channels_last)
    twin = copy.deepcopy(model)
    fused = FusedSGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, backend=backend)
    fused.set_lr_scale(UNIT_SCALES, units=model.units())
    reference = torch_sgd_per_unit(twin, UNIT_SCALES, 0.1, momentum=0.9, weight_decay=5e-4)
    params, twin_params = list(model.parameters()), list(twin.parameters())
    assert params[0].is_contiguous(memory_format=torch.channels_last)
    train_together([(params, fused), (twin_params, reference)], steps=5)  # contiguous grads
    assert max_diff(params, twin_params) <= TOL


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_scale_matches_torch_lr_zero(backend):
    """Scale 0: the parameter keeps its exact value; the momentum buffer moves as torch's does."""
    model, twin, fused, reference = run_pair(backend, (0.9, 0.0, False, 5e-4), steps=5)
    torch.manual_seed(0)
    initial = TinyResNet()
    for p, p0, pt in zip(
        model.stem.parameters(), initial.stem.parameters(), twin.stem.parameters()
    ):
        assert torch.equal(p, p0) and torch.equal(p, pt)
        assert torch.allclose(
            fused.state[p]["momentum_buffer"],
            reference.state[pt]["momentum_buffer"],
            atol=TOL,
            rtol=0,
        )
        assert fused.state[p]["momentum_buffer"].abs().sum() > 0


def test_real_backward_matches():
    """Gradients from autograd (BatchNorm, convs) rather than random tensors."""
    torch.manual_seed(0)
    model = TinyResNet()
    twin = copy.deepcopy(model)
    fused = FusedSGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    fused.set_lr_scale(UNIT_SCALES, units=model.units())
    reference = torch_sgd_per_unit(
        twin, UNIT_SCALES, 0.05, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    for step in range(5):
        x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(step))
        y = torch.arange(8) % 10
        for m, opt in ((model, fused), (twin, reference)):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    assert max_diff(model.parameters(), twin.parameters()) <= 1e-5


def test_per_tensor_scales_and_param_groups():
    """Per-tensor scales over two user groups, in parameter order across groups."""
    torch.manual_seed(0)
    model = TinyResNet()
    twin = copy.deepcopy(model)
    params, twin_params = list(model.parameters()), list(twin.parameters())
    half = len(params) // 2
    scales = [(i % 4) / 3 for i in range(len(params))]
    fused = FusedSGD(
        [{"params": params[:half]}, {"params": params[half:], "weight_decay": 1e-3}],
        lr=0.1,
        momentum=0.9,
        lr_scale=scales,
    )
    groups = [
        {"params": [p], "lr": 0.1 * s, "weight_decay": 0.0 if i < half else 1e-3}
        for i, (p, s) in enumerate(zip(twin_params, scales))
    ]
    reference = torch.optim.SGD(groups, lr=0.1, momentum=0.9, foreach=False)
    assert fused.lr_scales == scales
    train_together([(params, fused), (twin_params, reference)], steps=10)
    assert max_diff(params, twin_params) <= TOL


def test_cosine_scheduler_acts_on_lr():
    torch.manual_seed(0)
    model = TinyResNet()
    twin = copy.deepcopy(model)
    fused = FusedSGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    fused.set_lr_scale(UNIT_SCALES, units=model.units())
    reference = torch_sgd_per_unit(twin, UNIT_SCALES, 0.1, momentum=0.9, weight_decay=5e-4)
    schedulers = [
        torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10) for o in (fused, reference)
    ]
    params, twin_params = list(model.parameters()), list(twin.parameters())
    train_together(
        [(params, fused), (twin_params, reference)],
        steps=10,
        after_step=lambda: [s.step() for s in schedulers],
    )
    assert max_diff(params, twin_params) <= TOL
    assert fused.param_groups[0]["lr"] == pytest.approx(schedulers[0].get_last_lr()[0])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_state_dict_round_trip_mid_training(backend):
    hyper = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=5e-4)
    torch.manual_seed(0)
    model = TinyResNet()
    resumed_model = copy.deepcopy(model)
    opt = FusedSGD(model.parameters(), backend=backend, **hyper)
    opt.set_lr_scale(UNIT_SCALES, units=model.units())
    params = list(model.parameters())
    train_together([(params, opt)], steps=20)
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved)

    resumed_model.load_state_dict(checkpoint["model"])
    resumed = FusedSGD(resumed_model.parameters(), backend=backend, **hyper)  # scales all 1
    resumed.load_state_dict(checkpoint["opt"])
    assert resumed.lr_scales == opt.lr_scales
    resumed_params = list(resumed_model.parameters())
    train_together([(params, opt), (resumed_params, resumed)], steps=10, first_step=20)
    assert max_diff(params, resumed_params) == 0.0

    # The saved state must not follow later changes of the live optimizer.
    state = opt.state_dict()
    opt.set_lr_scale([2.0] * len(UNIT_SCALES), units=model.units())
    assert state["param_groups"][0]["lr_scale"] != opt.lr_scales


def test_deepcopy_keeps_backend_and_scales():
    model = TinyResNet()
    opt = FusedSGD(model.parameters(), lr=0.1, momentum=0.9, backend="reference")
    opt.set_lr_scale(UNIT_SCALES, units=model.units())
    clone = copy.deepcopy(opt)
    assert clone.backend == "reference" and clone.lr_scales == opt.lr_scales


def test_unit_scales_map_to_parameters():
    model = TinyResNet()
    opt = FusedSGD(model.parameters(), lr=0.1)
    opt.set_lr_scale(UNIT_SCALES, units=model.units())
    index = {id(p): i for i, p in enumerate(model.parameters())}
    for unit, scale in zip(model.units(), UNIT_SCALES, strict=True):
        for p in unit.parameters():
            assert opt.lr_scales[index[id(p)]] == scale


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda opt, m: opt.set_lr_scale([1.0, 2.0]), "2 scales for 29 parameter tensors"),
        (lambda opt, m: opt.set_lr_scale([1.0] * 4, units=m.units()), "4 scales for 5 units"),
        (lambda opt, m: opt.set_lr_scale([1, -1, 1, 1, 1], units=m.units()), ">= 0"),
        (lambda opt, m: opt.set_lr_scale([1, float("nan"), 1, 1, 1], units=m.units()), "finite"),
        (lambda opt, m: opt.set_lr_scale([1.0] * 4, units=m.units()[1:]), "belongs to no unit"),
        (
            lambda opt, m: opt.set_lr_scale([1.0] * 6, units=[*m.units(), m.blocks[0]]),
            "exactly one unit",
        ),
        (lambda opt, m: opt.set_lr_scale(torch.ones(29, 1)), "1-D"),
    ],
)
def test_bad_scales_raise_user_error(call, message):
    model = TinyResNet()
    opt = FusedSGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match=message):
        call(opt, model)


def test_bad_arguments_raise_user_error():
    params = list(TinyResNet().parameters())
    with pytest.raises(UserError, match="lr"):
        FusedSGD(params, lr=-0.1)
    with pytest.raises(UserError, match="nesterov"):
        FusedSGD(params, lr=0.1, nesterov=True)
    with pytest.raises(UserError, match="unknown"):
        FusedSGD(params, lr=0.1, backend="magic")
    with pytest.raises(UserError, match="cannot run here"):
        FusedSGD(params, lr=0.1, backend="cuda")
    with pytest.raises(UserError, match="3 lr_scale values"):
        FusedSGD([{"params": params[:2], "lr_scale": [1, 1, 1]}], lr=0.1)
    opt = FusedSGD(params, lr=0.1, momentum=0.9)
    other = FusedSGD(params[:3], lr=0.1, momentum=0.9).state_dict()
    with pytest.raises(ValueError):
        opt.load_state_dict(other)


def test_backend_reporting_on_cpu():
    opt = FusedSGD(TinyResNet().parameters(), lr=0.1)
    assert opt.backend in available_backends("cpu")
    assert opt.backend == available_backends("cpu")[0]
    assert opt.backend_reason.startswith("auto")
    reasons = explain_backends("cpu")
    assert reasons["reference"] is None and reasons["foreach"] is None
    assert "CUDA" in reasons["cuda"]
    if not torch.cuda.is_available():
        assert available_backends("cuda") == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_low_precision_uses_fp32_arithmetic(backend, dtype):
    """bf16/fp16 params: every backend matches the fp32-inside reference to bf16/fp16 rounding."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(n).to(dtype)) for n in (7, 300, 40000)]
    copies = [p.detach().clone() for p in params]
    bufs = [torch.empty_like(p) for p in copies]
    scales = [0.0, 0.5, 1.0]
    opt = FusedSGD(
        params, lr=0.1, momentum=0.9, weight_decay=1e-2, lr_scale=scales, backend=backend
    )
    for step in range(5):
        grads = random_grads(params, seed=step)
        set_grads(params, grads)
        opt.step()
        fused_sgd_reference(
            copies, grads, bufs, scales, [step == 0] * 3, lr=0.1, weight_decay=1e-2, momentum=0.9
        )
    eps = torch.finfo(dtype).eps
    for p, c in zip(params, copies):
        assert p.dtype == dtype
        torch.testing.assert_close(p.detach().float(), c.float(), rtol=2 * eps, atol=2 * eps)
    assert torch.equal(params[0].detach(), copies[0])  # scale 0: untouched, bit for bit


@pytest.mark.gpu
@pytest.mark.parametrize("hyper", HYPER, ids=lambda h: "m{}-d{}-n{}-wd{}".format(*h))
@pytest.mark.parametrize("backend", ["triton", "cuda", "torch_fused", "foreach"])
def test_gpu_backends_match_torch(backend, hyper):
    momentum, dampening, nesterov, weight_decay = hyper
    kw = dict(momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)
    torch.manual_seed(0)
    model = TinyResNet().cuda()
    twin = copy.deepcopy(model)
    fused = FusedSGD(model.parameters(), lr=0.1, backend=backend, **kw)
    fused.set_lr_scale(UNIT_SCALES, units=model.units())
    reference = torch_sgd_per_unit(twin, UNIT_SCALES, 0.1, **kw)
    params, twin_params = list(model.parameters()), list(twin.parameters())
    train_together([(params, fused), (twin_params, reference)], steps=50, layouts=True)
    assert max_diff(params, twin_params) <= TOL


def test_cpu_step_leaves_the_process_thread_count_alone(monkeypatch):
    model = TinyResNet()  # every tensor is small: all go through the one-thread worker
    opt = FusedSGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    for step in range(2):
        set_grads(list(model.parameters()), random_grads(list(model.parameters()), seed=step))
        opt.step()
    assert calls == [] and opt.backend == "torch_fused"


def test_one_thread_worker_gives_the_same_update_as_this_thread():
    from st_fast.optim.one_thread import run_on_one_thread, single_thread_worker

    worker = single_thread_worker()
    if worker is not None:  # None where torch has no OpenMP: updates then run inline
        assert worker.submit(torch.get_num_threads).result() == 1
    threads = torch.get_num_threads()
    results = []
    for run in (run_on_one_thread, lambda f, *a, **k: f(*a, **k)):
        params = [torch.nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(n)))
                  for n in (7, 300, 20000)]  # fmt: skip
        grads = random_grads(params, seed=1)
        bufs = [torch.zeros_like(p) for p in params]
        with torch.no_grad():
            for first in (True, False):
                run(torch._fused_sgd_, params, grads, bufs, weight_decay=5e-4, momentum=0.9,
                    lr=0.1, dampening=0.0, nesterov=True, maximize=False, is_first_step=first)  # fmt: skip
        results.append([t.detach().clone() for t in params + bufs])
    assert torch.get_num_threads() == threads
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
