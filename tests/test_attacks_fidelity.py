"""Fidelity to the authors' algorithms (issue 18 item 3): OPS's search and tie-break, AR's
process selection, and the legacy rules that keep earlier studies reproducible."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from st_fast import attacks
from st_fast.attacks.autoregressive import ar_filter, ar_generate, random_ar_coefficients, response
from st_fast.attacks.ops import authors_scores, authors_search, boundary_colours
from st_fast.data import ImageDataset
from st_fast.errors import UserError


def dataset(images: torch.Tensor, labels: torch.Tensor) -> ImageDataset:
    c = images.shape[1]
    k = int(labels.max()) + 1
    return ImageDataset(images, labels, [f"c{i}" for i in range(k)], (0.5,) * c, (0.25,) * c, name="toy")


def random_toy(channels: int, seed: int = 0) -> ImageDataset:
    """The toy set of tests/test_attacks.py (uniform random bytes)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(120) % 4
    return dataset(torch.randint(0, 256, (120, channels, 12, 12), generator=g, dtype=torch.uint8), labels)


# ---------------------------------------------------------------- OPS

def test_ops_ties_go_to_the_last_candidate_in_row_col_colour_order():
    """Worked from the published rule: 3x3 gray images, all black. For colour white (1) every
    pixel moves by 1 in every image: mean 1, std 0, score +inf at all 9 pixels; colour black
    moves nothing (score 0). A stable ascending sort of the scores in (row, col, colour) order
    puts the nine +inf ties last in that order, and the last one is taken: (2, 2, white) for
    class 0. Class 1 finds that pair taken (score 0), so it takes the one before: (2, 1, white)."""
    images = torch.zeros(6, 1, 3, 3, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert authors_search(images, labels, 2) == [[(2, 2, 1)], [(2, 1, 1)]]
    ps = attacks.generate("ops", dataset(images, labels))
    assert ps.images[:3, 0, 2, 2].tolist() == [255] * 3 and ps.images[3:, 0, 2, 1].tolist() == [255] * 3
    assert int((ps.images != 0).sum()) == 6                      # one pixel per image
    # two pixels per class: the two last ties
    assert authors_search(images, labels, 2, pixels=2) == [[(2, 2, 1), (2, 1, 1)], [(2, 0, 1), (1, 2, 1)]]


def test_ops_score_is_over_images_and_channels_together():
    """mean/std of |colour - pixel| over all (image, channel) values at once, as the authors'
    numpy code computes it (np.mean / np.std of an (n, C) array, ddof 0)."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 2, 2, generator=g, dtype=torch.float64)
    colours = boundary_colours(3)
    score = authors_scores(x, colours)
    for r, c, k in [(0, 0, 0), (1, 0, 5), (1, 1, 7)]:
        moves = np.abs(colours[k].numpy()[None, :] - x[:, :, r, c].numpy())      # (n, C)
        assert float(score[r, c, k]) == pytest.approx(moves.mean() / moves.std())
    assert colours[5].tolist() == [1.0, 0.0, 1.0]                    # bit order: channel 0 is the MSB


def test_a_pixel_that_already_has_the_colour_scores_zero():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.float64)
    score = authors_scores(x, boundary_colours(1))
    assert torch.all(score[..., 0] == 0) and torch.all(torch.isinf(score[..., 1]))


@pytest.mark.parametrize("channels, name, params, digest", [
    (1, "ops", {"search": "legacy"}, "9a828123ab8f5c1a"),
    (3, "ops", {"search": "legacy"}, "6d49305920d1aa94"),
    (1, "ar", {"processes": "random"}, "59092382526f3fae"),
    (3, "ar", {"processes": "random"}, "d45bcc168439f46f"),
])
def test_legacy_rules_reproduce_the_earlier_poisons(channels, name, params, digest):
    """Digests of the images made by the code before this change (commit a37839b, seed 3):
    the committed studies' OPS and AR stay reproducible with these parameters."""
    ps = attacks.generate(name, random_toy(channels), seed=3, **params)
    assert hashlib.sha256(ps.images.numpy().tobytes()).hexdigest()[:16] == digest


# ---------------------------------------------------------------- AR

def test_response_of_a_filter_worked_by_hand():
    filt = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -1.0]]]], dtype=torch.float64)
    pattern = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 2.0, 0.0]]], dtype=torch.float64)
    # valid positions: (0, 0): 1 - 2 = -1 -> 0; (0, 1): 2 - 0 = 2  -> response 2
    assert response(filt, pattern) == pytest.approx(2.0)


def test_a_process_filter_annihilates_its_own_noise_and_not_others():
    g = torch.Generator().manual_seed(0)
    b = random_ar_coefficients(2, 1, 3, g)
    start = torch.randn(2, 1, 20, 20, generator=g, dtype=torch.float64)
    noise = ar_generate(b, start)
    own = torch.nn.functional.conv2d(noise[:1], ar_filter(b[0]))
    assert float(own.abs().max()) < 1e-6 * float(noise[0].abs().max())   # every pixel predicted exactly
    assert response(ar_filter(b[1]), noise[0] / noise[0].norm()) > 0


def test_ar_search_accepts_only_processes_that_pass_the_criterion():
    ds = random_toy(1)
    a = attacks.generate("ar", ds, seed=0)
    b = attacks.generate("ar", ds, seed=0)
    assert torch.equal(a.images, b.images)                           # seeded
    info = a.meta["info"]
    assert info["processes"] == "search" and info["lowest_response"][0] is None
    assert all(r >= info["min_response"] for r in info["lowest_response"][1:])
    assert info["min_response"] == pytest.approx(3.0 * (144 / 1024) ** 0.5)
    with pytest.raises(UserError, match="found 1 of 4 processes"):
        attacks.generate("ar", ds, seed=0, min_response=1e9, candidates=50)
    with pytest.raises(UserError, match="processes must be one of"):
        attacks.generate("ar", ds, processes="authors")
