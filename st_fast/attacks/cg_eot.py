"""CG (colour jitter p=0.8, then grayscale p=0.2) as a differentiable transformation, for
attacks that put it inside their expectation over transformations (em-t, em-class-t, rem-t).

The draws come from st_fast.augment.ColorGray (``sample_params``: the same distribution and
seeded stream as the defence's CG); the application is rewritten here with out-of-place torch
ops, because ColorGray's backends write in place (its hue step uses ``out=``), which autograd
cannot differentiate. On float images it equals ColorGray's torch backend (tested to 1e-5).
Each op follows torchvision's float definitions: brightness blends with black, contrast with
the mean gray level, saturation with the gray image, hue rotates in HSV; grayscale is the
ITU-R 601 luma.
"""

from __future__ import annotations

import torch

from st_fast.kernels.color_gray import BRIGHTNESS, CONTRAST, HUE, LUMA_B, LUMA_G, LUMA_R, SATURATION

from ..augment import CGParams, ColorGray


def _luma(x: torch.Tensor) -> torch.Tensor:
    return (LUMA_R * x[:, 0] + LUMA_G * x[:, 1] + LUMA_B * x[:, 2]).unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (f * a + (1.0 - f) * b).clamp(0.0, 1.0)


def _contrast_target(x: torch.Tensor) -> torch.Tensor:
    gray = _luma(x) if x.shape[1] == 3 else x
    return gray.mean((1, 2, 3), keepdim=True)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    flat = maxc == minc
    ones = torch.ones_like(maxc)
    cr = maxc - minc
    sat = cr / torch.where(flat, ones, maxc)
    div = torch.where(flat, ones, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_g & ~is_r
    h = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    h = torch.fmod(h + shift.view(-1, 1, 1), 1.0)
    h = torch.where(h < 0, h + 1.0, h)
    sector = torch.floor(h * 6.0)
    frac = h * 6.0 - sector
    sector = torch.remainder(sector, 6.0)
    v = maxc
    p = (v * (1.0 - sat)).clamp(0.0, 1.0)
    q = (v * (1.0 - sat * frac)).clamp(0.0, 1.0)
    t = (v * (1.0 - sat * (1.0 - frac))).clamp(0.0, 1.0)
    table = ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))
    out = []
    for row in table:
        ch = torch.zeros_like(v)
        for s, val in enumerate(row):
            ch = torch.where(sector == s, val, ch)
        out.append(ch)
    return torch.stack(out, 1)


def apply_cg(x: torch.Tensor, params: CGParams) -> torch.Tensor:
    """CG of float images x (N, C, H, W) in [0, 1] with given parameters, differentiably."""
    params = params.for_channels(x.shape[1])
    factors = params.factors.to(x.device, x.dtype)
    order = params.order.to(x.device).long()
    out = x
    for pos in range(order.shape[1]):
        op = order[:, pos].view(-1, 1, 1, 1)
        if (op == BRIGHTNESS).any():
            out = torch.where(op == BRIGHTNESS, _blend(out, torch.zeros_like(out), factors[:, BRIGHTNESS]), out)
        if (op == CONTRAST).any():
            out = torch.where(op == CONTRAST, _blend(out, _contrast_target(out), factors[:, CONTRAST]), out)
        if x.shape[1] == 3 and (op == SATURATION).any():
            out = torch.where(op == SATURATION, _blend(out, _luma(out), factors[:, SATURATION]), out)
        if x.shape[1] == 3 and (op == HUE).any():
            out = torch.where(op == HUE, _hue(out, factors[:, HUE]), out)
    if x.shape[1] == 3 and bool(params.gray.any()):
        gray = params.gray.to(x.device).view(-1, 1, 1, 1)
        out = torch.where(gray, _luma(out).expand_as(out), out)
    return out


class DifferentiableCG:
    """Callable x -> CG(x) with a fresh seeded draw per call (ColorGray's parameters)."""

    def __init__(self, seed: int, p_jitter: float = 0.8, p_gray: float = 0.2, brightness=0.4,
                 contrast=0.4, saturation=0.4, hue=0.1):
        self.sampler = ColorGray(brightness, contrast, saturation, hue, p_jitter=p_jitter, p_gray=p_gray,
                                 backend="torch", seed=seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply_cg(x, self.sampler.sample_params(x.shape[0]))


class Compose:
    """Apply transformations in order (None entries skipped)."""

    def __init__(self, *fns):
        self.fns = [f for f in fns if f is not None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for f in self.fns:
            x = f(x)
        return x
