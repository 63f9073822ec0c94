"""CG (colour jitter + grayscale) as a DALI pipeline.

DALI's own colour operators (``hsv``, ``hue``, ``saturation``, ``color_twist``) rotate hue in
YIQ space and use other grayscale weights, so they do not agree with torchvision. The graph
below instead writes torchvision's formulas with DALI arithmetic operators, which run on the
CPU and the GPU alike, and applies each image's ops in that image's order with DALI's
per-sample conditionals. It works on HWC images (DALI's layout): channel c is ``x[:, :, c]``.

Parameters come from ``ColorGray.sample_params`` (one seeded stream for every backend) as a
per-sample float vector, see ``pack_params``.

``DaliColorGray`` runs the graph on a torch batch (the ``"dali"`` backend of ColorGray):
GPU operators when the batch is on CUDA, CPU operators with ``device_id=None`` otherwise.
``cg_graph`` is also used inside the ImageNet reader pipeline (imagenet_dali.py).
Importing this module imports nvidia.dali: callers check ``dali_status()`` first.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dmath

from st_fast.kernels.color_gray import LUMA_B, LUMA_G, LUMA_R, TO_UINT8_SCALE

from .params import CGParams

# Per-sample parameter vector: factors (4), order (4), gray flag (1).
PARAM_LEN = 9
# float32 weights (as torch casts its scalars), held in float64 constants for _fma
LUMA_R32, LUMA_G32, LUMA_B32 = (float(np.float32(w)) for w in (LUMA_R, LUMA_G, LUMA_B))


def pack_params(params: CGParams) -> np.ndarray:
    """(N, 9) float32: brightness, contrast, saturation, hue, op order (4 ids), gray."""
    return torch.cat(
        [params.factors.float(), params.order.float(), params.gray.float()[:, None]], 1
    ).numpy()


def _as_float(mask):
    return fn.cast(mask, dtype=types.FLOAT)


def _select(mask, a, b):
    """where(mask, a, b) for a 0/1 float mask (exact for finite a, b)."""
    return a * mask + b * (1.0 - mask)


def _fma(a, b, c):
    """a + b * c rounded once to float32, as torchvision's ``add_(b, alpha=c)`` rounds.

    Via float64, where the product of two float32 numbers is exact; rounding separately
    would flip uint8 truncations now and then (and later ops can amplify a flip).
    """
    return fn.cast(_wide(a) + _wide(b) * _wide(c), dtype=types.FLOAT)


def _wide(v):
    if isinstance(v, (int, float, np.floating)):
        return types.Constant(float(v), dtype=types.FLOAT64)
    return fn.cast(v, dtype=types.FLOAT64)


def _luma(r, g, b):
    return _fma(_fma(r * LUMA_R32, g, LUMA_G32), b, LUMA_B32)


def _channels(x):
    return x[:, :, 0], x[:, :, 1], x[:, :, 2]


def _stack(r, g, b):
    return fn.stack(r, g, b, axis=2, axis_name="C")


def _gray_target(x, channels: int, quantize: bool):
    """Per-pixel luma, (H, W, 1); torchvision floors it for integer images."""
    if channels == 1:
        return x
    lum = fn.expand_dims(_luma(*_channels(x)), axes=[2], new_axis_names="C")
    return dmath.floor(lum) if quantize else lum


def _blend(x, target, factor, bound: float, quantize: bool):
    keep = 1.0 - factor  # exact in float32 for factor in [0, 2]
    out = dmath.clamp(_fma(x * factor, target, keep), 0.0, bound)
    return dmath.floor(out) if quantize else out


def _hue(x, hue_factor, quantize: bool):
    """torchvision's adjust_hue: RGB -> HSV (Pillow's algorithm), shift, HSV -> RGB."""
    if quantize:
        x = x * (1.0 / 255.0)
    r, g, b = _channels(x)
    maxc = dmath.max(dmath.max(r, g), b)
    delta = maxc - dmath.min(dmath.min(r, g), b)
    flat = _as_float(delta == 0.0)
    sat = delta / _select(flat, 1.0, maxc)
    divisor = _select(flat, 1.0, delta)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    max_is_r = _as_float(maxc == r)
    max_is_g = _as_float(maxc == g) * (1.0 - max_is_r)
    max_is_b = 1.0 - max_is_r - max_is_g
    h = (bc - gc) * max_is_r + (rc + 2.0 - bc) * max_is_g + (gc + 4.0 - rc) * max_is_b
    h = h * (1.0 / 6.0) + 1.0
    h = h - dmath.floor(h)
    h = h + hue_factor
    h = h - dmath.floor(h)
    h6 = h * 6.0
    sector = dmath.floor(h6)
    frac = h6 - sector
    sector = sector - 6.0 * _as_float(sector == 6.0)
    p = dmath.clamp((1.0 - sat) * maxc, 0.0, 1.0)
    q = dmath.clamp((1.0 - sat * frac) * maxc, 0.0, 1.0)
    t = dmath.clamp((sat * frac + (1.0 - sat)) * maxc, 0.0, 1.0)
    s = [_as_float(sector == float(k)) for k in range(6)]
    # sector: 0 -> (v, t, p), 1 -> (q, v, p), 2 -> (p, v, t), 3 -> (p, q, v), 4 -> (t, p, v), 5 -> (v, p, q)
    out_r = maxc * (s[0] + s[5]) + q * s[1] + t * s[4] + p * (s[2] + s[3])
    out_g = maxc * (s[1] + s[2]) + t * s[0] + q * s[3] + p * (s[4] + s[5])
    out_b = maxc * (s[3] + s[4]) + t * s[2] + q * s[5] + p * (s[0] + s[1])
    out = _stack(out_r, out_g, out_b)
    return dmath.floor(out * TO_UINT8_SCALE) if quantize else out


def cg_graph(x, params, channels: int, quantize: bool, on_gpu: bool):
    """CG on float HWC images ``x`` (values in [0, 255] if ``quantize`` else [0, 1]).

    ``params``: the CPU per-sample vector of ``pack_params``. Must be traced inside a pipeline
    built with ``enable_conditionals=True``.
    """
    bound = 255.0 if quantize else 1.0

    def arg(i):  # per-sample scalar; GPU arithmetic wants its operands on the GPU
        value = params[i]
        return value.gpu() if on_gpu else value

    bright, contrast, saturation, hue = arg(0), arg(1), arg(2), arg(3)
    for step in range(4):
        op = params[4 + step]
        if op == 0.0:
            x = _blend(x, 0.0, bright, bound, quantize)  # x * f + 0: torchvision's x * f
        elif op == 1.0:
            mean = fn.reductions.mean(_gray_target(x, channels, quantize))
            x = _blend(x, mean, contrast, bound, quantize)
        elif op == 2.0 and channels == 3:
            x = _blend(x, _gray_target(x, channels, quantize), saturation, bound, quantize)
        elif op == 3.0 and channels == 3:
            x = _hue(x, hue, quantize)
    if channels == 3:
        if params[8] == 1.0:
            lum = _luma(*_channels(x))
            lum = dmath.floor(lum) if quantize else lum
            x = _stack(lum, lum, lum)
    return x


class DaliColorGray:
    """The "dali" backend: run CG with given parameters on a torch (N, C, H, W) batch."""

    def __init__(self, num_threads: int | None = None):
        self.num_threads = num_threads or max(1, min(4, os.cpu_count() or 1))
        self._pipes: dict[tuple, object] = {}

    def _pipeline(self, batch: int, channels: int, quantize: bool, device_id: int | None):
        key = (channels, quantize, device_id)
        cached = self._pipes.get(key)
        if cached is not None and cached[0] >= batch:
            return cached[1]
        on_gpu = device_id is not None

        @pipeline_def(
            batch_size=batch,
            num_threads=self.num_threads,
            device_id=device_id,
            enable_conditionals=True,
            exec_async=False,
            exec_pipelined=False,
            prefetch_queue_depth=1,
        )
        def pipe():
            images = fn.external_source(
                name="images", device="gpu" if on_gpu else "cpu", layout="HWC", dtype=types.FLOAT
            )
            params = fn.external_source(name="params", dtype=types.FLOAT)
            return cg_graph(images, params, channels, quantize, on_gpu)

        p = pipe()
        p.build()
        self._pipes[key] = (batch, p)
        return p

    def __call__(self, x: torch.Tensor, params: CGParams) -> torch.Tensor:
        quantize = x.dtype == torch.uint8
        channels = x.shape[1]
        on_gpu = x.device.type == "cuda"
        device_id = (x.device.index or 0) if on_gpu else None
        pipe = self._pipeline(x.shape[0], channels, quantize, device_id)
        hwc = x.permute(0, 2, 3, 1).to(torch.float32).contiguous()
        if on_gpu:  # DALI reads the batch on its own stream: order it after torch's work
            stream = torch.cuda.current_stream(x.device).cuda_stream
            pipe.feed_input("images", hwc, layout="HWC", cuda_stream=stream)
        else:
            pipe.feed_input("images", hwc.numpy(), layout="HWC")
        pipe.feed_input("params", pack_params(params))
        (out,) = pipe.run()
        if on_gpu:
            from nvidia.dali.plugin.pytorch import feed_ndarray

            result = torch.empty_like(hwc)
            feed_ndarray(out.as_tensor(), result, cuda_stream=torch.cuda.current_stream(x.device))
        else:
            result = torch.from_numpy(out.as_array())
        return result.permute(0, 3, 1, 2).to(x.dtype).contiguous()
