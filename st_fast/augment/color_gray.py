"""ColorGray: colour jitter (p_jitter) then random grayscale (p_gray) on a batch, on its device.

Equivalent to ``v2.RandomApply([v2.ColorJitter(b, c, s, h)], p=p_jitter)`` followed by
``v2.RandomGrayscale(p_gray)`` applied image by image, but batched. Per image it samples

* whether the jitter is applied (p_jitter) and whether grayscale is (p_gray),
* the four factors, uniform on torchvision's ranges,
* the order of the four jitters: a uniform random permutation, as ColorJitter draws one,

all from one seeded ``torch.Generator`` on the CPU, so the stream is the same on every device
and backend and can be checkpointed (``state_dict``) and resumed exactly. Every image costs the
same fixed number of draws, so the stream does not depend on the configuration either.

Backends (the fast path ``CG``, see st_fast.backends; ``available_backends()`` says which can
run here, and why not):

* ``"torch"``       batched tensor ops (kernels/color_gray.py reference), any device;
* ``"triton"``      one fused kernel for the whole batch, CUDA tensors (CPU under TRITON_INTERPRET=1);
* ``"cpp"``         a fused C++ kernel for CPU tensors (csrc/color_gray.cpp), uint8 and float32
                    (other dtypes run the torch backend); built once on first use;
* ``"dali"``        a DALI pipeline (GPU operators on CUDA tensors, CPU operators otherwise);
* ``"torchvision"`` per image through torchvision.transforms.v2.functional: the reference;
* ``"auto"``        triton on CUDA when triton imports; cpp on the CPU when it builds (a failed
                    build warns once), for uint8 and float32; torch otherwise. ``cg.backend``
                    says which ran.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import numbers
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from st_fast.backends import FastPath, only_on
from st_fast.csrc import SOURCE_DIR
from st_fast.csrc.build import OnDemandExtension
from st_fast.errors import UserError
from st_fast.kernels import triton_device_reason, triton_missing
from st_fast.kernels.color_gray import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    NOOP,
    SATURATION,
    color_gray_torch,
    color_gray_triton,
)

from .params import CGParams

# Uniform draws per image: jitter coin, 4 factors, gray coin, 4 permutation keys.
_DRAWS_PER_IMAGE = 10


def _jitter_range(value, name: str, center: float, bound: tuple[float, float]):
    """torchvision's ColorJitter ranges: x -> [center - x, center + x] (clipped), or (min, max)."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if value < 0:
            raise UserError(f"ColorGray: {name}={value} must be >= 0 (or a (min, max) pair)")
        lo, hi = center - float(value), center + float(value)
        if center == 1.0:
            lo = max(lo, 0.0)
    elif isinstance(value, Sequence) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise UserError(f"ColorGray: {name}={value!r} must be a number or a (min, max) pair")
    if not bound[0] <= lo <= hi <= bound[1]:
        raise UserError(
            f"ColorGray: {name} range ({lo}, {hi}) must be increasing and inside {bound}"
        )
    return None if lo == hi == center else (lo, hi)


def _probability(p, name: str) -> float:
    if not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise UserError(f"ColorGray: {name}={p!r} must be a probability in [0, 1]")
    return float(p)


# The "cpp" backend. -ffp-contract=off: torchvision rounds ``a * b + c`` twice except in its
# add_(alpha=...) (an fma), and the kernel writes those fmas out; -fno-trapping-math lets gcc
# evaluate both sides of a select, so the per-pixel loops vectorise (no value changes);
# -fopenmp: without it at::parallel_for, a header template, compiles to a serial loop (the
# library then uses the libgomp torch has loaded).
_CPP_EXTENSION = OnDemandExtension(
    "st_fast_color_gray",
    (SOURCE_DIR / "color_gray.cpp",),
    "the C++ CG kernel",
    extra_cflags=["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno", "-fopenmp"],
    extra_ldflags=["-fopenmp"],
    is_python_module=False,  # registers torch.ops.st_fast_cg.color_gray
)
CPP_DTYPES = (torch.uint8, torch.float32)


def _dali_missing() -> str | None:
    try:
        importlib.import_module("nvidia.dali")
    except Exception as exc:  # ImportError, or a broken CUDA runtime under it
        return (
            f"nvidia-dali not importable ({type(exc).__name__}: {exc}); "
            "pip install nvidia-dali-cuda130"
        )
    return None


