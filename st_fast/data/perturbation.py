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
