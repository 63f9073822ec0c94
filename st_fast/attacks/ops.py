"""OPS: one-pixel shortcut (Wu et al., "One-Pixel Shortcut: on the Learning Preference of Deep
Neural Networks", ICLR 2023).

Per class, one pixel location and one "boundary" colour (each channel 0 or 1, so 2^C colours)
are chosen by a search over all locations and colours: the score of (location, colour) is the
mean of how far the pixel moves when set to that colour, divided by the standard deviation of
that move, so the chosen pixel changes a lot and consistently within the class. Every image of
the class then gets that pixel set to that colour: an L0 perturbation of one pixel.

``search="authors"`` (the default since 2026-12-01) follows the published algorithm as the
authors' code (cychomatica/One-Pixel-Shotcut, perturb.py) runs it: classes in order 0..K-1;
mean and standard deviation over all the class's images *and channels* at once; a pair taken by
an earlier class scores 0; candidates ranked in the order (row, column, colour) by a stable
sort, and the last of the maximal scores wins, so among equal scores (e.g. +inf, a pixel that
moves by the same amount in every image) the largest (row, column, colour) is chosen. One
deviation: a pixel that already has the colour in every image (mean 0, std 0) scores 0, where
numpy's 0/0 is NaN, which its sort puts above +inf and would choose (a change of nothing).

``search="legacy"`` is the rule of every study made before 2026-12-01 (e.g.
benchmarks/results/fmnist_cpu): the move averaged over channels first, taken pairs skipped, and
ties broken by a seeded random order (it consumes the generator; ``authors`` does not).
"""

from __future__ import annotations

import torch

from ..errors import UserError
from .base import AttackOutput, register

DEFAULTS = {"pixels": 1, "search": "authors"}
SEARCHES = ("authors", "legacy")


def boundary_colours(channels: int) -> torch.Tensor:
    """(2^C, C) all colours whose channels are each 0 or 1."""
    codes = torch.arange(2 ** channels)
    return ((codes[:, None] >> torch.arange(channels - 1, -1, -1)) & 1).float()


def ops_scores(images: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """(n_colours, H, W) search objective mean/std of |colour - pixel| over the images.

    images: float (n, C, H, W) in [0, 1] of one class.
    """
    out = []
    for col in colours:
        move = (col.view(1, -1, 1, 1) - images).abs().mean(1)       # (n, H, W), mean over channels
        mean, std = move.mean(0), move.std(0, unbiased=False)
        out.append(torch.where(std > 0, mean / std.clamp_min(1e-12),
                               torch.where(mean > 0, torch.full_like(mean, float("inf")), torch.zeros_like(mean))))
    return torch.stack(out)


def ops_search(images: torch.Tensor, labels: torch.Tensor, num_classes: int, gen: torch.Generator,
               pixels: int = 1) -> list[list[tuple[int, int, int]]]:
    """The legacy search (``search="legacy"``): for each class, ``pixels`` (row, col, colour
    index) choices, best first, ties by a seeded random order."""
    n, c, h, w = images.shape
    colours = boundary_colours(c)
    taken: set[tuple[int, int, int]] = set()
    # a random rank per candidate breaks ties among equal scores
    tiebreak = torch.rand(len(colours), h, w, generator=gen)
    choices = []
    for k in range(num_classes):
        x = images[labels == k].float() / 255.0
        if len(x) == 0:
            choices.append([])
            continue
        score = ops_scores(x, colours)
        order = _rank(score, tiebreak)
        picked = []
        for flat in order:
            col, rest = divmod(int(flat), h * w)
            cand = (rest // w, rest % w, col)
            if cand in taken:
                continue
            taken.add(cand)
            picked.append(cand)
            if len(picked) == pixels:
                break
        choices.append(picked)
    return choices


def _rank(score: torch.Tensor, tiebreak: torch.Tensor) -> torch.Tensor:
    """Candidate indices by descending score, ties by ascending tiebreak."""
    flat, tb = score.flatten(), tiebreak.flatten()
    by_tb = torch.argsort(tb)                       # stable secondary key first
    by_score = torch.argsort(-flat[by_tb], stable=True)
    return by_tb[by_score]


def authors_scores(images: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """(H, W, n_colours) float64: mean/std of |colour - pixel| over images and channels together.

    images: float64 (n, C, H, W) in [0, 1] of one class. std 0 gives +inf where the mean is
    > 0, and 0 where the pixel already has the colour everywhere (see the module docstring).
    """
    out = []
    for col in colours.to(torch.float64):
        move = (col.view(1, -1, 1, 1) - images).abs()                  # (n, C, H, W)
        mean = move.mean((0, 1))
        std = move.std((0, 1), unbiased=False)
        score = torch.where(std > 0, mean / std.clamp_min(1e-300),
                            torch.where(mean > 0, torch.full_like(mean, float("inf")), torch.zeros_like(mean)))
        out.append(score)
    return torch.stack(out, -1)


def authors_search(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   pixels: int = 1) -> list[list[tuple[int, int, int]]]:
    """For each class, ``pixels`` (row, col, colour index) choices by the published rule."""
    n, c, h, w = images.shape
    colours = boundary_colours(c)
    taken: list[tuple[int, int, int]] = []
    choices = []
    for k in range(num_classes):
        x = images[labels == k].to(torch.float64) / 255.0
        if len(x) == 0:
            choices.append([])
            continue
        score = authors_scores(x, colours)                                 # (H, W, colours)
        for r, col_c, col in taken:
            score[r, col_c, col] = 0.0
        ranking = torch.argsort(score.flatten(), stable=True)              # ascending, ties by position
        picked = []
        for flat in ranking.flip(0)[:pixels].tolist():                     # the last maxima first
            rest, col = divmod(flat, len(colours))
            picked.append((rest // w, rest % w, col))
        taken.extend(picked)
        choices.append(picked)
    return choices


# version 2 (2026-12-01): the authors' search and tie-break by default (search="authors")
@register("ops", norm="l0", defaults=DEFAULTS, bound=lambda p, shape: float(p["pixels"]),
          aliases=("one-pixel", "one-pixel-shortcut"), version=2,
          summary="one pixel per class at a searched location and boundary colour (model-free)")
def ops_attack(ds, gen, device, *, pixels, search="authors", progress=False, **_):
    if search not in SEARCHES:
        raise UserError(f"ops parameter search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if search == "authors":
        choices = authors_search(ds.images, ds.labels, ds.num_classes, int(pixels))
    else:
        choices = ops_search(ds.images, ds.labels, ds.num_classes, gen, int(pixels))
    colours = boundary_colours(ds.channels)
    x = ds.images.float() / 255.0
    target = x.clone()
    for k, picked in enumerate(choices):
        members = ds.labels == k
        for r, col_c, col in picked:
            target[members, :, r, col_c] = colours[col]
    return AttackOutput(target - x, {"pixels": [[list(t) for t in p] for p in choices]})
