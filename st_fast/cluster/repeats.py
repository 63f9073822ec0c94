"""t-SNE of one feature matrix under several seeds, sharing what does not depend on the seed.

ACM near a threshold is noisy: t-SNE amplifies rounding, so one state read 3.39 or 3.55
depending on the path (docs/acm.md). ``st_fast.acm(..., repeats=k)`` reads it under k seeds.
For the exact backend the seeds share the affinities P (nearest neighbours and the bandwidth
bisection: the same for every seed) and only the seeded start and the iterations run k times;
seed ``s`` here gives the same embedding bits as ``run_exact_tsne(x, seed=s)``. The library
backends (cuML, openTSNE, scikit-learn) run once per seed.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from . import tsne as T


def tsne_repeats(x: torch.Tensor, seeds: list[int], backend: str = "auto",
                 perplexity: float = T.DEFAULT_PERPLEXITY, **exact_options) -> list[T.TSNERun]:
    """One :class:`~st_fast.cluster.tsne.TSNERun` per seed (same options as ``run_tsne``)."""
    name = T.select_backend(backend, x.shape[0], x.device)
    if name != "exact":
        return [T.run_tsne(x, backend=name, seed=s, perplexity=perplexity, **exact_options) for s in seeds]
    return _exact_repeats(x.detach().float(), seeds, perplexity, **exact_options)


def _exact_repeats(x, seeds, perplexity, *, n_iter_early=T.DEFAULT_N_ITER_EARLY,
                   n_iter_late=T.DEFAULT_N_ITER_LATE, early_exaggeration=T.DEFAULT_EARLY_EXAGGERATION,
                   learning_rate="auto", init="pca", min_gain=0.01, use_triton=None, cuda_graphs=True,
                   use_cpp=None):
    # the steps of run_exact_tsne, with the affinities computed once
    if init not in ("pca", "random"):
        raise UserError(f"init must be 'pca' or 'random', got {init!r}")
    n = x.shape[0]
    path = T._exact_backend(x.device, use_triton, use_cpp)
    p = T.perplexity_affinities_csr(x, perplexity) if path == "cpp" else T.perplexity_affinities(x, perplexity)
    lr = float(max(n / early_exaggeration, 50.0) if learning_rate == "auto" else learning_rate)
    phases = [(float(early_exaggeration), 0.5, n_iter_early), (1.0, 0.8, n_iter_late)]
    runs = []
    for seed in seeds:
        y = _start(x, seed, init)
        if path == "cpp":
            y, impl = T._optimise_cpp(y, p, phases, lr, float(min_gain)), T.cpp_implementation()
        elif path == "triton":
            y, impl = T._optimise_triton(y, p, phases, lr, float(min_gain), cuda_graphs), "triton"
        else:
            y, impl = T._optimise_eager(y, p, phases, lr, float(min_gain)), "torch"
        if not bool(torch.isfinite(y).all()):
            raise RuntimeError("t-SNE backend 'exact' produced non-finite coordinates")
        runs.append(T.TSNERun(y, "exact", impl))
    return runs


def _start(x: torch.Tensor, seed: int, init: str) -> torch.Tensor:
    """The seeded start of run_exact_tsne: PCA (or random) scaled to std 1e-4."""
    n = x.shape[0]
    if init == "pca":
        y = T.pca(x, 2, seed=seed)
        if y.shape[1] < 2:
            y = torch.cat([y, T._random_init(n, seed, x.device)[:, 1:] * y.std()], 1)
    else:
        y = T._random_init(n, seed, x.device)
    return (y / y[:, 0].std().clamp_min(1e-12) * 1e-4).contiguous()
