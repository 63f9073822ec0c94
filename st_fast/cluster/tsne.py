"""2-D t-SNE for ACM: an exact dense t-SNE in torch, plus cuML, openTSNE and scikit-learn.

``run_tsne(features, backend=...)`` returns the (N, 2) embedding, the backend that ran and, for
"exact", how it ran (``tsne_embed`` the first two). Both choices go through the fast-path
registry (st_fast.backends): ``TSNE`` (exact, cuML, openTSNE, scikit-learn) and ``EXACT_TSNE``
(the iterations of the exact backend: C++ op, Triton kernels, torch reference).

The "exact" backend follows the standard algorithm (van der Maaten & Hinton 2008; the optimiser
of van der Maaten's reference code and scikit-learn):
  1. Initialisation: the 2-D PCA projection, scaled to standard deviation 1e-4.
  2. Affinities: for every point a Gaussian over its ``3 * perplexity`` nearest neighbours with
     the bandwidth found by bisection so that the entropy equals log(perplexity); then
     symmetrised, P = (P_cond + P_cond^T) / (2N), stored dense (N x N float32), or in CSR form
     for the C++ path.
  3. Gradient descent on KL(P || Q) with the exact (dense, O(N^2)) Student-t gradient:
     early exaggeration for the first ``n_iter_early`` iterations with momentum 0.5, then
     momentum 0.8; adaptive gains; learning rate max(N / early_exaggeration, 50).
On the CPU the iterations run in a fused C++ op (csrc/tsne_cpu.cpp, built on first use): P in
CSR form, the repulsion and Z summed on the fly over the pairs (each pair once), nothing N x N
stored. Where it cannot be built, a warning says why (once) and the torch reference runs: each
iteration a handful of large torch ops (one N x N pass builds the kernel matrix, one GEMM with a
(3 x N) matrix gives both the force sums and row sums). On CUDA each iteration is two Triton
kernels (kernels/tsne_grad.py) and the loop is replayed from CUDA graphs. ``run_exact_tsne``
returns which of these ran.

Affinities use distances in the full feature space, as scikit-learn and openTSNE do.
Iteration counts: ``DEFAULT_N_ITER_EARLY`` + ``DEFAULT_N_ITER_LATE`` (see docs/acm.md for the
measurement behind them): far fewer than scikit-learn's 1000 because ACM only needs the cluster
geometry, which with PCA initialisation and this learning rate has settled by then.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import NamedTuple

import numpy as np
import torch

from ..backends import FastPath, only_on
from ..csrc import SOURCE_DIR
from ..csrc.build import OnDemandExtension
from ..errors import UserError
from ..kernels import triton_device_reason, triton_missing

DEFAULT_PERPLEXITY = 30.0
DEFAULT_EARLY_EXAGGERATION = 12.0
DEFAULT_N_ITER_EARLY = 250
DEFAULT_N_ITER_LATE = 350
# Largest N for which "auto" picks the exact backend (O(N^2) time per iteration): on the CPU
# 2500 for the torch path (O(N^2) memory too), 10000 with the C++ op (measured at N = 5000, one
# thread: 3.5 s CPU against ~70 s for openTSNE; its affinity step still builds an N x N distance
# matrix, 400 MB at 10000).
EXACT_AUTO_MAX_N_CPU = 2500
EXACT_AUTO_MAX_N_CPU_CPP = 10000
EXACT_AUTO_MAX_N_CUDA = 20000
CUDA_GRAPH_CHUNK = 25  # iterations captured per CUDA graph


# ---------------------------------------------------------------------------------------------
# PCA (also used for ACM's embedding="pca")
# ---------------------------------------------------------------------------------------------


def pca(x: torch.Tensor, dims: int = 2, seed: int = 0, iters: int = 30) -> torch.Tensor:
    """Project ``x`` (N, D) onto (an orthonormal basis of) its top-``dims`` principal subspace.

    Subspace (block power) iteration from a seeded random start, orthonormalised by Gram-Schmidt:
    only matrix products, no LAPACK call (MKL's SVD/eigh were seconds-slow on busy 2-core
    machines). The basis is the principal subspace up to a rotation, which is all ACM and the
    t-SNE initialisation need: distances within the projection do not depend on the rotation.
    Deterministic for a given seed on a given device.
    """
    x = x.float()
    xc = x - x.mean(0, keepdim=True)
    dims = max(1, min(dims, *xc.shape))
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(xc.shape[1], dims, generator=gen).to(xc.device)
    for _ in range(iters):
        # (xc^T xc) basis written as (dims x K) @ (K x M) products: measured 5x faster on the CPU
        # (MKL, one thread, 1000 x 512) than xc.T @ (xc @ basis), whose thin operand is slow.
        basis = _orthonormal_columns(((basis.T @ xc.T) @ xc).T)
    return xc @ basis


def _orthonormal_columns(a: torch.Tensor) -> torch.Tensor:
    """Modified Gram-Schmidt; a column that vanishes (rank-deficient data) stays zero."""
    cols = []
    for j in range(a.shape[1]):
        v = a[:, j]
        for q in cols:
            v = v - (q @ v) * q
        norm = v.norm()
        # no host sync: this runs on the GPU too
        cols.append(torch.where(norm > 1e-30, v / norm.clamp_min(1e-30), torch.zeros_like(v)))
    return torch.stack(cols, 1)


# ---------------------------------------------------------------------------------------------
# Affinities
# ---------------------------------------------------------------------------------------------


def _conditional_affinities(sqdist: torch.Tensor, perplexity: float, steps: int = 64):
    """Row-wise Gaussian affinities over neighbour squared distances (N, k), entropy = log(perp).

    Bisection on the precision beta per row, all rows at once. Distances are shifted by the row
    minimum (cancels in the normalisation) and scaled by the row mean so that beta starts near
    its answer and nothing under- or overflows. float64: it is only N x k.
    """
    dist = sqdist.double()
    dist = dist - dist[:, :1]
    dist = dist / dist.mean(1, keepdim=True).clamp_min(1e-12)
    target = math.log(perplexity)
    n = dist.shape[0]
    beta = torch.ones(n, 1, dtype=dist.dtype, device=dist.device)
    lo = torch.zeros_like(beta)
    hi = torch.full_like(beta, math.inf)
    for _ in range(steps):
        w = torch.exp(-dist * beta)
        total = w.sum(1, keepdim=True)
        entropy = torch.log(total) + beta * (dist * w).sum(1, keepdim=True) / total
        too_flat = entropy > target  # need a narrower Gaussian: larger beta
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
    w = torch.exp(-dist * beta)
    return w / w.sum(1, keepdim=True)


def _neighbour_affinities(x: torch.Tensor, perplexity: float):
    """The ``3 * perplexity`` nearest neighbours of each row (N, k) and P_cond over them."""
    n = x.shape[0]
    perplexity = min(float(perplexity), (n - 1) / 3.0)  # as openTSNE: at least 3*perp neighbours
    k = max(1, min(n - 1, int(3 * perplexity)))
    sq = x.square().sum(1)
    d2 = torch.addmm(sq[:, None] + sq[None, :], x, x.T, alpha=-2.0).clamp_min_(0.0)
    d2.fill_diagonal_(math.inf)
    knn_d2, knn_idx = d2.topk(k, dim=1, largest=False)
    return knn_idx, _conditional_affinities(knn_d2, max(perplexity, 1.0)).float()


def perplexity_affinities(x: torch.Tensor, perplexity: float = DEFAULT_PERPLEXITY):
    """Symmetric joint affinities P (N x N float32, sums to 1, zero diagonal)."""
    n = x.shape[0]
    knn_idx, cond = _neighbour_affinities(x, perplexity)
    p = torch.zeros(n, n, dtype=torch.float32, device=x.device)
    p.scatter_(1, knn_idx, cond)
    p += p.T.clone()
    return p / p.sum()


def perplexity_affinities_csr(x: torch.Tensor, perplexity: float = DEFAULT_PERPLEXITY):
    """The same P in CSR form, never dense: (indptr int32 (N+1,), indices int32, values float32).

    P_cond has k entries per row, so P_cond + P_cond^T has between k and 2k. Entries are keyed
    by row * N + column; sorting the keys gives the CSR order, and p_ij + p_ji is added where
    both are stored (a sum of two, as in the dense path).
    """
    n = x.shape[0]
    knn_idx, cond = _neighbour_affinities(x, perplexity)
    rows = torch.arange(n, device=x.device).repeat_interleave(knn_idx.shape[1])
    cols = knn_idx.flatten()
    keys, slot = torch.unique(torch.cat([rows * n + cols, cols * n + rows]), return_inverse=True)
    both = cond.flatten().repeat(2)
    values = torch.zeros(keys.shape[0], device=x.device).index_add_(0, slot, both)
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=x.device)
    indptr[1:] = torch.bincount(keys // n, minlength=n).cumsum(0)
    return indptr.int(), (keys % n).int(), values / values.sum()


# ---------------------------------------------------------------------------------------------
# Exact t-SNE optimisation
# ---------------------------------------------------------------------------------------------


class _DenseGradient:
    """The exact gradient with large torch ops; buffers reused across iterations.

    With W = 1 / (1 + D^2) (diagonal included) and Z = sum(W) - N:
        M      = P * W - W^2 / (alpha * Z)             (the diagonal cancels below)
        grad_i = 4 * alpha * (rowsum(M)_i * y_i - (M Y)_i)
    and [M Y | rowsum M] come from one GEMM of (3 x N) [y_0; y_1; 1] with the symmetric M.
    """

    def __init__(self, n: int, device):
        self.kernel = torch.empty(n, n, device=device)
        self.m = torch.empty(n, n, device=device)
        self.y3 = torch.ones(3, n, device=device)

    def __call__(self, y: torch.Tensor, p: torch.Tensor, exaggeration: float) -> torch.Tensor:
        n = y.shape[0]
        sq = y.square().sum(1)
        w = torch.addmm(sq[:, None] + 1.0, y, y.T, alpha=-2.0, out=self.kernel)
        w.add_(sq[None, :]).clamp_min_(1.0).reciprocal_()
        z = float(w.sum()) - n
        m = torch.mul(p, w, out=self.m)
        m.addcmul_(w, w, value=-1.0 / (exaggeration * z))
        self.y3[:2] = y.T
        g = self.y3 @ m  # (3, N)
        return (4.0 * exaggeration) * (g[2][:, None] * y - g[:2].T)


# The fused C++ iterations for the CPU (csrc/tsne_cpu.cpp): the same gradient and update as
# _DenseGradient + tsne_update_reference, with P in CSR form and the repulsion summed on the fly
# over the pairs, so nothing N x N is stored. -ffp-contract=fast lets gcc fuse a * b + c into an
# fma in the AVX2 copy (faster; not bit-comparable with torch anyway, whose GEMM sums in another
# order); -fno-trapping-math lets the gains select vectorise; -fopenmp: without it
# at::parallel_for, a header template, compiles to a serial loop.
_CPP_EXTENSION = OnDemandExtension(
    "st_fast_tsne_cpu",
    (SOURCE_DIR / "tsne_cpu.cpp",),
    "the C++ t-SNE kernel",
    extra_cflags=["-O3", "-ffp-contract=fast", "-fno-trapping-math", "-fno-math-errno", "-fopenmp"],
    extra_ldflags=["-fopenmp"],
    is_python_module=False,  # registers torch.ops.st_fast_tsne.*
)

EXACT_TSNE = FastPath(
    "tsne-exact",
    "exact t-SNE",
    auto={"cpu": ("cpp", "torch"), "cuda": ("triton", "torch"), "*": ("torch",)},
)
EXACT_TSNE.add(
    "cpp",
    "fused C++ iterations, P in CSR form (csrc/tsne_cpu.cpp); built on first use",
    detect=_CPP_EXTENSION.detect,
    runs_on=only_on("cpu"),
    built=True,
)
EXACT_TSNE.add(
    "triton",
    "two Triton kernels per iteration, replayed from CUDA graphs (kernels/tsne_grad.py)",
    detect=triton_missing,
    runs_on=triton_device_reason,
)
EXACT_TSNE.add("torch", "dense torch reference: a few large ops per iteration")


def cpp_status() -> str:
    """Return "ok" or why the C++ t-SNE kernel cannot run; builds or loads it on the first call.

    The first build on a machine takes ~20-40 s (2-core development CPU); later processes only
    check and load it (about a second). A failure is remembered for the process.
    """
    return EXACT_TSNE.status("cpp") or "ok"


def cpp_implementation() -> str:
    """Which copy of the C++ loops runs on this CPU, "cpp-avx2" or "cpp-baseline" (builds it)."""
    _CPP_EXTENSION.load()
    return "cpp-" + torch.ops.st_fast_tsne.isa()


def _exact_backend(device, use_triton: bool | None, use_cpp: bool | None) -> str:
    """The EXACT_TSNE backend for these flags: True requires a backend, False rules it out,
    None lets "auto" decide. ST_FAST_TSNE_CPP=0 rules the C++ op out too (e.g. to compare ACM
    readings with runs made before it existed; the torch path depends on the thread count)."""
    if use_triton:
        return EXACT_TSNE.select("triton", [device]).name
    if use_cpp:
        return EXACT_TSNE.select("cpp", [device]).name
    skip = {}
    if use_triton is False:
        skip["triton"] = "use_triton=False"
    if use_cpp is False:
        skip["cpp"] = "use_cpp=False"
    elif os.environ.get("ST_FAST_TSNE_CPP") == "0":
        skip["cpp"] = "ST_FAST_TSNE_CPP=0"
    return EXACT_TSNE.select("auto", [device], skip=skip).name


def _optimise_cpp(y, p_csr, phases, learning_rate, min_gain):
    """All iterations of a phase in one call of the C++ op (in place on y)."""
    update, gains = torch.zeros_like(y), torch.ones_like(y)
    for exaggeration, momentum, iters in phases:
        torch.ops.st_fast_tsne.optimise(
            y, update, gains, *p_csr, exaggeration, momentum, learning_rate, min_gain, iters
        )
    return y


def _optimise_eager(y, p, phases, learning_rate, min_gain):
    from ..kernels.tsne_grad import tsne_update_reference

    gradient = _DenseGradient(y.shape[0], y.device)
    update, gains = torch.zeros_like(y), torch.ones_like(y)
    for exaggeration, momentum, iters in phases:
        for _ in range(iters):
            grad = gradient(y, p, exaggeration)
            tsne_update_reference(y, grad, update, gains, momentum, learning_rate, min_gain)
    return y


def _optimise_triton(y, p, phases, learning_rate, min_gain, cuda_graphs=True):
    """Two Triton kernels per iteration; on CUDA, chunks of iterations replay from CUDA graphs."""
    from ..kernels.tsne_grad import TSNEScratch, tsne_step

    update, gains = torch.zeros_like(y), torch.ones_like(y)
    scratch = TSNEScratch(y.shape[0], y.device)
    use_graphs = cuda_graphs and y.device.type == "cuda"
    for exaggeration, momentum, iters in phases:

        def step(exaggeration=exaggeration, momentum=momentum):
            tsne_step(y, p, update, gains, exaggeration, momentum, learning_rate, min_gain, scratch)

        done = 0
        if use_graphs and iters > CUDA_GRAPH_CHUNK:
            # Warm up (compiles the kernels) on a side stream, as graph capture requires.
            side = torch.cuda.Stream(device=y.device)
            side.wait_stream(torch.cuda.current_stream(y.device))
            with torch.cuda.stream(side):
                step()
            torch.cuda.current_stream(y.device).wait_stream(side)
            done = 1
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(CUDA_GRAPH_CHUNK):
                    step()
            while iters - done >= CUDA_GRAPH_CHUNK:
                graph.replay()
                done += CUDA_GRAPH_CHUNK
        for _ in range(iters - done):
            step()
    return y


def run_exact_tsne(
    features: torch.Tensor,
    *,
    seed: int = 0,
    perplexity: float = DEFAULT_PERPLEXITY,
    n_iter_early: int = DEFAULT_N_ITER_EARLY,
    n_iter_late: int = DEFAULT_N_ITER_LATE,
    early_exaggeration: float = DEFAULT_EARLY_EXAGGERATION,
    learning_rate: float | str = "auto",
    init: str = "pca",
    min_gain: float = 0.01,
    use_triton: bool | None = None,
    cuda_graphs: bool = True,
    use_cpp: bool | None = None,
) -> tuple[torch.Tensor, str]:
    """Exact t-SNE in float32 on ``features``' device -> ((N, 2) embedding, implementation).

    The implementation is "cpp-avx2" / "cpp-baseline" (the fused C++ op on the CPU, used when
    it builds; a failed build warns once and the torch path runs), "torch" (the dense
    reference) or "triton" (CUDA). ``use_cpp`` / ``use_triton``: True requires that path,
    False rules it out, None lets the registry pick.
    """
    x = features.detach().float()
    n = x.shape[0]
    backend = _exact_backend(x.device, use_triton, use_cpp)
    cpp = backend == "cpp"
    p = perplexity_affinities_csr(x, perplexity) if cpp else perplexity_affinities(x, perplexity)
    if init == "pca":
        y = pca(x, 2, seed=seed)
        if y.shape[1] < 2:  # one-dimensional features: a random second coordinate
            y = torch.cat([y, _random_init(n, seed, x.device)[:, 1:] * y.std()], 1)
    elif init == "random":
        y = _random_init(n, seed, x.device)
    else:
        raise UserError(f"init must be 'pca' or 'random', got {init!r}")
    y = (y / y[:, 0].std().clamp_min(1e-12) * 1e-4).contiguous()
    if learning_rate == "auto":
        learning_rate = max(n / early_exaggeration, 50.0)
    phases = [(float(early_exaggeration), 0.5, n_iter_early), (1.0, 0.8, n_iter_late)]
    learning_rate, min_gain = float(learning_rate), float(min_gain)
    if cpp:
        return _optimise_cpp(y, p, phases, learning_rate, min_gain), cpp_implementation()
    if backend == "triton":
        return _optimise_triton(y, p, phases, learning_rate, min_gain, cuda_graphs), "triton"
    return _optimise_eager(y, p, phases, learning_rate, min_gain), "torch"


def exact_tsne(features: torch.Tensor, **options) -> torch.Tensor:
    """The embedding of :func:`run_exact_tsne` (same options)."""
    return run_exact_tsne(features, **options)[0]


def _random_init(n: int, seed: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=gen).to(device)


# ---------------------------------------------------------------------------------------------
# Library backends
# ---------------------------------------------------------------------------------------------


def _import_reason(*modules: str) -> str | None:
    """Why one of ``modules`` does not import here (None: all do)."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken CUDA runtime under it
            return f"{module} not importable ({type(exc).__name__}: {exc})"
    return None


