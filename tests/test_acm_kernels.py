"""ACM's Triton kernels against their torch references and a float64 numpy reference.

On the CPU the kernels run under TRITON_INTERPRET=1, which must be set before they are defined;
other test modules import them without it, so the checks run once in a fresh interpreter
(``run_interpreted``). On a GPU the same checks run in-process (marked ``gpu``). Skipped only
where Triton does not import.
"""

from __future__ import annotations

import pytest

from .helpers import run_interpreted

CLASS_STATS_CASES = [  # (N, D, K, radius): t-SNE-like 2-D, odd sizes, raw-feature-like D
    (64, 2, 2, "mean"),
    (333, 2, 10, "max"),
    (150, 37, 7, "rms"),
    (100, 70, 17, "mean"),
]
TSNE_CASES = [31, 97]  # N, not multiples of the block sizes


def _run_checks(device: str) -> dict:
    """Max abs differences of every kernel output from its references, keyed by case."""
    import numpy as np
    import torch
    from st_fast.kernels import class_stats as cs
    from st_fast.kernels import tsne_grad as tg

    from st_fast.cluster.stats import class_statistics_numpy

    results = {}
    gen = torch.Generator().manual_seed(0)
    for n, d, k, radius in CLASS_STATS_CASES:
        z = (torch.randn(n, d, generator=gen) * 3).to(device)
        cls = torch.randint(-1, k, (n,), generator=gen, dtype=torch.int32)
        cls[: 2 * k] = torch.arange(k, dtype=torch.int32).repeat_interleave(2)
        cls = cls.to(device)
        fused = cs.class_stats_triton(z, cls, k, radius)
        eager = cs.class_stats_reference(z, cls, k, radius)
        exact = class_statistics_numpy(z.cpu().numpy(), cls.cpu().numpy(), k, radius)
        case = {}
        for name in ("acm", "centroids", "radii", "distances", "counts"):
            f = getattr(fused, name).double().cpu().numpy()
            case[f"{name}_vs_torch"] = float(
                np.abs(f - getattr(eager, name).double().cpu().numpy()).max()
            )
            case[f"{name}_vs_numpy"] = float(np.abs(f - exact[name]).max())
            case[f"{name}_scale"] = float(np.abs(exact[name]).max())
        results[f"class_stats/{n}x{d}/K{k}/{radius}"] = case

    for n in TSNE_CASES:
        y = (torch.randn(n, 2, generator=gen) * 5).to(device)
        p = torch.rand(n, n, generator=gen)
        p = p + p.T
        p.fill_diagonal_(0)
        p = (p / p.sum()).to(device)
        case = {}
        for exaggeration in (1.0, 12.0):
            fused = tg.tsne_gradient_triton(y, p, exaggeration)
            ref = tg.tsne_gradient_reference(y.double(), p.double(), exaggeration)
            case[f"grad_x{exaggeration:g}"] = float((fused.double() - ref).abs().max())
            case[f"grad_x{exaggeration:g}_scale"] = float(ref.abs().max())
        update = torch.randn(n, 2, generator=gen).to(device) * 0.01
        gains = (torch.rand(n, 2, generator=gen) + 0.5).to(device)
        a = [y.clone(), update.clone(), gains.clone()]
        b = [y.clone(), update.clone(), gains.clone()]
        for _ in range(3):
            tg.tsne_step(a[0], p, a[1], a[2], 12.0, 0.5, 50.0, 0.01)
            tg.tsne_step_reference(b[0], p, b[1], b[2], 12.0, 0.5, 50.0, 0.01)
        for name, fa, fb in zip(("y", "update", "gains"), a, b, strict=True):
            case[f"step_{name}"] = float((fa - fb).abs().max())
            case[f"step_{name}_scale"] = float(fb.abs().max())
        results[f"tsne/{n}"] = case

    # The driver loop (phases, scratch buffers) with the kernels vs the CPU dense torch path.
    from st_fast.cluster import exact_tsne

    x = torch.randn(48, 6, generator=gen).to(device)
    short = dict(n_iter_early=3, n_iter_late=3)  # t-SNE amplifies rounding: keep it short
    fused = exact_tsne(x, use_triton=True, **short)
    eager = exact_tsne(x.cpu(), use_triton=False, **short)
    results["exact_tsne/48"] = {
        "embedding": float((fused.cpu() - eager).abs().max()),
        "embedding_scale": float(eager.abs().max()),
    }
    return results


def interpreted_checks() -> dict:
    return _run_checks("cpu")


@pytest.fixture(scope="module")
def interpreted_results():
    return run_interpreted("tests.test_acm_kernels:interpreted_checks")


def _assert_close(case: dict, atol_rel: float):
    for key, value in case.items():
        if key.endswith("_scale"):
            continue
        stem = key.replace("_vs_torch", "").replace("_vs_numpy", "")
        scale = max(1.0, case.get(f"{stem}_scale", 1.0))
        assert value <= atol_rel * scale, f"{key}: {value} (scale {scale})"


@pytest.mark.parametrize("n,d,k,radius", CLASS_STATS_CASES)
def test_class_stats_kernel_interpreted(interpreted_results, n, d, k, radius):
    _assert_close(interpreted_results[f"class_stats/{n}x{d}/K{k}/{radius}"], 2e-5)


@pytest.mark.parametrize("n", TSNE_CASES)
def test_tsne_kernels_interpreted(interpreted_results, n):
    _assert_close(interpreted_results[f"tsne/{n}"], 2e-5)


def test_exact_tsne_driver_with_kernels_interpreted(interpreted_results):
    _assert_close(interpreted_results["exact_tsne/48"], 1e-3)


@pytest.mark.gpu
def test_kernels_on_gpu():
    for name, case in _run_checks("cuda").items():
        _assert_close(case, 1e-3 if name.startswith("exact_tsne") else 1e-4)


@pytest.mark.gpu
def test_exact_tsne_cuda_graphs_match_eager_triton():
    import torch

    from st_fast.cluster import exact_tsne

    x = torch.randn(300, 32, device="cuda")
    with_graphs = exact_tsne(x, cuda_graphs=True)
    without = exact_tsne(x, cuda_graphs=False)
    torch.testing.assert_close(with_graphs, without)
    on_cpu = exact_tsne(x.cpu())
    assert torch.isfinite(with_graphs).all() and with_graphs.shape == on_cpu.shape
