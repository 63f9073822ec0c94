"""ColorGray (CG augmentation): torch backend vs torchvision, sampling, probabilities, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from st_fast.kernels.color_gray import BRIGHTNESS, CONTRAST, HUE, NOOP, SATURATION
from torchvision.transforms.v2 import functional as F

from st_fast.augment import ColorGray, available_backends
from st_fast.augment.color_gray import CGParams, color_gray_torchvision, cpp_status
from st_fast.errors import UserError

from .helpers import CG_TOL, cg_images, max_abs_diff, single_op_params


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize(
    "op,factor",
    [(BRIGHTNESS, 1.37), (BRIGHTNESS, 0.61), (CONTRAST, 1.3), (CONTRAST, 0.7),
     (SATURATION, 1.4), (SATURATION, 0.62), (HUE, 0.1), (HUE, -0.093), (HUE, 0.5)],
)  # fmt: skip
def test_each_op_alone_matches_torchvision(op, factor, channels, dtype):
    x = cg_images(6, channels, dtype)
    ops = {BRIGHTNESS: F.adjust_brightness, CONTRAST: F.adjust_contrast,
           SATURATION: F.adjust_saturation, HUE: F.adjust_hue}  # fmt: skip
    expected = torch.stack([ops[op](img, factor) for img in x])
    got = ColorGray(backend="torch").apply(x, single_op_params(6, op, factor))
    assert got.dtype == dtype and got.shape == x.shape
    assert max_abs_diff(got, expected) <= CG_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("channels", [3, 1])
def test_grayscale_alone_matches_torchvision(channels, dtype):
    x = cg_images(5, channels, dtype)
    expected = torch.stack([F.rgb_to_grayscale(img, num_output_channels=channels) for img in x])
    got = ColorGray(backend="torch").apply(x, single_op_params(5, None, 1.0, gray=True))
    assert max_abs_diff(got, expected) <= CG_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_all_24_orders_composed_match_torchvision(dtype):
    perms = torch.tensor(list(itertools.permutations(range(4))), dtype=torch.int32)
    n = len(perms)
    x = cg_images(n, 3, dtype, seed=1)
    g = torch.Generator().manual_seed(5)
    factors = torch.stack(
        [0.6 + 0.8 * torch.rand(n, generator=g), 0.6 + 0.8 * torch.rand(n, generator=g),
         0.6 + 0.8 * torch.rand(n, generator=g), -0.1 + 0.2 * torch.rand(n, generator=g)], 1
    )  # fmt: skip
    gray = torch.arange(n) % 3 == 0
    params = CGParams(factors, perms, gray, torch.ones(n, dtype=torch.bool))
    # an independent reference: torchvision's functional ops in each image's order
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    expected = []
    for i, img in enumerate(x):
        for op in perms[i].tolist():
            img = ops[op](img, float(factors[i, op]))
        expected.append(F.rgb_to_grayscale(img, num_output_channels=3) if gray[i] else img)
    got = ColorGray(backend="torch").apply(x, params)
    assert max_abs_diff(got, torch.stack(expected)) <= CG_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.float64])
@pytest.mark.parametrize("channels", [3, 1])
def test_torch_backend_matches_torchvision_backend_on_sampled_params(channels, dtype):
    cg = ColorGray(seed=11)
    x = cg_images(64, channels, dtype, size=(6, 5))
    params = cg.sample_params(64)
    got = cg.apply(x, params, backend="torch")
    expected = cg.apply(x, params, backend="torchvision")
    assert max_abs_diff(got, expected) <= CG_TOL.get(dtype, 1e-6)


def test_call_keeps_dtype_device_shape_and_does_not_touch_input():
    x = cg_images(16, 3, torch.float32)
    before = x.clone()
    cg = ColorGray(seed=0)
    y = cg(x)
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device
    assert torch.equal(x, before)
    assert cg.backend == ("cpp" if cpp_status() == "ok" else "torch")
    assert ColorGray(seed=0)(cg_images(4, 3, torch.uint8)).dtype == torch.uint8


def test_same_seed_same_stream_and_state_dict_resumes_exactly():
    x = cg_images(32, 3, torch.float32)
    a, b = ColorGray(seed=7), ColorGray(seed=7)
    assert torch.equal(a(x), b(x))
    state = a.state_dict()
    next_a = a(x)
    c = ColorGray(seed=123)
    c.load_state_dict(state)
    assert torch.equal(c(x), next_a)
    assert not torch.equal(ColorGray(seed=8)(x), ColorGray(seed=7)(x))


def test_probabilities_hold_statistically():
    n = 40_000
    cg = ColorGray(p_jitter=0.8, p_gray=0.2, seed=0)
    params = cg.sample_params(n)
    sigma = lambda p: (p * (1 - p) / n) ** 0.5  # noqa: E731
    assert abs(params.jitter.float().mean().item() - 0.8) < 5 * sigma(0.8)
    assert abs(params.gray.float().mean().item() - 0.2) < 5 * sigma(0.2)
    # the two coins are independent
    both = (params.jitter & params.gray).float().mean().item()
    assert abs(both - 0.16) < 5 * sigma(0.16)
    # images without jitter have no ops; with jitter, all four ops in some order
    assert (params.order[~params.jitter] == NOOP).all()
    on = params.order[params.jitter].long()
    assert torch.equal(on.sort(1).values, torch.arange(4).expand_as(on))


def test_orders_are_uniform_over_the_24_permutations():
    params = ColorGray(p_jitter=1.0, seed=1).sample_params(24_000)
    codes = (params.order.long() * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.unique(codes, return_counts=True)[1].float()
    assert counts.numel() == 24
    # each count ~ Binomial(24000, 1/24): mean 1000, sd ~31
    assert (counts - 1000).abs().max().item() < 160


def test_factors_follow_torchvision_ranges():
    params = ColorGray(
        brightness=0.4, contrast=(0.5, 0.9), saturation=0.2, hue=0.1, seed=2
    ).sample_params(20_000)
    f = params.factors
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.5, 0.9), (0.8, 1.2), (-0.1, 0.1)]):
        assert f[:, col].min() >= lo and f[:, col].max() <= hi
        assert abs(f[:, col].mean().item() - (lo + hi) / 2) < 0.01 * (hi - lo) + 1e-3


def test_disabled_ops_are_skipped_and_one_channel_drops_colour_ops():
    cg = ColorGray(brightness=0, contrast=0.4, saturation=0, hue=0, p_jitter=1.0, seed=0)
    params = cg.sample_params(100)
    assert set(params.order.unique().tolist()) == {CONTRAST, NOOP}
    full = ColorGray(p_jitter=1.0, p_gray=1.0, seed=0).sample_params(50)
    mono = full.for_channels(1)
    assert not mono.gray.any()
    assert set(mono.order.unique().tolist()) == {BRIGHTNESS, CONTRAST, NOOP}


def test_gray_images_have_equal_channels_and_p_zero_is_identity():
    x = cg_images(40, 3, torch.float32)
    y = ColorGray(p_jitter=0.0, p_gray=1.0)(x)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    assert torch.equal(ColorGray(p_jitter=0.0, p_gray=0.0)(x), x)


def test_reference_backend_is_plain_torchvision():
    x = cg_images(3, 3, torch.float32)
    params = single_op_params(3, HUE, 0.2, gray=True)
    expected = torch.stack([F.rgb_to_grayscale(F.adjust_hue(img, 0.2), 3) for img in x])
    assert torch.equal(color_gray_torchvision(x, params), expected)


def test_backends_report_and_auto_picks_cpp_or_torch_on_cpu():
    status = available_backends("cpu")
    assert set(status) == {"torch", "triton", "cpp", "dali", "torchvision"}
    assert status["torch"] == "ok"
    cg = ColorGray(backend="auto")
    cg(cg_images(2, 3, torch.float32))
    assert cg.backend == ("cpp" if status["cpp"] == "ok" else "torch")
    cg(cg_images(2, 3, torch.float32).double())  # the C++ kernel covers uint8 and float32
    assert cg.backend == "torch"


def test_empty_batch():
    x = torch.zeros(0, 3, 4, 4)
    assert ColorGray()(x).shape == x.shape


@pytest.mark.parametrize(
    "kwargs",
    [dict(brightness=-0.1), dict(hue=0.7), dict(hue=(0.2, 0.1)), dict(p_jitter=1.5),
     dict(p_gray=-0.1), dict(backend="cuda-magic"), dict(contrast="a lot")],
)  # fmt: skip
def test_bad_configuration_is_a_user_error(kwargs):
    with pytest.raises(UserError):
        ColorGray(**kwargs)


@pytest.mark.parametrize(
    "x",
    [torch.rand(3, 8, 8), torch.rand(2, 4, 8, 8), torch.randint(0, 9, (2, 3, 4, 4)), [[1.0]]],
)
def test_bad_images_are_a_user_error(x):
    with pytest.raises(UserError):
        ColorGray()(x)


def test_bad_state_is_a_user_error():
    with pytest.raises(UserError):
        ColorGray().load_state_dict({"nope": 1})


def test_unavailable_backend_is_a_user_error():
    import st_fast.augment.color_gray as cgmod

    with cgmod.CG.disabled("dali", "nvidia-dali not importable"):
        with pytest.raises(UserError, match="dali.*not importable"):
            ColorGray(backend="dali")(torch.rand(2, 3, 4, 4))
    if available_backends("cpu")["triton"] != "ok":
        with pytest.raises(UserError, match="triton"):
            ColorGray(backend="triton")(torch.rand(2, 3, 4, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_gpu_backends_match_cpu_torch(dtype):
    x = cg_images(256, 3, dtype, size=(32, 32))
    cg = ColorGray(seed=0)
    params = cg.sample_params(256)
    expected = cg.apply(x, params, backend="torch")
    for backend in ("torch", "triton"):
        got = cg.apply(x.cuda(), params, backend=backend)
        assert got.device.type == "cuda"
        assert max_abs_diff(got.cpu(), expected) <= CG_TOL[dtype]


def test_auto_falls_back_to_torch_when_the_triton_kernel_fails(monkeypatch):
    from st_fast.kernels import triton_missing

    import st_fast.augment.color_gray as cgmod
    from st_fast.backends import BackendUnavailableWarning

    if triton_missing():
        pytest.skip(triton_missing())

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(cgmod, "color_gray_triton", broken)
    # "auto" picks triton for these CPU tensors, as it would on a GPU; the registry's memory
    # of the failure is put back afterwards
    monkeypatch.setitem(cgmod.CG.auto, "cpu", ("triton", "torch"))
    monkeypatch.setattr(cgmod.CG, "_detected", dict(cgmod.CG._detected))
    monkeypatch.setattr(cgmod.CG, "_reported", set(cgmod.CG._reported))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cg = ColorGray(seed=0)
    x = cg_images(4, 3, torch.float32)
    params = cg.sample_params(4)
    with pytest.warns(BackendUnavailableWarning, match="Triton kernel failed"):
        got = cg.apply(x, params)
    assert cg.backend == "torch"
    assert torch.equal(got, cg.apply(x, params, backend="torch"))
    assert "no kernel" in cgmod.CG.status("triton")  # process-wide: later batches skip it
    monkeypatch.setattr(cgmod.CG, "_detected", {})
    with pytest.raises(RuntimeError, match="no kernel"):  # asked for by name: no silent fallback
        cg.apply(x, params, backend="triton")


def test_cpu_batch_split_across_threads_gives_the_same_result(monkeypatch):
    from st_fast.kernels.color_gray import color_gray_torch

    from st_fast.augment.color_gray import color_gray_torch_batched

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # 3 slices of 43, 43, 42 images
    x = cg_images(128, 3, torch.uint8, size=(5, 5))
    params = ColorGray(seed=9).sample_params(128)
    whole = color_gray_torch(x, params.factors, params.order, params.gray)
    assert torch.equal(color_gray_torch_batched(x, params), whole)