def _cuml_reason() -> str | None:
    reason = _import_reason("cuml.manifold", "cupy")
    if reason is None:
        import cupy

        if not cupy.cuda.is_available():
            reason = "cupy sees no CUDA device"
    return reason


TSNE = FastPath(
    "tsne",
    "t-SNE",
    auto={
        "cpu": ("exact", "opentsne", "sklearn"),
        "cuda": ("exact", "cuml", "opentsne", "sklearn"),
    },
)
TSNE.add("exact", "exact dense t-SNE, this module (iterations: fast path tsne-exact)")
TSNE.add("cuml", "cuML TSNE (GPU)", detect=_cuml_reason, runs_on=only_on("cuda"))
TSNE.add("opentsne", "openTSNE (CPU, FFT-accelerated)", detect=lambda: _import_reason("openTSNE"))
TSNE.add("sklearn", "scikit-learn's TSNE (CPU)", detect=lambda: _import_reason("sklearn.manifold"))
BACKENDS = tuple(TSNE.backends)


def _cuml_tsne(x: torch.Tensor, seed: int, perplexity: float) -> torch.Tensor:
    import cupy
    from cuml.manifold import TSNE

    # Zero-copy hand-over: the CUDA tensor's memory is shared with CuPy through DLPack.
    x_cp = cupy.from_dlpack(x.detach().float().contiguous())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = TSNE(n_components=2, perplexity=perplexity, random_state=seed).fit_transform(x_cp)
    out = cupy.asarray(out, dtype=cupy.float32)
    return torch.from_dlpack(out).to(x.device)


