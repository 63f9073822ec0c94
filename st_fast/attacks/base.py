"""The attack registry, its parameter checks and ``generate`` (the poisoned-set type and its
file format live in st_fast.data.poisoned, its rules in st_fast.data.perturbation).

An attack is a function ``fn(ds, gen, device, **params) -> AttackOutput`` registered under a
name with the norm it is bounded in. It sees only the samples it must perturb (``ds``, an
:class:`~st_fast.data.ImageDataset` view), returns a float perturbation in [0, 1] pixel units,
and never touches quantisation: :func:`generate` turns the perturbation into uint8 images so
that the realised change still satisfies the attack's norm bound (see :func:`quantize`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..data.perturbation import NORMS, quantize, realised_norms, subset_indices  # noqa: F401 (re-exported)
from ..data.poisoned import FORMAT_VERSION, PoisonedSet  # noqa: F401 (re-exported)
from ..errors import UserError


@dataclass
class AttackOutput:
    """What an attack function returns: the perturbation of the samples it was given."""

    delta: torch.Tensor                 # float (n, C, H, W) in [0, 1] pixel units
    info: dict = field(default_factory=dict)   # anything worth keeping in meta["info"]


@dataclass
class AttackSpec:
    name: str
    fn: Callable[..., AttackOutput]
    norm: str                               # "linf", "l2" or "l0"
    defaults: dict                          # publication defaults (documented in docs/attacks.md)
    bound: Callable[[dict, tuple], float]   # (params, (C, H, W)) -> bound on the realised change
    uses_model: bool = False
    trains_model: bool = False              # needs ``fit_model`` (a clean crafting model)
    summary: str = ""
    # bumped when the same parameters make another poison (new defaults, a changed algorithm):
    # results record it, and a study shares a cell only across equal versions
    version: int = 1


ATTACKS: dict[str, AttackSpec] = {}
ALIASES: dict[str, str] = {}


def register(name: str, *, norm: str, defaults: dict,
             bound: Callable[[dict, tuple], float] | None = None,
             uses_model: bool = False, trains_model: bool = False, aliases: tuple[str, ...] = (),
             summary: str = "", version: int = 1):
    """Decorator: register an attack function under ``name`` (and ``aliases``)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}")

    def deco(fn):
        ATTACKS[name] = AttackSpec(name, fn, norm, dict(defaults),
                                   bound or (lambda p, shape: float(p["eps"])), uses_model, trains_model,
                                   summary, version)
        for a in aliases:
            ALIASES[a] = name
        return fn

    return deco


def resolve(name: str) -> AttackSpec:
    key = name.lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in ATTACKS:
        raise UserError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}")
    return ATTACKS[key]


# ---------------------------------------------------------------- which samples get poisoned

def select_ratio(n: int, ratio: float, seed: int) -> torch.Tensor:
    """round(ratio * n) positions out of ``n``, seeded, sorted: the protection ratio."""
    if not 0.0 <= float(ratio) <= 1.0:
        raise UserError(f"ratio must be in [0, 1] (the fraction of the training set to poison), got {ratio}")
    k = int(round(float(ratio) * n))
    if k == n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 7919 + 17)   # independent of the subset draw
    return torch.randperm(n, generator=g)[:k].sort().values


# ---------------------------------------------------------------- parameter checks

# budgets, sizes and counts that only make sense > 0 (others, e.g. grad_clip=0 "off" or a
# stop_acc that is never reached, keep any finite value)
POSITIVE_PARAMS = {"eps", "step_size", "lr", "batch_size", "steps", "epochs", "samples", "train_steps",
                   "max_rounds", "patch_size", "pixels", "window", "perturb_freq", "lr_decay_freq"}


