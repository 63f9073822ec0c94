"""The "cpp" ColorGray backend (csrc/color_gray.cpp) against the torch reference and torchvision.

The extension is built once per machine (~20 s on two cores, kept in torch's extension
directory; later runs load it in about a second). Without a compiler or ninja the comparisons
skip with the reason; with them, a failed build fails them. The fallback tests always run.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from st_fast.csrc import build
from st_fast.kernels.color_gray import BRIGHTNESS, CONTRAST, HUE, SATURATION, color_gray_torch
from torchvision.transforms.v2 import functional as F

import st_fast.augment.color_gray as cgmod
from st_fast.augment import ColorGray, available_backends
from st_fast.augment.color_gray import CGParams, color_gray_cpp, cpp_status
from st_fast.backends import BackendUnavailableWarning
from st_fast.errors import UserError

from .helpers import CG_TOL, built_or_fail, cg_images, max_abs_diff, single_op_params

# float32: contrast's mean is summed in double here and in float32 by torch (an ulp apart).
FLOAT_TOL_VS_TORCH = 2e-6


NO_COMPILER = "the C++ CG kernel unavailable: no compiler"


@pytest.fixture(scope="module")
def cpp():
    built_or_fail(cgmod._CPP_EXTENSION)


def _reference(x, params):
    return color_gray_torch(x, params.factors, params.order, params.gray)


def _assert_matches_reference(got, x, params):
    expected = _reference(x, params)
    assert got.dtype == x.dtype and got.shape == x.shape
    if x.dtype == torch.uint8:
        assert torch.equal(got, expected)  # bit for bit, truncations included
    else:
        assert max_abs_diff(got, expected) <= FLOAT_TOL_VS_TORCH


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("channels", [3, 1])
def test_each_op_alone_matches_reference_and_torchvision(cpp, channels, dtype):
    ops = {BRIGHTNESS: F.adjust_brightness, CONTRAST: F.adjust_contrast,
           SATURATION: F.adjust_saturation, HUE: F.adjust_hue}  # fmt: skip
    cases = [(BRIGHTNESS, 1.37), (BRIGHTNESS, 0.61), (CONTRAST, 1.3), (CONTRAST, 0.7),
             (SATURATION, 1.4), (SATURATION, 0.62), (HUE, 0.1), (HUE, -0.093), (HUE, 0.5)]  # fmt: skip
    x = cg_images(6, channels, dtype)
    for op, factor in cases:
        params = single_op_params(6, op, factor).for_channels(channels)
        got = color_gray_cpp(x, params)
        _assert_matches_reference(got, x, params)
        expected = torch.stack([ops[op](img, factor) for img in x])
        assert max_abs_diff(got, expected) <= CG_TOL[dtype], (op, factor)
    params = single_op_params(6, None, 1.0, gray=True).for_channels(channels)
    gray = torch.stack([F.rgb_to_grayscale(img, num_output_channels=channels) for img in x])
    assert max_abs_diff(color_gray_cpp(x, params), gray) <= CG_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_all_24_orders_composed_match_reference_and_torchvision(cpp, dtype):
    perms = torch.tensor(list(itertools.permutations(range(4))), dtype=torch.int32)
    n = len(perms)
    x = cg_images(n, 3, dtype, seed=1)
    g = torch.Generator().manual_seed(5)
    low = torch.tensor([0.6, 0.6, 0.6, -0.1])
    factors = low + torch.rand(n, 4, generator=g) * torch.tensor([0.8, 0.8, 0.8, 0.2])
    params = CGParams(factors, perms, torch.arange(n) % 3 == 0, torch.ones(n, dtype=torch.bool))
    got = color_gray_cpp(x, params)
    _assert_matches_reference(got, x, params)
    assert max_abs_diff(got, cgmod.color_gray_torchvision(x, params)) <= CG_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("size", [(32, 32), (6, 5), (17, 13), (1, 1)])
def test_sampled_params_match_reference(cpp, size, channels, dtype):
    cg = ColorGray(p_jitter=0.9, p_gray=0.3, seed=10 * size[0] + channels)
    if size == (1, 1):  # one pixel: contrast's mean is the pixel's own luma
        x = cg_images(48, channels, dtype, size=(2, 2))[:, :, 1:, 1:]
    else:
        x = cg_images(48, channels, dtype, size=size)
    params = cg.sample_params(48)
    got = cg.apply(x, params, backend="cpp")
    assert cg.backend == "cpp"
    _assert_matches_reference(got, x, params.for_channels(channels))
    if size in ((6, 5), (1, 1)):  # torchvision per image is slow: the small shapes only
        assert max_abs_diff(got, cg.apply(x, params, backend="torchvision")) <= CG_TOL[dtype]


def test_non_contiguous_input_and_thread_count_do_not_change_the_result(cpp):
    # 70 images of 3x32x32: chunks of >= 32k values, so up to 7 chunks over the threads
    x = cg_images(70, 3, torch.uint8, size=(32, 32))
    params = ColorGray(p_jitter=1.0, p_gray=0.5, seed=4).sample_params(70)
    expected = color_gray_cpp(x.contiguous(), params)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(color_gray_cpp(channels_last, params), expected)
    strided = torch.stack([x, 1 - x], dim=-1)[..., 0]  # x, every other element of a buffer
    assert torch.equal(strided, x) and not strided.is_contiguous()
    assert torch.equal(color_gray_cpp(strided, params), expected)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert torch.equal(color_gray_cpp(x, params), expected), n
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_kernel_runs_on_torch_intra_op_threads(cpp):
    # at::parallel_for is a header template: built without -fopenmp it is a serial loop.
    script = textwrap.dedent(
        """
        import os, torch
        from st_fast.augment.color_gray import ColorGray, color_gray_cpp
        torch.set_num_threads(2)
        x = torch.rand(64, 3, 32, 32)
        color_gray_cpp(x, ColorGray(seed=0).sample_params(64))
        print(len(os.listdir("/proc/self/task")))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # no OpenMP pool until a parallel region
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) >= 2


