"""ACM speed and quality: st_fast.acm against "scikit-learn TSNE, then the same statistics".

Data: N samples of D = 512 Gaussian features in K = 10 classes whose centres are scaled by
``spread`` (0 = no class structure; larger = more clustered), as a stand-in for penultimate
activations of an ACM subset (CIFAR-10: 100 images per class).

    python -m pytest benchmarks/bench_acm.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_acm.py [--rounds 5] [--threads 1,2] [--write benchmarks/results/acm_cpu.md]

The script form interleaves the candidates round by round (so load from other processes hits all
of them alike), reports medians of wall and process CPU time and the ratios to the scikit-learn
baseline, once per thread count, and checks quality: ACM over a sequence of increasingly
clustered inputs must rank like ACM on scikit-learn's t-SNE (Spearman >= 0.9), and kNN accuracy
in the embedding must be close to scikit-learn's. On the CPU the exact backend runs twice: the
fused C++ op (csrc/tsne_cpu.cpp, the default) and the dense torch path it replaces.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import time
from importlib import metadata

import numpy as np
import pytest
import torch
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


def tsne_candidates(n):
    """t-SNE alone; on the CPU the exact backend as "exact-cpp" (C++ op) and "exact-torch"."""
    x, _ = make_features(n=n)
    xt = torch.from_numpy(x).to(DEVICE)
    cands = {}
    for b in available_backends(DEVICE):
        if b == "exact" and _cpp_ok():
            cands["exact-cpp"] = lambda: tsne_embed(xt, backend="exact", use_cpp=True)
            cands["exact-torch"] = lambda: tsne_embed(xt, backend="exact", use_cpp=False)
        else:
            cands[b] = lambda b=b: tsne_embed(xt, backend=b)
    return cands


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


def _interleaved(cands: dict, rounds: int, sync, warmup: bool = True) -> dict[str, list]:
    """name -> [(wall s, process CPU s)] per round, the candidates taking turns each round."""
    times = {name: [] for name in cands}
    for fn in cands.values() if warmup else ():
        fn()  # first-call costs (allocations, kernel compilation) are not what we measure
    for _ in range(rounds):
        for name, fn in cands.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    return times


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


def path_agreement(seeds=(0, 1, 2)) -> list[str]:
    """ACM from the C++ and the torch exact paths, against the chaos of t-SNE itself.

    For each quality level and seed: the relative ACM difference between the two paths, and
    between the torch path on the features and on the features times (1 + 1e-6 noise).
    """
    rows, paths, chaos = [], [], []
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
            rows.append(f"| {spread} | {seed} | {cpp:.3f} | {ref:.3f} | {moved:.3f} | "
                        f"{paths[-1]:.3f} | {chaos[-1]:.3f} |")  # fmt: skip
    return ["| spread | seed | ACM C++ | ACM torch | ACM torch, features x (1 + 1e-6 noise) | "
            "rel. diff C++ vs torch | rel. diff torch vs perturbed torch |",
            "|---|---|---|---|---|---|---|", *rows, "",
            f"Relative ACM difference, median (max): C++ vs torch {np.median(paths):.3f} "
            f"({max(paths):.3f}); torch vs perturbed torch {np.median(chaos):.3f} "
            f"({max(chaos):.3f}).", ""]  # fmt: skip


def gradient_accuracy() -> list[str]:
    """One gradient from each CPU path against the float64 formula, at several layout scales.

    The start of a run (positions of standard deviation 1e-4) is where the dense torch path,
    which expands |y_i - y_j|^2 and forms rowsum(M) y - M Y, cancels most.
    """
    x = torch.from_numpy(make_features()[0])
    csr = tsne_module.perplexity_affinities_csr(x)
    p = tsne_module.perplexity_affinities(x)
    y0 = tsne_module.pca(x, 2)
    y0 = y0 / y0[:, 0].std() * 1e-4
    rows = []
    for std, alpha in [(1e-4, 12.0), (1e-2, 12.0), (1.0, 12.0), (10.0, 1.0)]:
        y = (y0 * (std / 1e-4)).contiguous()
        ref = tsne_gradient_reference(y.double(), p.double(), alpha)
        cpp = torch.ops.st_fast_tsne.gradient(y, *csr, alpha).double()
        dense = tsne_module._DenseGradient(N, "cpu")(y, p, alpha).double()
        err = [float((g - ref).norm() / ref.norm()) for g in (cpp, dense)]
        rows.append(f"| {std:g} | {alpha:g} | {err[0]:.1e} | {err[1]:.1e} |")
    return ["| positions std | exaggeration | C++ | torch dense |", "|---|---|---|---|", *rows, ""]


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln)
    except Exception:
        model = platform.processor()
    if DEVICE == "cuda":
        model += f"; GPU {torch.cuda.get_device_name()}"
    import triton

    versions = [f"torch {torch.__version__}", f"triton {triton.__version__}"]
    for dist in ("scikit-learn", "openTSNE"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    if _cpp_ok():
        versions.append(f"C++ t-SNE: {tsne_module.cpp_implementation()}")
    return f"{model}, {os.cpu_count()} cores; python {platform.python_version()}, " + ", ".join(
        versions
    )


def _load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"


def _table(times: dict, baseline: str | None) -> list[str]:
    """Medians of wall and CPU time; the ratios are baseline / candidate (> 1: faster)."""
    ratio_cols = " wall speed-up | CPU speed-up |" if baseline else ""
    lines = [f"| candidate | median wall (s) | min wall (s) | median CPU (s) |{ratio_cols}",
             "|---|---|---|---|" + ("---|---|" if baseline else "")]  # fmt: skip

    def medians(ts):
        return statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)

    base = medians(times[baseline]) if baseline else None
    for name, ts in times.items():
        wall, cpu = medians(ts)
        ratio = f" {base[0] / wall:.2f}x | {base[1] / max(cpu, 1e-9):.2f}x |" if baseline else ""
        lines.append(f"| {name} | {wall:.4f} | {min(t[0] for t in ts):.4f} | {cpu:.4f} |{ratio}")
    return lines


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
    parser.add_argument("--write", help="write the markdown report here (after every section)")
    parser.add_argument(
        "--threads", default="1,2",
        help="comma-separated thread counts; the timings run once for each, with torch and the "
        "OpenMP/BLAS pools of every backend limited to that many (0: leave the defaults). On a "
        "machine shared with other jobs OpenMP barriers stall on descheduled threads, so 1 gives "
        "the sanest timings there; CPU-time ratios survive the load better than wall times.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",")]

    def sync():
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    from st_fast.utils import atomic_write_text

    out = [f"# ACM benchmarks ({DEVICE})", "",
           f"- machine: {_machine()}",
           f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
           f"- command: `python benchmarks/bench_acm.py --rounds {args.rounds} --large {args.large}"
           f" --large-rounds {args.large_rounds} --threads {args.threads}`",
           f"- load average at the start: {_load()}",
           f"- data: N = {N} (and {args.large}), D = {D}, K = {K} Gaussian classes, centre spread "
           f"{SPREAD}",
           "- times: medians over interleaved rounds; CPU = process CPU time (all threads); "
           "speed-up = baseline / candidate", ""]  # fmt: skip

    def emit(lines):
        out.extend(lines)
        print("\n".join(lines), flush=True)
        if args.write:
            atomic_write_text(args.write, "\n".join(out) + "\n")

    emit([])
    x, y = make_features()
    xl, yl = make_features(n=args.large)
    xlt, ylt = torch.from_numpy(xl).to(DEVICE), torch.from_numpy(yl).to(DEVICE)
    for i, threads in enumerate(thread_counts):
        with _limit_threads(threads):
            label = f"{threads} thread(s)" if threads else "default threads"
            e2e = _interleaved(end_to_end_candidates(x, y), args.rounds, sync)
            emit([f"## ACM end to end, N = {N}, D = {D}, {label} ({args.rounds} rounds)", ""]
                 + _table(e2e, "sklearn TSNE + same statistics (baseline)") + [""])  # fmt: skip
            t = _interleaved(tsne_candidates(N), args.rounds, sync)
            emit([f"## t-SNE alone, N = {N}, D = {D}, {label} ({args.rounds} rounds)", ""]
                 + _table(t, "sklearn" if "sklearn" in t else None) + [""])  # fmt: skip
            cands = tsne_candidates(args.large)
            cands["ACM: st_fast.acm(X, y) (default: auto)"] = lambda: st_fast.acm(xlt, ylt)
            t = _interleaved(cands, args.large_rounds, sync, warmup=False)
            emit([f"## t-SNE alone, N = {args.large}, D = {D}, {label} ({args.large_rounds} "
                  "round(s)); last row: the whole ACM", ""]
                 + _table(t, "sklearn" if "sklearn" in t else None) + [""])  # fmt: skip
            if i > 0:
                continue
            q = quality()
            emit(["## Quality: ACM over increasingly clustered inputs (N = 1000, D = 512)", "",
                  "| spread | ACM st_fast default | ACM sklearn t-SNE | kNN acc st_fast | kNN acc sklearn | kNN acc raw |",
                  "|---|---|---|---|---|---|"]
                 + [f"| {s} | {a:.3f} | {b:.3f} | {c:.3f} | {d:.3f} | {e:.3f} |"
                    for s, a, b, c, d, e in q["rows"]]
                 + ["", f"Spearman rank correlation of the two ACM columns: **{q['spearman']:.3f}**",
                    ""])  # fmt: skip
            if _cpp_ok():
                emit([f"## Relative gradient error vs float64 (N = {N}, D = {D})", ""]
                     + gradient_accuracy())  # fmt: skip
                emit([f"## ACM from the two exact CPU paths (N = {N}, D = {D}, {label})", ""]
                     + path_agreement())  # fmt: skip
            for n, d in [(1000, 2), (5000, 512)]:
                t = _interleaved(class_stats_candidates(n, d), max(args.rounds, 20), sync)
                emit([f"## Class statistics, N = {n}, D = {d}, K = {K}, {label}", ""]
                     + _table(t, "numpy float64") + [""])  # fmt: skip
    emit([f"- load average at the end: {_load()}"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
