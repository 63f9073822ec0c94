"""The fast-path registry: detection once, the backend that ran, fallbacks reported once."""

from __future__ import annotations

import warnings

import pytest
import torch

import st_fast
from st_fast import backends
from st_fast.backends import BackendUnavailableWarning, FastPath, only_on
from st_fast.errors import UserError

from .helpers import blobs


def _path(detect_calls: list | None = None, build_reason=None) -> FastPath:
    """A throwaway path: "fast" (a built extension), "plain" (always), "other" (not in auto)."""
    path = FastPath("test-path", "TestPath", auto={"cpu": ("fast", "plain")}, register=False)

    def detect():
        if detect_calls is not None:
            detect_calls.append(1)
        return build_reason

    path.add("fast", "built on first use", detect=detect, runs_on=only_on("cpu"), built=True,
             takes=lambda size: None if size < 10 else "too big", fallback="plain")  # fmt: skip
    path.add("plain", "the reference")
    path.add("other", "only when asked for")
    return path


def test_detection_runs_once_and_is_cached():
    calls = []
    path = _path(calls)
    for _ in range(3):
        assert path.status("fast") is None
        assert path.select("auto").name == "fast"
    assert path.explain("cpu") == {"fast": None, "plain": None, "other": None}
    assert len(calls) == 1


def test_device_checks_come_before_detection():
    calls = []
    path = _path(calls)
    assert path.reason("fast", "meta") == "needs CPU tensors"
    assert calls == []  # never built for a device it cannot take


def test_selection_returns_the_backend_and_why():
    path = _path()
    assert path.select("auto") == ("fast", "auto: first usable for cpu")
    assert path.select("other") == ("other", "requested")
    skipped = path.select("auto", skip={"fast": "pinned off"})
    assert skipped.name == "plain" and "fast: pinned off" in skipped.why
    with pytest.raises(UserError, match="unknown"):
        path.select("magic")


def test_inputs_a_backend_does_not_take_go_to_its_fallback():
    path = _path()
    assert path.fit("fast", size=3) == "fast"
    assert path.fit("fast", size=30) == "plain"


def test_failed_build_falls_back_and_is_reported_once():
    path = _path(build_reason="building csrc/ failed: syntax error")
    with pytest.warns(BackendUnavailableWarning, match="'fast' cannot run: building csrc/ failed"):
        choice = path.select("auto")
    assert choice.name == "plain" and "syntax error" in choice.why
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process
        assert path.select("auto").name == "plain"
    with pytest.raises(UserError, match="cannot run here: building csrc/ failed"):
        path.select("fast")


def test_forced_unavailable_backend_falls_back_reports_once_and_is_restored():
    path = _path()
    assert path.select("auto").name == "fast"
    for _ in range(2):  # each block reports afresh
        with path.disabled("fast", "no compiler"):
            with pytest.warns(BackendUnavailableWarning, match="no compiler"):
                assert path.select("auto").name == "plain"
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                assert path.select("auto").name == "plain"
            assert path.explain()["fast"] == "no compiler"
    assert path.select("auto").name == "fast"


def test_a_backend_that_breaks_while_running_is_skipped_after():
    path = _path()
    with pytest.warns(BackendUnavailableWarning, match="failed: kernel crashed"):
        path.mark_failed("fast", "kernel crashed")
    assert path.select("auto").name == "plain"


def test_every_fast_path_is_declared():
    import st_fast.augment  # noqa: F401  (importing the owners declares their paths)
    import st_fast.cluster  # noqa: F401
    import st_fast.optim  # noqa: F401

    names = {path.name for path in backends.fast_paths()}
    assert {"tsne", "tsne-exact", "class-stats", "cg", "fused-sgd"} <= names
    assert backends.get("fused-sgd").title == "FusedSGD"
    assert "torch" in backends.get("tsne-exact").available("cpu")


def test_callers_record_the_backend_that_ran():
    from st_fast.augment import ColorGray
    from st_fast.cluster.stats import CLASS_STATS
    from st_fast.cluster.tsne import EXACT_TSNE
    from st_fast.optim import FusedSGD

    x, y = blobs(n=40, d=5, k=2)
    stats = st_fast.acm(x, y, return_stats=True, tsne_options=dict(n_iter_early=3, n_iter_late=3))
    assert stats.stats_backend == CLASS_STATS.select("auto").name == "torch"
    exact = EXACT_TSNE.select("auto").name  # "cpp" where it builds
    assert stats.tsne_impl.startswith("cpp-" if exact == "cpp" else "torch")
    assert stats.implementation == f"exact/{stats.tsne_impl}"
    cg = ColorGray(seed=0)
    cg(torch.rand(2, 3, 4, 4))
    assert cg.backend in ("cpp", "torch")
    opt = FusedSGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    assert opt.backend == "torch_fused" and opt.backend_reason.startswith("auto")


def test_class_statistics_past_the_kernel_limit_are_reported_as_torch(monkeypatch):
    from st_fast.kernels.class_stats import MAX_KERNEL_CLASSES

    from st_fast.cluster.stats import CLASS_STATS, run_class_statistics

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # triton would be chosen for the CPU tensors
    if CLASS_STATS.status("triton") is not None:
        pytest.skip(CLASS_STATS.status("triton"))
    k = MAX_KERNEL_CLASSES + 1
    z = torch.randn(2 * k, 2)
    cls = torch.arange(k, dtype=torch.int32).repeat(2)
    _, ran = run_class_statistics(z, cls, k)
    assert ran == "torch"


# ------------------------------------------------------------------ st-fast doctor


def test_doctor_lists_every_path_and_backend(capsys):
    import json

    from st_fast.cli import main

    assert main(["doctor", "--json", "--no-build"]) == 0
    report = json.loads(capsys.readouterr().out)
    paths = {p["name"]: p for p in report["paths"]}
    assert {"tsne", "tsne-exact", "class-stats", "cg", "fused-sgd"} <= set(paths)
    sgd = {b["name"]: b for b in paths["fused-sgd"]["backends"]}
    assert set(sgd) == {"triton", "cuda", "torch_fused", "foreach", "reference"}
    assert sgd["reference"]["devices"]["cpu"] is None
    assert "CUDA" in sgd["cuda"]["devices"]["cpu"]  # why not, in words
    assert paths["cg"]["auto"]["cpu"] == ["cpp", "torch"]

    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    for name, path in paths.items():
        assert name in text
        assert all(b["name"] in text for b in path["backends"])
    assert "cpu   yes" in text and "no: needs CUDA tensors" in text


# ------------------------------------------------------------------ the test helpers' own rule


def test_cpp_comparison_tests_fail_when_the_toolchain_is_there_and_the_build_breaks(
    tmp_path, monkeypatch
):
    from _pytest.outcomes import Failed, Skipped
    from st_fast.csrc import build

    from .helpers import built_or_fail

    source = tmp_path / "broken.cpp"
    source.write_text("int broken( {\n")  # a syntax error, no torch header: fails in a second
    monkeypatch.setenv("ST_FAST_EXTENSION_DIR", str(tmp_path / "build"))
    broken = build.OnDemandExtension("st_fast_test_broken", [source], "the broken test kernel")
    if build.toolchain_problem() is None:
        with pytest.raises(Failed, match="did not build.*building csrc/ failed"):
            built_or_fail(broken)
    monkeypatch.setattr(build, "toolchain_problem", lambda: "no C++ compiler found")
    with pytest.raises(Skipped, match="no C\\+\\+ compiler"):
        built_or_fail(broken)