def _opentsne_tsne(x: torch.Tensor, seed: int, perplexity: float) -> torch.Tensor:
    import openTSNE

    x_np = x.detach().float().cpu().numpy().astype(np.float64)
    tsne = openTSNE.TSNE(
        perplexity=perplexity, random_state=seed, n_jobs=torch.get_num_threads(), verbose=False
    )
    return torch.from_numpy(np.asarray(tsne.fit(x_np), dtype=np.float32))


def _sklearn_tsne(x: torch.Tensor, seed: int, perplexity: float) -> torch.Tensor:
    from sklearn.manifold import TSNE

    x_np = x.detach().float().cpu().numpy()
    tsne = TSNE(n_components=2, perplexity=min(perplexity, x_np.shape[0] - 1.0), random_state=seed)
    return torch.from_numpy(tsne.fit_transform(x_np).astype(np.float32))


def available_backends(device="cpu") -> list[str]:
    """Backends that can run on tensors of ``device``, fastest first for N around 1000."""
    return TSNE.available(device)


def select_backend(backend: str, n: int, device) -> str:
    """Resolve ``backend`` ("auto" or a name) for N samples on ``device``; UserError if unusable.

    "auto" keeps the exact backend up to a size (it is O(N^2)), then the first library that
    runs here, and the exact backend again when none does."""
    if backend != "auto":
        return TSNE.select(backend, [device]).name
    kind = torch.device(device).type
    limit = EXACT_AUTO_MAX_N_CUDA if kind == "cuda" else EXACT_AUTO_MAX_N_CPU
    if kind == "cpu" and limit < n <= EXACT_AUTO_MAX_N_CPU_CPP and cpp_status() == "ok":
        limit = EXACT_AUTO_MAX_N_CPU_CPP
    if n <= limit:
        return "exact"
    libraries = [name for name in TSNE.auto.get(kind, ()) if name != "exact"]
    return TSNE.select("auto", [device], order=(*libraries, "exact")).name


