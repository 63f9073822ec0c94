"""st_fast.acm(..., repeats=k): the mean and spread over k t-SNE seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from st_fast.cluster import acm, run_class_statistics, run_tsne
from st_fast.cluster import tsne as tsne_module
from st_fast.errors import UserError

from .helpers import blobs


@pytest.fixture(scope="module")
def data():
    x, y = blobs(n=150, d=12, k=3, spread=0.35, seed=3)
    return torch.from_numpy(x), torch.from_numpy(y)


def test_default_is_the_single_reading_it_always_was(data, one_thread):
    x, y = data
    z = run_tsne(x, seed=0).embedding  # the path acm took before repeats existed
    expected = float(run_class_statistics(z, y, 3, "mean")[0].acm)
    stats = acm(x, y, return_stats=True)
    assert acm(x, y) == expected == stats.acm == acm(x, y, repeats=1)
    assert stats.values == [expected] and stats.std == 0.0


def test_repeats_are_the_seeds_readings_and_share_the_affinities(data, one_thread, monkeypatch):
    x, y = data
    singles = [acm(x, y, seed=s) for s in (5, 6, 7)]
    calls = []
    for name in ("perplexity_affinities", "perplexity_affinities_csr"):
        original = getattr(tsne_module, name)
        monkeypatch.setattr(tsne_module, name, lambda *a, _f=original, **k: calls.append(1) or _f(*a, **k))
    stats = acm(x, y, seed=5, repeats=3, return_stats=True)
    assert len(calls) == 1  # one P for all three seeds
    assert stats.values == singles and len(set(singles)) > 1  # t-SNE noise: the seeds differ
    assert stats.acm == pytest.approx(np.mean(singles)) and float(stats) == stats.acm
    assert stats.std == pytest.approx(np.std(singles, ddof=1)) and stats.std > 0
    assert acm(x, y, seed=5, repeats=3) == stats.acm


def test_repeats_without_tsne(data):
    x, y = data
    raw = acm(x, y, embedding=None, repeats=4, return_stats=True)
    assert raw.values == [acm(x, y, embedding=None)] * 4 and raw.std == 0.0
    pca = acm(x, y, embedding="pca", repeats=2, return_stats=True)
    assert pca.values == [acm(x, y, embedding="pca", seed=s) for s in (0, 1)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_bad_repeats_is_a_user_error(data, bad):
    with pytest.raises(UserError, match="repeats"):
        acm(*data, repeats=bad)
