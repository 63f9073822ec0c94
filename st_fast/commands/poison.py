"""`st-fast poison`: make a poisoned training set (or import one made elsewhere) as one file."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _value(text: str):
    """Parse a --param value: JSON number/bool/list if it is one, a fraction like 8/255, else text."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    if "/" in text:
        num, _, den = text.partition("/")
        try:
            return float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            pass
    return text


def _eps(text: str) -> float:
    from ..errors import UserError

    v = _value(text)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise UserError(f"expected a number > 0 or a fraction like 8/255, got {text!r}")
    return float(v)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "poison", help="generate an unlearnable (poisoned) training set",
        description="Poison a training set with one attack and write it as one file, which "
                    "`st-fast train --poison FILE` trains on. Attack defaults follow the "
                    "publications (see docs/attacks.md); flags override them.")
    p.add_argument("--attack", required=True,
                   help="sp, ops, ar, em-sample, em-class, rem, tap, hypo (or a name for --from)")
    p.add_argument("--dataset", default="fashion-mnist", help="dataset whose training set is poisoned")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    p.add_argument("--out", required=True, help="file to write (e.g. poisons/em-fmnist.pt)")
    p.add_argument("--eps", type=_eps, default=None, help="perturbation bound, e.g. 8/255 (L_inf) or 1.0 (L2)")
    p.add_argument("--ratio", type=float, default=1.0, help="fraction of the training set to poison (0..1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack and of the poisoned subset")
    p.add_argument("--subset", type=int, default=None,
                   help="attack only N seeded samples (same draw as `train --train-subset N --seed S`)")
    p.add_argument("--arch", default=None, help="surrogate architecture (surrogate-based attacks)")
    p.add_argument("--epochs", type=int, default=None, help="surrogate training epochs")
    p.add_argument("--steps", type=int, default=None, help="PGD steps per perturbation update")
    p.add_argument("--step-size", type=_eps, default=None, help="PGD step size, e.g. 0.8/255")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other attack parameter (repeatable), e.g. --param patch_size=4")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--from", dest="source", default=None,
                   help="import instead of generating: a perturbation (.pt/.npy/.npz, float in "
                        "[-eps, eps]), poisoned uint8 images, or a folder of <index>.png")
    p.add_argument("--norm", default="linf", choices=("linf", "l2", "l0"), help="norm of an imported perturbation")
    p.add_argument("--progress", action="store_true", help="show the attack's progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import attacks
    from ..data import load_dataset
    from ..errors import UserError
    from ..files import check_writable
    from ..run import make_poison

    spec = None if args.source else attacks.resolve(args.attack)   # fail fast on a typo
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"{out}: is a directory; --out names the poisoned-set file to write (e.g. {out}/sp.pt)")
    params = {}
    if not args.source:
        for item in args.param:
            key, sep, val = item.partition("=")
            if not sep or not key:
                raise UserError(f"--param needs KEY=VALUE, got {item!r}")
            params[key.replace("-", "_")] = _value(val)
        flags = {"eps": args.eps, "arch": args.arch, "epochs": args.epochs, "steps": args.steps,
                 "step_size": args.step_size}
        for key, val in flags.items():
            if val is None:
                continue
            if key not in spec.defaults:
                raise UserError(f"attack {spec.name} has no --{key.replace('_', '-')} "
                                f"(its parameters: {', '.join(sorted(spec.defaults)) or 'none'})")
            params[key] = val
        attacks.check_params(spec.name, params, ratio=args.ratio, seed=args.seed, subset=args.subset)
    check_writable(out, "poisoned-set file")   # before the attack runs, not after
    train = load_dataset(args.dataset, "train", root=args.data_root, download=args.download)
    if args.source:
        ps = attacks.import_any(args.source, train, attack=args.attack, norm=args.norm, eps=args.eps)
    else:
        ps = make_poison(spec.name, train, ratio=args.ratio, seed=args.seed, subset=args.subset,
                              device=args.device, progress=args.progress, **params)
    ps.save(out)
    print(f"{ps.describe()} -> {out}")
    return 0
