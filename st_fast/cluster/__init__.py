"""Activation Cluster Measurement (ACM) and the 2-D embeddings it runs on.

st_fast.acm(features, labels)                      # float
st_fast.acm(features, labels, return_stats=True)   # ACMStats: centroids, radii, timings, ...
tsne_embed(features, backend="auto")               # (N, 2) embedding, backend that ran
run_tsne(features)                                 # TSNERun: embedding, backend, implementation
"""

from .acm import ACMStats, acm
from .stats import class_statistics, class_statistics_numpy, run_class_statistics
from .tsne import (
    available_backends,
    exact_tsne,
    pca,
    run_exact_tsne,
    run_tsne,
    tsne_embed,
)

__all__ = [
    "ACMStats",
    "acm",
    "available_backends",
    "class_statistics",
    "class_statistics_numpy",
    "exact_tsne",
    "pca",
    "run_class_statistics",
    "run_exact_tsne",
    "run_tsne",
    "tsne_embed",
]