def check_params(name: str, params: dict, *, ratio: float = 1.0, seed: int = 0,
                 subset: int | None = None, source: str = "") -> dict:
    """The attack's defaults overridden by ``params``, checked before any work: known names;
    each value of its default's type (an int where the default is an int, a finite number
    where it is a float, ...); sizes and step counts >= 1, budgets and step sizes > 0;
    ``ratio`` in [0, 1], ``seed`` >= 0, ``subset`` >= 1. One line naming the parameter."""
    import math

    spec = resolve(name)
    where = f"{source}: " if source else ""
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        raise UserError(f"{where}attack {spec.name} has no parameter(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(spec.defaults)) or 'none'}")
    p = {**spec.defaults, **{k: v for k, v in params.items() if v is not None}}

    def bad(key, value, what):
        raise UserError(f"{where}{spec.name} parameter {key} must be {what}, got {value!r}")

    for key, value in p.items():
        default = spec.defaults[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                bad(key, value, "true or false")
        elif isinstance(default, (int, float)) or (default is None and isinstance(value, (int, float))):
            is_int = isinstance(default, int)
            if isinstance(value, bool) or not isinstance(value, int if is_int else (int, float)):
                bad(key, value, "an integer" if is_int else "a number")
            if not math.isfinite(value):
                bad(key, value, "a finite number")
            if key in POSITIVE_PARAMS and not value > 0:
                bad(key, value, "> 0" if not is_int else "an integer >= 1")
        elif isinstance(default, str) and not isinstance(value, str):
            bad(key, value, "a string")
    if "arch" in p:
        from ..models import canonical_arch

        canonical_arch(p["arch"])
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) <= 1.0:
        raise UserError(f"{where}ratio must be in [0, 1] (the fraction of the training set to poison), got {ratio!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"{where}seed must be an integer >= 0, got {seed!r}")
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
        raise UserError(f"{where}subset must be an integer >= 1, got {subset!r}")
    return p


# ---------------------------------------------------------------- the public entry point

def generate(name: str, dataset, *, ratio: float = 1.0, seed: int = 0, subset: int | None = None,
             device: str | torch.device = "auto", progress: bool = False,
             fit_model: Callable | None = None, **params) -> PoisonedSet:
    """Poison ``dataset`` (an ImageDataset, normally the training split) with attack ``name``.

    ``params`` override the attack's publication defaults (``ATTACKS[name].defaults``);
    ``ratio`` poisons a seeded random fraction; ``subset=N`` restricts the attack (and the
    ratio) to N seeded samples (the rest stay clean; see :func:`subset_indices`).
    ``fit_model(ds, arch, epochs, device, seed, progress=...) -> model``: how attacks that
    craft against a clean model (hypo, tap) train it; :func:`st_fast.make_poison` passes the
    training engine (attacks never import it).
    """
    from ..utils import resolve_device

    spec = resolve(name)
    p = check_params(spec.name, params, ratio=ratio, seed=seed, subset=subset)
    if spec.trains_model:
        if fit_model is None:
            raise UserError(f"attack {spec.name} trains a clean crafting model: call "
                            "st_fast.make_poison(...) (same arguments), or pass fit_model=")
        p = {**p, "fit_model": fit_model}
    n = len(dataset)
    bound = float(spec.bound(p, tuple(dataset.images.shape[1:])))
    pool = subset_indices(n, subset, seed).sort().values if subset else torch.arange(n)
    chosen = pool[select_ratio(len(pool), ratio, seed)]
    images = dataset.images.clone()
    info: dict = {}
    t0 = time.perf_counter()
    if len(chosen):
        dev = resolve_device(device)
        gen = torch.Generator().manual_seed(seed)
        out = spec.fn(dataset.subset(chosen), gen, dev, progress=progress, **p)
        delta = out.delta.detach().to("cpu", torch.float32)
        if delta.shape != (len(chosen), *dataset.images.shape[1:]):
            raise RuntimeError(f"attack {spec.name} returned a perturbation of shape {tuple(delta.shape)}")
        images[chosen] = quantize(dataset.images[chosen], delta, spec.norm, bound)
        info = out.info
    meta = {
        "format_version": FORMAT_VERSION,
        "attack": spec.name,
        "params": _jsonable({k: v for k, v in p.items() if k != "fit_model"}),
        "dataset": dataset.name,
        "split": getattr(dataset, "split", "train"),
        "num_samples": n,
        "shape": list(dataset.images.shape[1:]),
        "seed": int(seed),
        "ratio": float(ratio),
        "norm": spec.norm,
        "eps": bound,
        "info": _jsonable(info),
        "generation_seconds": round(time.perf_counter() - t0, 3),
    }
    if subset:
        meta["subset"] = [int(i) for i in pool.tolist()]
    return PoisonedSet(images, dataset.labels.clone(), chosen.sort().values, meta)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    return str(obj)
