"""Import of poisons made elsewhere (`st-fast poison --from`): what the poison claims to be.

The data-side checks live in st_fast.data.foreign; this module turns the user's words into a
:class:`~st_fast.data.foreign.Claim` with the attack registry:

* ``attack=NAME`` must be a registered attack: its norm, and its bound computed from its
  parameters exactly as for a generated poison (``eps`` means what ``--eps`` means when
  generating: for SP the L_inf-equivalent 6/255, whose L2 bound is sqrt(C*H*W)*eps), and the
  rounding its authors' code uses (:data:`AUTHOR_ROUNDING`);
* ``label=TEXT`` names anything else, recorded as foreign; it must state ``norm`` and ``eps``
  (the bound itself) because there is no registry entry to take them from.
"""

from __future__ import annotations

from ..data import foreign
from ..data.foreign import Claim
from ..data.perturbation import NORMS
from ..data.poisoned import PoisonedSet, load
from ..errors import UserError
from .base import ATTACKS, check_params, resolve

# float -> uint8 as each author's released code writes its poisoned images (docs/attacks.md):
# SP (dayu11/Availability-Attacks-Create-Shortcuts) and OPS (cychomatica/One-Pixel-Shotcut)
# ``np.uint8(clip(x + delta, 0, 1) * 255)``: truncation; EM (HanxunH/Unlearnable-Examples)
# truncates ``clip(x*255 + delta*255)`` with ``astype(np.uint8)``; AR
# (psandovalsegura/autoregressive-poisoning) ``mul(255).add_(0.5)`` then truncation: half up.
# Attacks not listed: round to nearest (we have not read their export code).
AUTHOR_ROUNDING = {"sp": "floor", "ops": "floor", "em-sample": "floor", "em-class": "floor", "ar": "half-up"}


def claim(*, attack: str | None = None, label: str | None = None, norm: str | None = None,
          eps: float | None = None, params: dict | None = None, shape: tuple, where: str = "") -> Claim:
    """Resolve what an imported poison claims to be (one-line errors prefixed by ``where``)."""
    at = f"{where}: " if where else ""
    if (attack is None) == (label is None):
        raise UserError(f"{at}name the attack the poison was made with (--attack, one of "
                        f"{', '.join(ATTACKS)}) or label a foreign one (--label TEXT with --norm and --eps)")
    if norm is not None and norm not in NORMS:
        raise UserError(f"{at}norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if label is not None:
        text = str(label).strip()
        if not text:
            raise UserError(f"{at}--label needs a name for the foreign poison")
        if text.lower().replace("_", "-") in ATTACKS:
            raise UserError(f"{at}{text!r} is a registered attack: use --attack {text}")
        if norm is None or eps is None:
            raise UserError(f"{at}a foreign poison (--label) states its bound: pass --norm and --eps")
        if params:
            raise UserError(f"{at}--param applies to registered attacks (--attack), not to --label")
        if not float(eps) > 0:
            raise UserError(f"{at}eps must be > 0, got {eps}")
        return Claim(text, True, norm, float(eps), {}, "nearest")
    spec = resolve(attack)
    if norm is not None and norm != spec.norm:
        raise UserError(f"{at}{spec.name} is bounded in {spec.norm}, not {norm}; --norm is for foreign "
                        "poisons (--label)")
    p = dict(params or {})
    if eps is not None:
        if "eps" not in spec.defaults:
            raise UserError(f"{at}{spec.name} has no eps: its bound comes from its parameters "
                            f"({', '.join(sorted(spec.defaults))}; --param KEY=VALUE)")
        p["eps"] = eps
    checked = check_params(spec.name, p, source=where)
    bound = float(spec.bound(checked, tuple(shape)))
    return Claim(spec.name, False, spec.norm, bound, checked, AUTHOR_ROUNDING.get(spec.name, "nearest"))


def import_any(source, dataset, *, attack: str | None = None, label: str | None = None,
               kind: str | None = None, norm: str | None = None, eps: float | None = None,
               params: dict | None = None, rounding: str | None = None, indices=None,
               allow_missing: bool = False) -> PoisonedSet:
    """Import ``source`` (array, .pt/.npy/.npz file, PNG folder, or an st_fast poisoned-set file)
    as a poisoned ``dataset``. See docs/attacks.md, "Importing poisons made elsewhere"."""
    if not hasattr(source, "shape") and foreign.is_st_fast_file(source):
        return _load_own(source, dataset, attack=attack, label=label, kind=kind, norm=norm, eps=eps,
                         params=params, rounding=rounding, indices=indices, allow_missing=allow_missing)
    where = foreign.source_name(source)
    c = claim(attack=attack, label=label, norm=norm, eps=eps, params=params,
              shape=tuple(dataset.images.shape[1:]), where=where)
    return foreign.import_any(source, dataset, c, kind=kind, rounding=rounding, indices=indices,
                              allow_missing=allow_missing)


def _load_own(path, dataset, *, attack, label, **options) -> PoisonedSet:
    given = sorted(k for k, v in options.items() if v not in (None, False, {}))
    if given:
        raise UserError(f"{path}: an st_fast poisoned-set file carries its own attack, bound and "
                        f"indices; {', '.join(given)} do not apply")
    ps = load(path, dataset=dataset)
    named = label if label is not None else (resolve(attack).name if attack is not None else None)
    if named is not None and named != ps.attack:
        raise UserError(f"{path}: the file holds a {ps.attack} poison, not {named}")
    return ps


def from_perturbation(source, dataset, *, rounding: str | None = None, indices=None, **who) -> PoisonedSet:
    """A float perturbation made elsewhere; ``who``: attack= or label= (+ norm, eps, params)."""
    return foreign.from_perturbation(source, dataset, _claim_for(source, dataset, who),
                                     rounding=rounding, indices=indices)


def from_images(source, dataset, *, rounding: str | None = None, indices=None, **who) -> PoisonedSet:
    """Poisoned images made elsewhere (uint8, or float in [0, 1]); ``who`` as above."""
    return foreign.from_images(source, dataset, _claim_for(source, dataset, who), rounding=rounding,
                               indices=indices)


def from_png_folder(folder, dataset, *, indices=None, allow_missing: bool = False, **who) -> PoisonedSet:
    """A folder of ``<index>.png``; ``who`` as above."""
    return foreign.from_png_folder(folder, dataset, _claim_for(folder, dataset, who), indices=indices,
                                   allow_missing=allow_missing)


def _claim_for(source, dataset, who: dict) -> Claim:
    return claim(**who, shape=tuple(dataset.images.shape[1:]), where=foreign.source_name(source))