CG = FastPath(
    "cg",
    "ColorGray",
    auto={"cpu": ("cpp", "torch"), "cuda": ("triton", "torch"), "*": ("torch",)},
)
CG.add("torch", "batched torch ops (kernels/color_gray.py), any device")
CG.add(
    "triton",
    "one fused Triton kernel per batch (kernels/color_gray.py)",
    detect=triton_missing,
    runs_on=triton_device_reason,
)
CG.add(
    "cpp",
    "fused C++ kernel (csrc/color_gray.cpp), uint8 and float32; built on first use",
    detect=_CPP_EXTENSION.detect,
    runs_on=only_on("cpu"),
    takes=lambda dtype: None if dtype in CPP_DTYPES else f"takes uint8 and float32, not {dtype}",
    fallback="torch",
    built=True,
)
CG.add(
    "dali", "DALI pipeline: GPU operators on CUDA tensors, CPU ones otherwise", detect=_dali_missing
)
CG.add("torchvision", "torchvision.transforms.v2.functional per image: the reference")
BACKENDS = tuple(CG.backends)


def cpp_status() -> str:
    """Return "ok" or why the C++ kernel cannot run; builds or loads it on the first call.

    The first build on a machine takes 14-20 s (measured on the 2-core development CPU); it is
    kept in torch's extension directory, and later processes only check and load it (well under
    a second). A failure is remembered for the process, so it costs one attempt.
    """
    return CG.status("cpp") or "ok"


def dali_status() -> tuple[bool, str]:
    """Detected once: can DALI be imported? (ok, reason)."""
    reason = CG.status("dali")
    return reason is None, reason or "ok"


def available_backends(device: str | torch.device = "cpu") -> dict[str, str]:
    """Backend name -> "ok" or the reason it cannot run on ``device`` here."""
    return {name: reason or "ok" for name, reason in CG.explain(device).items()}


