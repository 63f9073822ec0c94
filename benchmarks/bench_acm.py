"""ACM speed and quality: st_fast.acm against "scikit-learn TSNE, then the same statistics".

Data: N samples of D = 512 Gaussian features in K = 10 classes whose centres are scaled by
``spread`` (0 = no class structure; larger = more clustered), as a stand-in for penultimate
activations of an ACM subset (CIFAR-10: 100 images per class).

    python -m pytest benchmarks/bench_acm.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_acm.py [--rounds 5] [--threads 1,2] [--write [PAGE]]

The script form interleaves the candidates round by round (benchmarks/harness.py), records medians
of wall and process CPU time and the ratios to the scikit-learn baseline, once per thread count,
and checks quality: ACM over a sequence of increasingly
clustered inputs must rank like ACM on scikit-learn's t-SNE (Spearman >= 0.9), and kNN accuracy
in the embedding must be close to scikit-learn's. On the CPU the exact backend runs twice: the
fused C++ op (csrc/tsne_cpu.cpp, the default) and the dense torch path it replaces.
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import pytest
import torch
from harness import Run, add_output_flags, compiler_version, cuda_sync, interleave, parse_args
from st_fast.kernels import triton_usable
from st_fast.kernels.tsne_grad import tsne_gradient_reference

import st_fast
from st_fast.cluster import available_backends, class_statistics, class_statistics_numpy, tsne_embed
from st_fast.cluster import tsne as tsne_module
from st_fast.cluster.stats import class_index

N, D, K = 1000, 512, 10
SPREAD = 0.2  # kNN accuracy in raw space ~0.9: clustered, not trivially
QUALITY_LEVELS = [0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_features(n=N, d=D, k=K, spread=SPREAD, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = spread * rng.normal(size=(k, d))[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y


def sklearn_then_statistics(x, y):
    """The baseline: scikit-learn's TSNE (defaults), then the same class statistics."""
    from sklearn.manifold import TSNE

    emb = torch.from_numpy(TSNE(n_components=2, random_state=0).fit_transform(x))
    cls = class_index(torch.as_tensor(y), sorted(set(y.tolist())))
    return float(class_statistics(emb, cls, K).acm)


def _cpp_ok() -> bool:
    return DEVICE == "cpu" and tsne_module.cpp_status() == "ok"


def end_to_end_candidates(x, y):
    xt, yt = torch.from_numpy(x).to(DEVICE), torch.from_numpy(y).to(DEVICE)
    cands = {
        "st_fast.acm(X, y) (default: auto)": lambda: st_fast.acm(xt, yt),
        "sklearn TSNE + same statistics (baseline)": lambda: sklearn_then_statistics(x, y),
    }
    for backend in available_backends(DEVICE):
        cands[f"st_fast.acm backend={backend}"] = lambda b=backend: st_fast.acm(xt, yt, backend=b)
    if _cpp_ok():  # the default above runs the C++ op; this is the torch path it replaced
        torch_path = {"use_cpp": False}
        cands["st_fast.acm backend=exact, torch path"] = lambda: st_fast.acm(
            xt, yt, backend="exact", tsne_options=torch_path
        )
    cands["st_fast.acm embedding=pca"] = lambda: st_fast.acm(xt, yt, embedding="pca")
    cands["st_fast.acm embedding=None"] = lambda: st_fast.acm(xt, yt, embedding=None)
    return cands


def class_stats_candidates(n, d):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(n, d)).astype(np.float32)
    cls = rng.integers(0, K, n)
    zt = torch.from_numpy(z).to(DEVICE)
    ct = torch.from_numpy(cls).int().to(DEVICE)
    cands = {
        "torch (eager)": lambda: class_statistics(zt, ct, K, use_kernel=False).acm.item(),
        "numpy float64": lambda: class_statistics_numpy(z, cls, K)["acm"],
    }
    if triton_usable(DEVICE) and DEVICE == "cuda":
        cands["triton (fused)"] = lambda: class_statistics(zt, ct, K).acm.item()
    return cands


TSNE_NAMES = ["exact-cpp", "exact-torch", "exact", "cuml", "opentsne", "sklearn"]


def tsne_candidates(n, only=None):
    """t-SNE alone; on the CPU the exact backend as "exact-cpp" (C++ op) and "exact-torch".
    ``only``: the backends to keep (all available ones by default)."""
    x, _ = make_features(n=n)
    xt = torch.from_numpy(x).to(DEVICE)
    cands = {}
    for b in available_backends(DEVICE):
        if b == "exact" and _cpp_ok():
            cands["exact-cpp"] = lambda: tsne_embed(xt, backend="exact", use_cpp=True)
            cands["exact-torch"] = lambda: tsne_embed(xt, backend="exact", use_cpp=False)
        else:
            cands[b] = lambda b=b: tsne_embed(xt, backend=b)
    return {name: fn for name, fn in cands.items() if only is None or name.split("-")[0] in only}


