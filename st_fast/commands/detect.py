"""`st-fast detect`: is a training set unlearnable (availability-poisoned)? Before training on it."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser(
        "detect", help="tell whether a training set is poisoned (unlearnable) before training on it",
        description="Three tests (docs/detect.md): how fast a linear model fits the training set compared "
                    "with a copy whose small perturbations are destroyed (with a small network and the "
                    "early-epoch ACM as evidence), whether the pixels of flat regions pile up at a hard "
                    "bound, as an L_inf-bounded perturbation leaves them, and whether a small-resnet trained "
                    "on part of the set classifies the rest much better than the same recipe on the copy. Prints the verdict, the score and the threshold "
                    "that gives it, the evidence and the most suspicious classes. The exit status is 0 "
                    "for either verdict (2 only for bad input).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--poison", default=None, help="a poisoned-set file (from `st-fast poison`)")
    src.add_argument("--dataset", default=None, help="a dataset's training split, e.g. fashion-mnist")
    p.add_argument("--data-root", default=None, help="directory holding the dataset files (with --dataset)")
    p.add_argument("--subsample", type=int, default=2000,
                   help="class-balanced images the probes train on (per-sample scores cover all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsample and the probes")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--no-held-out", dest="held_out", action="store_false",
                   help="skip the held-out test (two small-resnet trainings: 30-60 s less on a CPU, "
                        "but sample-wise EM is then missed)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--per-sample", metavar="FILE", default=None,
                   help="also write every image's score as a .npy (higher: more likely poisoned)")
    p.set_defaults(func=run)


def load_input(args: argparse.Namespace):
    from ..data import load_dataset
    from ..data.poisoned import load as load_poison

    if args.poison:
        if args.data_root:
            from ..errors import UserError

            raise UserError("--data-root goes with --dataset; a poisoned-set file holds its images")
        return load_poison(args.poison)
    return load_dataset(args.dataset, "train", root=args.data_root)


def run(args: argparse.Namespace) -> int:
    from ..detect import detect
    from ..files import check_writable

    if args.per_sample:
        check_writable(args.per_sample, "per-sample scores file")
    result = detect(load_input(args), subsample=args.subsample, seed=args.seed, device=args.device,
                    held_out=args.held_out)
    if args.per_sample:
        import numpy as np

        from ..files import atomic_path

        with atomic_path(args.per_sample, suffix=".npy") as tmp:
            np.save(tmp, result.per_sample.numpy())
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(format_text(result))
    return 0


def format_text(d) -> str:
    e = d.evidence
    lines = [f"verdict: {d.verdict} (score {d.score:.2f} {'>' if d.poisoned else '<='} threshold {d.threshold:.2f}, "
             f"the largest test score in units of its threshold; {d.settings['subsample']} of {len(d.per_sample)} "
             f"images, {d.seconds:.1f} s)"]
    fit, bound = e["tests"]["fit_speed"], e["tests"]["bound"]
    lines.append(f"  fit-speed test: {fit['score']:+.2f} points vs threshold {fit['threshold']:.1f}"
                 f"{' (flagged)' if fit['flagged'] else ''}")
    at = f" at {bound['bound']}/255" if bound["bound"] else ""
    lines.append(f"  bound test: {bound['score']:.2f}% of flat pixels in a spike{at} vs threshold "
                 f"{bound['threshold']:.1f}{' (flagged)' if bound['flagged'] else ''}")
    if "held_out" in e["tests"]:
        h = e["tests"]["held_out"]
        lines.append(f"  held-out test: {h['score']:+.2f} points vs threshold {h['threshold']:.1f}"
                     f"{' (flagged)' if h['flagged'] else ''} ({h['arch']}, {h['epochs']} epochs on {h['train_images']} "
                     f"images: {100 * h['raw_accuracy']:.1f}% on {h['held_out_images']} others vs "
                     f"{100 * h['reference_accuracy']:.1f}% on the reference copy)")
    for probe in ("linear", "network"):
        p = e[probe]
        lines.append(f"  {probe} fit speed: {p['raw_fit']:.1f} on the data vs {p['reference_fit']:.1f} on the "
                     f"reference copy (gap {p['gap']:+.1f} points)")
    if "acm_epoch1" in e:
        a = e["acm_epoch1"]
        lines.append(f"  ACM after epoch 1: {a['raw']:.3f} vs {a['reference']:.3f} on the reference ({a['ratio']:.2f}x)")
    top = sorted(d.per_class.items(), key=lambda kv: -kv[1])[:3]
    lines.append("  most suspicious classes (in thresholds, per class: not a verdict): " + ", ".join(f"{name} {v:.2f}" for name, v in top))
    lines.append(f"  reference copy: {d.settings['reference']}")
    return "\n".join(lines)
