"""ACM: public API, input checks, statistics against the float64 reference, exact t-SNE quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from st_fast.kernels.tsne_grad import tsne_gradient_reference

import st_fast
from st_fast.cluster import class_statistics, class_statistics_numpy, exact_tsne, pca, tsne_embed
from st_fast.cluster.stats import class_index
from st_fast.cluster.tsne import _DenseGradient, perplexity_affinities, select_backend
from st_fast.errors import UserError

from .helpers import blobs, knn_accuracy

pytestmark = pytest.mark.usefixtures("one_thread_all")


# ------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("radius", ["mean", "rms", "max"])
@pytest.mark.parametrize("n,d,k", [(40, 2, 2), (301, 2, 10), (120, 37, 7)])
def test_class_statistics_match_float64_reference(n, d, k, radius):
    rng = np.random.default_rng(n + d + k)
    z = rng.normal(size=(n, d)).astype(np.float32) * 5
    cls = rng.integers(-1, k, size=n)
    cls[: 2 * k] = np.repeat(np.arange(k), 2)
    got = class_statistics(torch.from_numpy(z), torch.from_numpy(cls).int(), k, radius)
    ref = class_statistics_numpy(z, cls, k, radius)
    np.testing.assert_allclose(float(got.acm), ref["acm"], rtol=1e-5)
    np.testing.assert_allclose(got.centroids.numpy(), ref["centroids"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.radii.numpy(), ref["radii"], rtol=1e-5)
    np.testing.assert_allclose(got.distances.numpy(), ref["distances"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.counts.numpy(), ref["counts"])


def test_acm_formula_by_hand():
    # two classes of two points: centroids (0,0) and (4,0), every point at distance 1
    z = np.array([[0, 1], [0, -1], [4, 1], [4, -1]], dtype=np.float32)
    y = np.array([0, 0, 1, 1])
    # ACM = 1/(2*1) * (4/(1+1) + 4/(1+1)) = 2
    assert st_fast.acm(z, y, embedding=None) == pytest.approx(2.0)
    assert st_fast.acm(z, y, embedding=None, radius="max") == pytest.approx(2.0)


def test_acm_is_scale_and_translation_invariant():
    x, y = blobs(n=90, d=5, k=3)
    base = st_fast.acm(x, y, embedding=None)
    assert st_fast.acm(x * 7.5 + 3.0, y, embedding=None) == pytest.approx(base, rel=1e-5)


# ------------------------------------------------------------------------------ public API


def test_acm_public_api_tsne_default_returns_float_and_stats():
    x, y = blobs(n=120, d=16, k=4, spread=1.0)
    value = st_fast.acm(torch.from_numpy(x), torch.from_numpy(y))
    assert isinstance(value, float) and np.isfinite(value) and value > 0
    stats = st_fast.acm(x, y, return_stats=True)
    assert stats.acm == value  # numpy and torch inputs, same seed: same answer
    assert stats.backend == "exact" and stats.embedding_kind == "tsne"
    assert stats.embedding.shape == (120, 2)
    assert stats.centroids.shape == (4, 2) and stats.distances.shape == (4, 4)
    assert stats.classes == [0, 1, 2, 3]
    assert set(stats.timings) == {"validate", "embed", "stats", "total"}
    ref = class_statistics_numpy(stats.embedding.numpy(), stats.row_class.numpy(), 4)
    assert stats.acm == pytest.approx(ref["acm"], rel=1e-5)


def test_acm_classes_selects_and_embeds_only_those_samples():
    x, y = blobs(n=120, d=8, k=4)
    first2 = st_fast.acm(x, y, embedding=None, classes=2, return_stats=True)
    listed = st_fast.acm(x, y, embedding=None, classes=[0, 1], return_stats=True)
    assert first2.classes == listed.classes == [0, 1]
    assert first2.acm == pytest.approx(listed.acm)
    assert first2.embedding.shape[0] == 60
    sub = y < 2
    assert first2.acm == pytest.approx(st_fast.acm(x[sub], y[sub], embedding=None))
    stats = st_fast.acm(x, y, embedding="pca", classes=[3, 1], return_stats=True)
    assert stats.classes == [3, 1] and stats.embedding.shape == (60, 2)


def test_acm_deterministic_per_seed_on_cpu():
    x, y = blobs(n=100, d=12, k=4)
    a = st_fast.acm(x, y, seed=3, return_stats=True)
    b = st_fast.acm(x, y, seed=3, return_stats=True)
    assert torch.equal(a.embedding, b.embedding) and a.acm == b.acm
    random_init = {"init": "random"}
    c = st_fast.acm(x, y, seed=1, tsne_options=random_init, return_stats=True)
    d = st_fast.acm(x, y, seed=2, tsne_options=random_init, return_stats=True)
    assert not torch.equal(c.embedding, d.embedding)


def test_pca_embedding_spans_top_principal_subspace():
    x, _ = blobs(n=150, d=10, k=3)
    proj = pca(torch.from_numpy(x), 2).double()
    xc = x - x.mean(0)
    u, s, _ = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
    top2 = u[:, :2] * s[:2]
    # same subspace: projecting one onto the other loses nothing
    q, _ = np.linalg.qr(top2)
    residual = proj.numpy() - q @ (q.T @ proj.numpy())
    assert np.abs(residual).max() < 1e-3 * np.abs(proj.numpy()).max()
    # and the same pairwise geometry, hence the same ACM
    np.testing.assert_allclose(
        torch.cdist(proj, proj).numpy(), torch.cdist(*(torch.from_numpy(top2),) * 2).numpy(),
        rtol=1e-3, atol=1e-3,
    )  # fmt: skip


# ------------------------------------------------------------------------------ bad input


def _raises(match, *args, **kwargs):
    with pytest.raises(UserError, match=match) as info:
        st_fast.acm(*args, **kwargs)
    assert isinstance(info.value, ValueError)


def test_bad_inputs_raise_user_error_naming_the_problem():
    x, y = blobs(n=40, d=4, k=2)
    bad = x.copy()
    bad[3, 1] = np.nan
    _raises("NaN/Inf.*row 3", bad, y)
    bad[3, 1] = np.inf
    _raises("NaN/Inf", torch.from_numpy(bad), y)
    _raises("40 rows but labels has 39", x, y[:-1])
    _raises("integer class ids.*entry 0", x, y + 0.5)
    _raises("integer class ids", x, np.where(np.arange(40) == 5, np.nan, y))
    one_sample = y.copy()
    one_sample[0] = 7
    _raises("at least 2 samples.*class 7: 1", x, one_sample, embedding=None)
    _raises("at least 2 classes", x, np.zeros(40, dtype=int), embedding=None)
    _raises("absent from the data: \\[5\\]", x, y, classes=[0, 5])
    _raises("labels hold only 2 classes", x, y, classes=3)
    _raises("2-D", x[:, 0], y)
    _raises("embedding must be", x, y, embedding="umap")
    _raises("radius must be", x, y, radius="median")
    _raises("backend must be", x, y, backend="bh")
    _raises("numeric", x, np.array(["a", "b"] * 20))


def test_collapsed_classes_raise_instead_of_nan():
    x = np.zeros((8, 3), dtype=np.float32)
    x[4:] = 1.0
    y = np.array([0] * 4 + [1] * 4)
    _raises("radius 0", x, y, embedding=None)


def test_float_labels_with_whole_values_are_accepted():
    x, y = blobs(n=40, d=4, k=2)
    assert st_fast.acm(x, y.astype(np.float64), embedding=None) == pytest.approx(
        st_fast.acm(x, y, embedding=None)
    )


def test_backend_selection():
    assert select_backend("auto", 1000, "cpu") == "exact"
    assert select_backend("auto", 100_000, "cpu") in ("opentsne", "sklearn")
    with pytest.raises(UserError, match="CUDA"):
        select_backend("cuml", 100, "cpu")
    with pytest.raises(UserError, match="unknown"):
        select_backend("fft", 100, "cpu")


# ------------------------------------------------------------------------------ exact t-SNE


def test_dense_cpu_gradient_matches_formula():
    torch.manual_seed(0)
    n = 70
    y = torch.randn(n, 2) * 4
    p = torch.rand(n, n)
    p = p + p.T
    p.fill_diagonal_(0)
    p /= p.sum()
    for exaggeration in (1.0, 12.0):
        fast = _DenseGradient(n, "cpu")(y, p, exaggeration)
        ref = tsne_gradient_reference(y.double(), p.double(), exaggeration).float()
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6)


def test_affinities_hit_the_perplexity():
    x, _ = blobs(n=150, d=8, k=3)
    p = perplexity_affinities(torch.from_numpy(x), perplexity=10.0)
    torch.testing.assert_close(p, p.T)
    assert float(p.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(p.diagonal().abs().max()) == 0.0
    # the conditional rows behind P have entropy log(10)
    from st_fast.cluster.tsne import _conditional_affinities

    xt = torch.from_numpy(x).double()
    d2 = torch.cdist(xt, xt).square()
    d2.fill_diagonal_(float("inf"))
    knn = d2.topk(30, largest=False).values
    cond = _conditional_affinities(knn, 10.0)
    entropy = -(cond * torch.log(cond.clamp_min(1e-300))).sum(1)
    torch.testing.assert_close(entropy, torch.full_like(entropy, np.log(10.0)), atol=1e-5, rtol=0)


def test_exact_tsne_separates_clusters_like_sklearn():
    from sklearn.manifold import TSNE

    x, y = blobs(n=240, d=30, k=4, spread=0.6)
    ours = exact_tsne(torch.from_numpy(x))
    theirs = TSNE(2, random_state=0, perplexity=30).fit_transform(x)
    acc_ours, acc_theirs = knn_accuracy(ours, y), knn_accuracy(theirs, y)
    assert acc_ours >= acc_theirs - 0.03, (acc_ours, acc_theirs)


def test_acm_ranks_increasingly_clustered_inputs_like_sklearn():
    from scipy.stats import spearmanr

    levels = [0.0, 0.2, 0.4, 0.8]  # benchmarks/bench_acm.py does this at N = 1000, D = 512
    ours, theirs = [], []
    for spread in levels:
        x, y = blobs(n=120, d=20, k=4, spread=spread, seed=1)
        ours.append(st_fast.acm(x, y, backend="exact"))
        theirs.append(st_fast.acm(x, y, backend="sklearn"))
    assert spearmanr(ours, theirs)[0] >= 0.9, (ours, theirs)
    assert ours == sorted(ours)


def test_tsne_embed_library_backends_run_on_cpu():
    x, y = blobs(n=60, d=8, k=3, spread=1.0)
    for backend in ("opentsne", "sklearn"):
        emb, ran = tsne_embed(x, backend=backend, seed=0)
        assert ran == backend and emb.shape == (60, 2) and emb.dtype == torch.float32
        assert knn_accuracy(emb, y) > 0.9


def test_class_index_marks_unchosen_samples():
    labels = torch.tensor([5, 3, 9, 3, 5])
    assert class_index(labels, [3, 5]).tolist() == [1, 0, -1, 0, 1]


# ------------------------------------------------------------------------------ CLI


def test_cli_acm_npy_pt_and_plot(tmp_path, capsys):
    from st_fast.cli import main

    x, y = blobs(n=80, d=6, k=4, spread=1.0)
    np.save(tmp_path / "f.npy", x)
    torch.save({"labels": torch.from_numpy(y)}, tmp_path / "l.pt")
    png = tmp_path / "plot.png"
    rc = main(["acm", "--features", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "l.pt"),
               "--classes", "0,1,2", "--plot", str(png)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "ACM = " in out and "backend exact" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    rc = main(["acm", "--features", str(tmp_path / "f.npy"), "--labels",
               str(tmp_path / "l.pt"), "--embedding", "none"])  # fmt: skip
    value = float(capsys.readouterr().out.split("ACM = ")[1].split()[0])
    assert value == pytest.approx(st_fast.acm(x, y, embedding=None), rel=1e-5)
    rc = main(["acm", "--features", str(tmp_path / "missing.npy"), "--labels", str(png)])
    assert rc == 2 and "not found" in capsys.readouterr().err