class ColorGray:
    """Colour jitter with probability ``p_jitter``, then grayscale with ``p_gray``, per image.

    ``cg(x)``: x is (N, C, H, W), C = 1 or 3, uint8 or float in [0, 1], on any device; the
    result has x's dtype, device and shape. ``cg.backend`` is the backend that ran last.
    """

    def __init__(
        self,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        p_jitter: float = 0.8,
        p_gray: float = 0.2,
        backend: str = "auto",
        seed: int | None = 0,
    ):
        self.brightness = _jitter_range(brightness, "brightness", 1.0, (0.0, float("inf")))
        self.contrast = _jitter_range(contrast, "contrast", 1.0, (0.0, float("inf")))
        self.saturation = _jitter_range(saturation, "saturation", 1.0, (0.0, float("inf")))
        self.hue = _jitter_range(hue, "hue", 0.0, (-0.5, 0.5))
        self.p_jitter = _probability(p_jitter, "p_jitter")
        self.p_gray = _probability(p_gray, "p_gray")
        if backend != "auto" and backend not in CG.backends:
            raise UserError(
                f"ColorGray: unknown backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}"
            )
        self.requested_backend = backend
        self.backend: str | None = None  # set by each call
        self.generator = torch.Generator(device="cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self._dali = None  # st_fast.augment.dali.DaliColorGray, built on first use

    def __repr__(self) -> str:
        return (
            f"ColorGray(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue}, p_jitter={self.p_jitter}, "
            f"p_gray={self.p_gray}, backend={self.requested_backend!r})"
        )

    # ------------------------------------------------------------------ parameters

    def sample_params(self, n: int) -> CGParams:
        """Draw the parameters of ``n`` images from the generator (advances it)."""
        u = torch.rand(n, _DRAWS_PER_IMAGE, generator=self.generator, dtype=torch.float32)
        jitter = u[:, 0] < self.p_jitter
        factors = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(n, 1)
        ranges = (self.brightness, self.contrast, self.saturation, self.hue)
        enabled = torch.tensor([r is not None for r in ranges])
        for op, rng in enumerate(ranges):
            if rng is not None:
                draw = rng[0] + (rng[1] - rng[0]) * u[:, 1 + op]
                factors[:, op] = draw.clamp_(rng[0], rng[1])  # float rounding stays in range
        gray = u[:, 5] < self.p_gray
        order = u[:, 6:10].argsort(dim=1).to(torch.int32)  # uniform random permutation
        skip = ~jitter[:, None] | ~enabled[order.long()]
        order = torch.where(skip, torch.full_like(order, NOOP), order)
        return CGParams(factors=factors, order=order, gray=gray, jitter=jitter)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        try:
            self.generator.set_state(state["generator"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise UserError(
                f"ColorGray.load_state_dict: not a ColorGray state ({exc}); pass what state_dict() returned"
            ) from exc

    # ------------------------------------------------------------------ applying

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x)
        return self.apply(x, self.sample_params(x.shape[0]))

    def apply(self, x: torch.Tensor, params: CGParams, backend: str | None = None) -> torch.Tensor:
        """Apply given parameters (tests use this to run every backend on the same draw)."""
        _check_images(x)
        if len(params) != x.shape[0]:
            raise UserError(f"ColorGray: {len(params)} parameter sets for {x.shape[0]} images")
        requested = backend or self.requested_backend
        name = CG.fit(CG.select(requested, [x.device]).name, dtype=x.dtype)
        self.backend = name
        params = params.for_channels(x.shape[1])
        if x.shape[0] == 0:
            return x.clone()
        if name == "triton":
            try:
                return color_gray_triton(x, params.factors, params.order, params.gray)
            except Exception as exc:  # a compiler/driver problem: "auto" moves on, said once
                if requested != "auto":
                    raise
                CG.mark_failed("triton", f"the Triton kernel failed ({exc})")
                self.backend = name = CG.fit(CG.select("auto", [x.device]).name, dtype=x.dtype)
        if name == "dali":
            if self._dali is None:
                from .dali import DaliColorGray

                self._dali = DaliColorGray()
            return self._dali(x, params)
        return _RUN[name](x, params)


def _check_images(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise UserError(
            f"ColorGray takes a torch.Tensor batch (N, C, H, W), got {type(x).__name__}"
        )
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise UserError(
            f"ColorGray takes images shaped (N, C, H, W) with C = 1 or 3, got {tuple(x.shape)}; "
            "add a batch dimension with x[None] or convert channels-last with x.permute(0, 3, 1, 2)"
        )
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise UserError(f"ColorGray takes uint8 or float images in [0, 1], got dtype {x.dtype}")


# Below this many images a CPU batch runs in one piece.
_MIN_IMAGES_PER_WORKER = 32


@functools.lru_cache(maxsize=1)
def _cpu_workers(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="st_fast_cg")


def color_gray_torch_batched(x: torch.Tensor, params: CGParams) -> torch.Tensor:
    """The "torch" backend. On the CPU the batch is split into one slice per torch thread.

    Every op here is a short elementwise pass, and splitting each of ~250 small ops across
    OpenMP threads costs a barrier per op: on a loaded 2-core machine the batch took 5-10x
    longer with 2 threads than with 1. Independent slices in worker threads (ops release the
    GIL) keep the cores busy with coarse pieces instead; images are independent, so the
    result is identical.
    """
    threads = torch.get_num_threads()
    n = x.shape[0]
    if x.device.type != "cpu" or threads < 2 or n < 2 * _MIN_IMAGES_PER_WORKER:
        return color_gray_torch(x, params.factors, params.order, params.gray)
    pieces = min(threads, n // _MIN_IMAGES_PER_WORKER)
    bounds = [n * i // pieces for i in range(pieces + 1)]
    futures = [
        _cpu_workers(threads).submit(
            color_gray_torch, x[a:b], params.factors[a:b], params.order[a:b], params.gray[a:b]
        )
        for a, b in itertools.pairwise(bounds)
    ]
    return torch.cat([f.result() for f in futures])


def color_gray_cpp(x: torch.Tensor, params: CGParams) -> torch.Tensor:
    """The "cpp" backend: one fused pass chain per image (csrc/color_gray_kernel.h).

    uint8 results equal the torch backend's bit for bit; float32 ones can differ by about 1e-6
    where contrast runs (its mean is summed in double, torch sums in float32).
    """
    _CPP_EXTENSION.load()
    return torch.ops.st_fast_cg.color_gray(x, params.factors, params.order, params.gray)


def color_gray_torchvision(x: torch.Tensor, params: CGParams) -> torch.Tensor:
    """The reference: torchvision.transforms.v2.functional, one image at a time."""
    from torchvision.transforms.v2 import functional as F

    ops = {
        BRIGHTNESS: F.adjust_brightness,
        CONTRAST: F.adjust_contrast,
        SATURATION: F.adjust_saturation,
        HUE: F.adjust_hue,
    }
    factors = params.factors.tolist()
    order = params.order.tolist()
    gray = params.gray.tolist()
    out = []
    for i, img in enumerate(x):
        for op in order[i]:
            if op != NOOP:
                img = ops[op](img, factors[i][op])
        if gray[i]:
            img = F.rgb_to_grayscale(img, num_output_channels=img.shape[0])
        out.append(img)
    return torch.stack(out)


_RUN = {
    "torch": color_gray_torch_batched,
    "cpp": color_gray_cpp,
    "triton": lambda x, p: color_gray_triton(x, p.factors, p.order, p.gray),
    "torchvision": color_gray_torchvision,
}
