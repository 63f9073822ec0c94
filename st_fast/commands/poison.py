"""`st-fast poison`: make a poisoned training set (or import one made elsewhere) as one file."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _eps(text: str) -> float:
    from ..errors import UserError
    from .values import parse_value

    v = parse_value(text, "--eps")
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise UserError(f"expected a number > 0 or a fraction like 8/255, got {text!r}")
    return float(v)


# flags that only make a poison, and flags that only import one: each refused with the other
_GENERATE_ONLY = {"ratio": "--ratio", "seed": "--seed", "subset": "--subset", "arch": "--arch",
                  "epochs": "--epochs", "steps": "--steps", "step_size": "--step-size", "device": "--device",
                  "progress": "--progress"}
_IMPORT_ONLY = {"label": "--label", "kind": "--kind", "norm": "--norm", "rounding": "--rounding",
                "indices": "--indices", "allow_missing": "--allow-missing"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "poison", help="generate an unlearnable (poisoned) training set, or import one",
        description="Poison a training set with one attack and write it as one file, which "
                    "`st-fast train --poison FILE` trains on. Attack defaults follow the "
                    "publications (see docs/attacks.md); flags override them. With --from, import "
                    "a poison made elsewhere instead, checked against the clean training set.")
    p.add_argument("--attack", default=None,
                   help="sp, ops, ar, em-sample, em-class, rem, tap, hypo, em-t, em-class-t, rem-t, "
                        "em-a (with --from: the attack the poison was made with)")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset whose training set is poisoned")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    p.add_argument("--out", required=True, help="file to write (e.g. poisons/em-fmnist.pt)")
    p.add_argument("--eps", type=_eps, default=None,
                   help="the attack's eps, e.g. 8/255 (L_inf) or 1.0 (AR's L2); with --label: the bound in --norm")
    p.add_argument("--ratio", type=float, default=None, help="fraction of the training set to poison (0..1; default 1)")
    p.add_argument("--seed", type=int, default=None, help="seed of the attack and of the poisoned subset (default 0)")
    p.add_argument("--subset", type=int, default=None,
                   help="attack only N seeded samples (same draw as `train --train-subset N --seed S`)")
    p.add_argument("--arch", default=None, help="surrogate architecture (surrogate-based attacks)")
    p.add_argument("--epochs", type=int, default=None, help="surrogate training epochs")
    p.add_argument("--steps", type=int, default=None, help="PGD steps per perturbation update")
    p.add_argument("--step-size", type=_eps, default=None, help="PGD step size, e.g. 0.8/255")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other attack parameter (repeatable), e.g. --param patch_size=4")
    p.add_argument("--device", default=None, help="auto (CUDA when available; the default), cpu, cuda or cuda:N")
    p.add_argument("--progress", action="store_true", default=None, help="show the attack's progress bars")
    g = p.add_argument_group("import (--from)")
    g.add_argument("--from", dest="source", default=None,
                   help="import instead of generating: poisoned images or a perturbation (.pt/.npy/.npz), "
                        "a folder of <index>.png, or an st_fast poisoned-set file")
    g.add_argument("--label", default=None, help="name of a poison made by an attack st_fast does not have "
                                                 "(recorded as foreign; needs --norm and --eps)")
    g.add_argument("--kind", default=None, choices=("images", "delta"),
                   help="what float data holds: poisoned images in [0, 1] or a perturbation (uint8 data are images)")
    g.add_argument("--norm", default=None, choices=("linf", "l2", "l0"),
                   help="norm of a foreign poison's bound (--label); a known attack's norm is its own")
    g.add_argument("--rounding", default=None, choices=("floor", "nearest", "half-up"),
                   help="float -> uint8 rule for a perturbation or float images (default: the attack's "
                        "authors' rule, see docs/attacks.md)")
    g.add_argument("--indices", default=None, metavar="FILE",
                   help="training-set index of each row (or the expected PNGs): .npy, .json or text")
    g.add_argument("--allow-missing", action="store_true", default=None,
                   help="accept a PNG folder without some <index>.png (those images stay clean; counted)")
    p.set_defaults(func=run)


def _params(items: list[str]) -> dict:
    from .values import parse_key_values

    return parse_key_values(items, "--param", "eps=8/255")


def _refuse(args: argparse.Namespace, flags: dict, why: str) -> None:
    from ..errors import UserError

    given = [flag for key, flag in flags.items() if getattr(args, key) is not None]
    if given:
        raise UserError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply {why}")


def run(args: argparse.Namespace) -> int:
    from .. import attacks
    from ..data import load_dataset
    from ..errors import UserError
    from ..files import check_writable
    from ..run import make_poison

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"{out}: is a directory; --out names the poisoned-set file to write (e.g. {out}/sp.pt)")
    params = _params(args.param)
    if args.source:
        _refuse(args, _GENERATE_ONLY, "with --from (an imported poison was made elsewhere)")
        if not Path(args.source).exists():
            raise UserError(f"{args.source}: no such file or folder (--from)")
        indices = args.indices
        if indices is not None and not Path(indices).is_file():
            raise UserError(f"{indices}: no such indices file (--indices)")
    else:
        _refuse(args, _IMPORT_ONLY, "without --from (they describe an imported poison)")
        if args.attack is None:
            raise UserError("--attack is required (or --from PATH to import a poison)")
        spec = attacks.resolve(args.attack)   # fail fast on a typo
        flags = {"eps": args.eps, "arch": args.arch, "epochs": args.epochs, "steps": args.steps,
                 "step_size": args.step_size}
        for key, val in flags.items():
            if val is None:
                continue
            if key not in spec.defaults:
                raise UserError(f"attack {spec.name} has no --{key.replace('_', '-')} "
                                f"(its parameters: {', '.join(sorted(spec.defaults)) or 'none'})")
            params[key] = val
        ratio = 1.0 if args.ratio is None else args.ratio
        seed = 0 if args.seed is None else args.seed
        attacks.check_params(spec.name, params, ratio=ratio, seed=seed, subset=args.subset)
    check_writable(out, "poisoned-set file")   # before the attack runs, not after
    train = load_dataset(args.dataset, "train", root=args.data_root, download=args.download)
    if args.source:
        ps = attacks.import_any(args.source, train, attack=args.attack, label=args.label, kind=args.kind,
                                norm=args.norm, eps=args.eps, params=params or None, rounding=args.rounding,
                                indices=args.indices, allow_missing=bool(args.allow_missing))
        info = ps.meta.get("info", {})
        if info.get("missing"):
            print(f"{args.source}: {info['missing']} expected PNGs missing; those images stay clean")
    else:
        ps = make_poison(spec.name, train, ratio=ratio, seed=seed, subset=args.subset,
                         device=args.device or "auto", progress=bool(args.progress), **params)
    ps.save(out)
    print(f"{ps.describe()} -> {out}")
    return 0