class TSNERun(NamedTuple):
    embedding: torch.Tensor  # (N, 2) float32 on the input's device
    backend: str  # "exact", "cuml", "opentsne", "sklearn"
    implementation: str  # how "exact" ran ("cpp-avx2", "torch", "triton", ...), else "-"


def run_tsne(
    features,
    *,
    backend: str = "auto",
    seed: int = 0,
    perplexity: float = DEFAULT_PERPLEXITY,
    **exact_options,
) -> TSNERun:
    """2-D t-SNE of ``features`` (N, D): the embedding and which backend (and path) ran.

    ``exact_options`` go to :func:`run_exact_tsne` (iteration counts, learning rate, init, ...);
    the library backends use their own defaults with ``random_state=seed``.
    """
    x = torch.as_tensor(features)
    name = select_backend(backend, x.shape[0], x.device)
    implementation = "-"
    if name == "exact":
        emb, implementation = run_exact_tsne(x, seed=seed, perplexity=perplexity, **exact_options)
    elif name == "cuml":
        emb = _cuml_tsne(x, seed, perplexity)
    elif name == "opentsne":
        emb = _opentsne_tsne(x, seed, perplexity)
    else:
        emb = _sklearn_tsne(x, seed, perplexity)
    emb = emb.to(x.device)
    if not bool(torch.isfinite(emb).all()):
        raise RuntimeError(f"t-SNE backend {name!r} produced non-finite coordinates")
    return TSNERun(emb, name, implementation)


def tsne_embed(features, **options) -> tuple[torch.Tensor, str]:
    """(embedding (N, 2), backend) of :func:`run_tsne` (same options)."""
    run = run_tsne(features, **options)
    return run.embedding, run.backend