# ---------------------------------------------------------------------------- pytest-benchmark

_X, _Y = make_features()


@pytest.mark.parametrize("name", list(end_to_end_candidates(_X, _Y)))
def test_acm_end_to_end(benchmark, name):
    fn = end_to_end_candidates(_X, _Y)[name]
    fn()  # warm-up (first-call allocations, kernel compilation)
    benchmark.pedantic(fn, rounds=3, iterations=1)


@pytest.mark.parametrize("n,d", [(1000, 2), (5000, 512)])
@pytest.mark.parametrize("impl", ["torch (eager)", "numpy float64", "triton (fused)"])
def test_class_statistics(benchmark, impl, n, d):
    cands = class_stats_candidates(n, d)
    if impl not in cands:
        pytest.skip("the fused kernel needs a GPU for timing (interpreter only on CPU)")
    cands[impl]()
    benchmark(cands[impl])


@pytest.mark.parametrize("n", [1000, 5000])
@pytest.mark.parametrize("backend", TSNE_NAMES)
def test_tsne(benchmark, backend, n):
    cands = tsne_candidates(n)
    if backend not in cands:
        pytest.skip(f"{backend} not available here")
    benchmark.pedantic(cands[backend], rounds=1, iterations=1, warmup_rounds=0)


# ---------------------------------------------------------------------------- script form


def knn_accuracy(z, y, k=5):
    z = torch.as_tensor(z, dtype=torch.float64)
    d = torch.cdist(z, z)
    d.fill_diagonal_(float("inf"))
    nn = d.topk(k, largest=False).indices
    votes = torch.nn.functional.one_hot(torch.as_tensor(y)[nn], K).sum(1)
    return float((votes.argmax(1) == torch.as_tensor(y)).double().mean())


def quality() -> dict:
    from scipy.stats import spearmanr
    from sklearn.manifold import TSNE

    ours, theirs, rows = [], [], []
    for spread in QUALITY_LEVELS:
        x, y = make_features(spread=spread)
        stats = st_fast.acm(torch.from_numpy(x).to(DEVICE), y, return_stats=True)
        emb = TSNE(n_components=2, random_state=0).fit_transform(x)
        ref = class_statistics_numpy(emb, y, K)["acm"]
        ours.append(stats.acm)
        theirs.append(ref)
        rows.append((spread, stats.acm, ref, knn_accuracy(stats.embedding.cpu(), y),
                     knn_accuracy(emb, y), knn_accuracy(x, y)))  # fmt: skip
    return {"rows": rows, "spearman": float(spearmanr(ours, theirs)[0])}


def path_agreement(seeds=(0, 1, 2)) -> tuple[dict, dict]:
    """ACM from the C++ and the torch exact paths, against the chaos of t-SNE itself.

    For each quality level and seed: the relative ACM difference between the two paths, and
    between the torch path on the features and on the features times (1 + 1e-6 noise).
    Returns {input: {figure: value}} and the median / max of both differences.
    """
    table, paths, chaos = {}, [], []
    for spread in QUALITY_LEVELS:
        for seed in seeds:
            x, y = make_features(spread=spread, seed=seed)
            noise = np.random.default_rng(100 + seed).standard_normal(x.shape).astype(np.float32)
            cpp = st_fast.acm(x, y, backend="exact", tsne_options={"use_cpp": True})
            ref = st_fast.acm(x, y, backend="exact", tsne_options={"use_cpp": False})
            moved = st_fast.acm(x * (1 + 1e-6 * noise), y, backend="exact",
                                tsne_options={"use_cpp": False})  # fmt: skip
            paths.append(abs(cpp - ref) / ref)
            chaos.append(abs(moved - ref) / ref)
            table[f"spread {spread}, seed {seed}"] = {
                "ACM C++": cpp, "ACM torch": ref, "ACM torch, features x (1 + 1e-6 noise)": moved,
                "rel. diff C++ vs torch": paths[-1], "rel. diff torch vs perturbed torch": chaos[-1]}
    summary = {"C++ vs torch": {"median": float(np.median(paths)), "max": max(paths)},
               "torch vs perturbed torch": {"median": float(np.median(chaos)), "max": max(chaos)}}
    return table, summary


