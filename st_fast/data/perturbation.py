"""A perturbation's rules: its norms, uint8 quantisation, and which samples it covers."""

from __future__ import annotations

import torch

from ..errors import UserError

NORMS = ("linf", "l2", "l0")


# ---------------------------------------------------------------- which samples get poisoned

def subset_indices(n: int, size: int, seed: int) -> torch.Tensor:
    """The first ``size`` of a permutation seeded by ``seed``: the same rule as
    ``TrainConfig.train_subset`` in st_fast.trainer.prepare_data, so a poison generated with
    ``subset=N, seed=S`` covers exactly the images ``st-fast train --train-subset N --seed S``
    trains on."""
    if not 1 <= size <= n:
        raise UserError(f"subset must be between 1 and {n} (the training-set size), got {size}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]


# ---------------------------------------------------------------- uint8 quantisation

def realised_norms(diff: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of a perturbation (n, C, H, W) in [0, 1] units; l0 counts pixel
    locations (any channel changed)."""
    flat = diff.flatten(1).float()
    if norm == "linf":
        return flat.abs().amax(1) if flat.shape[1] else torch.zeros(len(diff))
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "l0":
        return (diff != 0).any(1).flatten(1).sum(1).float()
    raise ValueError(norm)


def quantize(clean: torch.Tensor, delta: torch.Tensor, norm: str, bound: float) -> torch.Tensor:
    """uint8 images clean + delta, clipped to [0, 255], whose realised change obeys the bound.

    Rounds to nearest; a sample whose rounded change would exceed ``bound`` (L2, or an L_inf
    eps that is not a whole number of grey levels) is rounded toward zero instead, which can
    only shrink every pixel's change. Clipping to the valid range also only shrinks it.
    """
    x = clean.to(torch.int32)
    d255 = delta.float() * 255.0
    out = (x + torch.round(d255).to(torch.int32)).clamp_(0, 255)
    if norm != "l0":
        # first retry: shrink the offenders' perturbation by their overshoot and round again
        norms = realised_norms((out - x).float() / 255.0, norm)
        over = norms > bound + 1e-6
        if over.any():
            scale = (bound / norms[over]).view(-1, *([1] * (x.dim() - 1)))
            out[over] = (x[over] + torch.round(d255[over] * scale).to(torch.int32)).clamp_(0, 255)
            over = realised_norms((out - x).float() / 255.0, norm) > bound + 1e-6
        if over.any():
            out[over] = (x[over] + torch.trunc(d255[over]).to(torch.int32)).clamp_(0, 255)
    return out.to(torch.uint8)


# ---------------------------------------------------------------- 8-bit rounding and its slack

# How a float poisoned image v = clamp(x + delta, 0, 1) becomes a uint8 grey level, as the
# authors' own code writes it (docs/attacks.md, "Importing"): SP and OPS save
# ``np.uint8(v * 255)`` (truncation, = floor for v >= 0), AR saves through
# torchvision.utils.save_image's ``v * 255 + 0.5`` then truncation (round half up);
# "nearest" is round half to even (numpy's and torch's round).
ROUNDING = ("floor", "nearest", "half-up")


def to_uint8(scaled: torch.Tensor, rounding: str) -> torch.Tensor:
    """uint8 levels from ``scaled`` = image values in [0, 255] (float), by ``rounding``."""
    if rounding == "floor":
        out = torch.floor(scaled)
    elif rounding == "nearest":
        out = torch.round(scaled)
    elif rounding == "half-up":
        out = torch.floor(scaled + 0.5)
    else:
        raise UserError(f"rounding must be one of {', '.join(ROUNDING)}, got {rounding!r}")
    return out.clamp_(0, 255).to(torch.uint8)


def apply_delta(clean: torch.Tensor, delta: torch.Tensor, rounding: str) -> torch.Tensor:
    """uint8 images from clean uint8 images and a float perturbation, the way the authors'
    code forms them: v = clamp(clean / 255 + delta, 0, 1), then ``rounding`` of v * 255, in
    the perturbation's own float precision (float32 or float64), so that the same arithmetic
    gives the same bytes. No bound is enforced here: the caller checks the realised change
    against the bound plus :func:`quantisation_slack`."""
    dtype = delta.dtype if delta.dtype in (torch.float32, torch.float64) else torch.float32
    v = (clean.to(dtype) / 255.0 + delta.to(dtype)).clamp_(0.0, 1.0)
    return to_uint8(v * 255.0, rounding)


def quantisation_slack(diff: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample allowance for 8-bit rounding in a norm check of uint8 data.

    Rounding moves every pixel by less than one grey level (1/255) from the float value the
    attack computed, so if that float perturbation d obeyed the bound, the realised change r
    obeys: L_inf(r) <= bound + 1/255; L2(r) <= bound + sqrt(m)/255, m = the number of values
    that changed (on the support S of r, r = d + e with |e| < 1/255, so ||r|| = ||d_S + e_S||
    <= ||d|| + ||e_S||); L0 is not moved by rounding (a value changes only where d does), so 0.
    ``diff``: the realised change (n, C, H, W) in [0, 1] units."""
    if norm == "linf":
        return torch.full((len(diff),), 1.0 / 255.0)
    if norm == "l2":
        return (diff != 0).flatten(1).sum(1).float().sqrt() / 255.0
    if norm == "l0":
        return torch.zeros(len(diff))
    raise ValueError(norm)