def test_input_untouched_and_float64_takes_the_torch_path(cpp):
    x = cg_images(8, 3, torch.float32)
    before = x.clone()
    cg = ColorGray(seed=0)
    y = cg(x)
    assert cg.backend == "cpp" and torch.equal(x, before) and y.dtype == x.dtype
    cg = ColorGray(backend="cpp", seed=0)
    y64 = cg(x.double())
    assert cg.backend == "torch" and y64.dtype == torch.float64
    assert ColorGray(backend="cpp")(torch.zeros(0, 3, 4, 4)).shape == (0, 3, 4, 4)


def test_auto_picks_cpp_for_cpu_batches(cpp):
    assert available_backends("cpu")["cpp"] == "ok" and cpp_status() == "ok"
    assert cgmod.CG.backends["cpp"].runs_on("cuda") == "needs CPU tensors"
    for dtype in (torch.uint8, torch.float32):
        cg = ColorGray(seed=0)
        cg(cg_images(4, 3, dtype))
        assert cg.backend == "cpp"


def test_bad_input_to_the_kernel_is_a_clear_error(cpp):
    op = torch.ops.st_fast_cg.color_gray
    params = ColorGray(seed=0).sample_params(2)
    args = (params.factors, params.order, params.gray)
    with pytest.raises(RuntimeError, match="uint8 or float32"):
        op(torch.zeros(2, 3, 4, 4, dtype=torch.int32), *args)
    with pytest.raises(RuntimeError, match="C = 1 or 3"):
        op(torch.zeros(2, 4, 4, 4), *args)
    with pytest.raises(RuntimeError, match="do not match a batch of 3"):
        op(torch.zeros(3, 3, 4, 4), *args)
    bad_order = params.order.clone()
    bad_order[0, 0] = 7
    with pytest.raises(RuntimeError, match="op ids 0..4"):
        op(torch.zeros(2, 3, 4, 4), params.factors, bad_order, params.gray)
    with pytest.raises(UserError):  # the public API checks first
        ColorGray(backend="cpp")(torch.zeros(2, 2, 4, 4))


def test_auto_falls_back_to_torch_when_the_build_fails():
    x = cg_images(4, 3, torch.uint8)
    cg = ColorGray(seed=0)
    params = cg.sample_params(4)
    with cgmod.CG.disabled("cpp", NO_COMPILER):
        with pytest.warns(BackendUnavailableWarning, match="no compiler"):
            got = cg.apply(x, params)
        assert cg.backend == "torch" and torch.equal(got, _reference(x, params))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once per process, not per batch
            cg.apply(x, params)
        with pytest.raises(UserError, match="no compiler"):
            cg.apply(x, params, backend="cpp")
        assert "no compiler" in available_backends("cpu")["cpp"]


def test_failed_build_is_remembered_and_reported(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    calls = []

    def failing_load(**kwargs):
        calls.append(kwargs["name"])
        raise RuntimeError("compiler said no\nError building extension 'st_fast_broken'")

    monkeypatch.setattr(build, "toolchain_problem", lambda: None)
    monkeypatch.setattr(cpp_extension, "load", failing_load)
    monkeypatch.setenv("ST_FAST_EXTENSION_DIR", str(tmp_path))
    ext = build.OnDemandExtension("st_fast_broken", [tmp_path / "broken.cpp"], "the test kernel")
    for _ in range(2):
        with pytest.raises(build.ExtensionUnavailable, match="Error building extension"):
            ext.load()
    assert calls == ["st_fast_broken"]  # one attempt per process
    assert ext.failure.startswith("building csrc/ failed")


def test_missing_compiler_is_reported(monkeypatch):
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    assert "no C++ compiler" in build.toolchain_problem()
    ext = build.OnDemandExtension("st_fast_never_built", [], "the test kernel")
    with pytest.raises(build.ExtensionUnavailable, match="the test kernel unavailable: no C"):
        ext.load()