def gradient_accuracy() -> dict:
    """One gradient from each CPU path against the float64 formula, at several layout scales.

    The start of a run (positions of standard deviation 1e-4) is where the dense torch path,
    which expands |y_i - y_j|^2 and forms rowsum(M) y - M Y, cancels most.
    """
    x = torch.from_numpy(make_features()[0])
    csr = tsne_module.perplexity_affinities_csr(x)
    p = tsne_module.perplexity_affinities(x)
    y0 = tsne_module.pca(x, 2)
    y0 = y0 / y0[:, 0].std() * 1e-4
    table = {}
    for std, alpha in [(1e-4, 12.0), (1e-2, 12.0), (1.0, 12.0), (10.0, 1.0)]:
        y = (y0 * (std / 1e-4)).contiguous()
        ref = tsne_gradient_reference(y.double(), p.double(), alpha)
        cpp = torch.ops.st_fast_tsne.gradient(y, *csr, alpha).double()
        dense = tsne_module._DenseGradient(N, "cpu")(y, p, alpha).double()
        err = [float((g - ref).norm() / ref.norm()) for g in (cpp, dense)]
        table[f"positions std {std:g}, exaggeration {alpha:g}"] = {
            "relative error, C++": err[0], "relative error, torch dense": err[1]}
    return table


@contextlib.contextmanager
def _limit_threads(threads: int):
    """torch's intra-op pool and the OpenMP/BLAS pools (scikit-learn, numpy) to ``threads``."""
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds at N = 1000")
    parser.add_argument("--large", type=int, default=5000, help="N of the large t-SNE run")
    parser.add_argument("--large-rounds", type=int, default=1, help="rounds at N = --large")
    parser.add_argument("--large-backends", default=None,
                        help="comma-separated t-SNE backends timed at N = --large (default: all here; "
                             "on a GPU, scikit-learn and openTSNE take minutes there)")
    parser.add_argument(
        "--threads", default="1,2",
        help="comma-separated thread counts; the timings run once for each, with torch and the "
        "OpenMP/BLAS pools of every backend limited to that many (0: leave the defaults). On a "
        "machine shared with other jobs OpenMP barriers stall on descheduled threads, so 1 gives "
        "the sanest timings there; CPU-time ratios survive the load better than wall times.",
    )  # fmt: skip
    add_output_flags(parser)
    args = parse_args(parser, argv)
    run = Run("acm", DEVICE, dists=("scikit-learn", "openTSNE"), argv=argv)
    if _cpp_ok():
        run.versions += f", C++ t-SNE: {tsne_module.cpp_implementation()} ({compiler_version()})"
    sync = cuda_sync(DEVICE)
    x, y = make_features()
    xl, yl = make_features(n=args.large)
    xlt, ylt = torch.from_numpy(xl).to(DEVICE), torch.from_numpy(yl).to(DEVICE)
    for i, threads in enumerate(int(t) for t in args.threads.split(",")):
        with _limit_threads(threads):
            label = f"{threads} thread(s)" if threads else "default threads"
            e2e = interleave(end_to_end_candidates(x, y), args.rounds, sync=sync)
            run.add_timings(f"ACM end to end, N = {N}, D = {D}, {label} ({args.rounds} rounds)", e2e,
                            baseline="sklearn TSNE + same statistics (baseline)")
            t = interleave(tsne_candidates(N), args.rounds, sync=sync)
            run.add_timings(f"t-SNE alone, N = {N}, D = {D}, {label} ({args.rounds} rounds)", t,
                            baseline="sklearn" if "sklearn" in t else None)
            cands = tsne_candidates(args.large, args.large_backends and args.large_backends.split(","))
            cands["ACM: st_fast.acm(X, y) (default: auto)"] = lambda: st_fast.acm(xlt, ylt)
            t = interleave(cands, args.large_rounds, warmup=0, sync=sync)
            run.add_timings(f"t-SNE alone, N = {args.large}, D = {D}, {label} ({args.large_rounds} "
                            "round(s)); last row: the whole ACM", t, baseline="sklearn" if "sklearn" in t else None)
            if i > 0:
                continue
            q = quality()
            setting = f"Quality: ACM over increasingly clustered inputs (N = {N}, D = {D})"
            run.add_table(setting, {f"spread {s}": {
                "ACM st_fast default": a, "ACM sklearn t-SNE": b, "kNN acc st_fast": c, "kNN acc sklearn": d,
                "kNN acc raw": e} for s, a, b, c, d, e in q["rows"]})
            run.add("Quality: rank agreement of the two ACM columns", "ACM st_fast default vs ACM sklearn t-SNE",
                    "Spearman rank correlation", q["spearman"])
            if _cpp_ok():
                run.add_table(f"Relative gradient error vs float64 (N = {N}, D = {D})", gradient_accuracy())
                table, summary = path_agreement()
                setting = f"ACM from the two exact CPU paths (N = {N}, D = {D}, {label})"
                run.add_table(setting, table)
                run.add_table(f"{setting}: relative difference over all {len(table)} inputs", summary)
            for n, d in [(1000, 2), (5000, 512)]:
                t = interleave(class_stats_candidates(n, d), max(args.rounds, 20), sync=sync)
                run.add_timings(f"Class statistics, N = {n}, D = {d}, K = {K}, {label}", t,
                                baseline="numpy float64")
    run.save(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
