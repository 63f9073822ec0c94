"""ACM's t-SNE noise on real states, and what reading it under k seeds costs.

Given a run directory of ``st-fast train`` (config.json + checkpoint.pt), this retrains the
same run epoch by epoch (the checkpoint's final state must come out bit for bit, else the
script stops), reads ACM on the run's own ACM subset under ``--repeats`` t-SNE seeds at every
epoch (``st_fast.acm(..., repeats=k)``), and then times, on the checkpoint's state, ACM alone
and a whole check (features of the subset + ACM) for k = 1, 3, 5 (interleaved rounds; the
ratio column is against k = 1).

    st-fast poison --attack sp --out sp.pt
    st-fast train --train-subset 5000 --epochs 5 --val-size 20 --poison sp.pt --out runs/sp-nt
    python benchmarks/bench_acm_repeats.py --run-dir runs/sp-nt [--repeats 5] [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from harness import Run, add_output_flags, interleave, parse_args

from st_fast.cluster import acm
from st_fast.config import STConfig, TrainConfig
from st_fast.data import prepare_data
from st_fast.engine import Trainer
from st_fast.files import load_torch_file


def rebuild(run_dir: Path) -> tuple[Trainer, dict]:
    config = json.loads((run_dir / "config.json").read_text())
    method = config.pop("method")
    config.pop("optimizer_backend", None)
    cfg = TrainConfig.from_dict(config, str(run_dir / "config.json"))
    train, test, _ = prepare_data(cfg, with_val=True)
    trainer = Trainer(cfg, STConfig(method=method), train, test, run_dir=None, progress=False)
    return trainer, load_torch_file(run_dir / "checkpoint.pt", "st_fast checkpoint")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", required=True, type=Path, help="an st-fast train run directory")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    add_output_flags(p)
    args = parse_args(p, argv)
    run = Run("acm_repeats", "cpu", argv=argv)
    trainer, ckpt = rebuild(args.run_dir)
    if trainer.acm_idx is None:
        sys.exit("the run measured no ACM (--no-acm-log)")
    images, labels = trainer.train_set.images[trainer.acm_idx], trainer.train_set.labels[trainer.acm_idx]
    logged = [r["acm"] for r in ckpt["history"]]
    setting = f"{args.run_dir.name}: ACM over {args.repeats} t-SNE seeds, N = {len(labels)}"
    for epoch in range(1, len(logged) + 1):
        trainer.fit(stop_after=epoch)
        stats = acm(trainer.features(images), labels, repeats=args.repeats, return_stats=True)
        name = f"epoch {epoch} ({trainer.history[-1]['phase']})"
        run.add_table(setting, {name: {"logged": logged[epoch - 1], "mean": stats.acm, "std": stats.std,
                                       "min": min(stats.values), "max": max(stats.values),
                                       "max - min": max(stats.values) - min(stats.values)}})
        print(name, stats.values, stats.implementation, flush=True)
    same = all(torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(), ckpt["model"].values()))
    if not same:
        sys.exit("the retrained run does not reproduce the checkpoint: its states are not the run's")

    trainer.model.load_state_dict(ckpt["model"])
    feats = trainer.features(images)
    alone = {f"acm, k={k}": (lambda k=k: acm(feats, labels, repeats=k)) for k in (1, 3, 5)}
    check = {f"check, k={k}": (lambda k=k: acm(trainer.features(images), labels, repeats=k)) for k in (1, 3, 5)}
    timed = interleave({**alone, **check}, args.rounds)
    run.add_timings("ACM alone on the final state", {k: timed[k] for k in alone}, baseline="acm, k=1")
    run.add_timings("a check: features of the subset + ACM", {k: timed[k] for k in check},
                    baseline="check, k=1")
    for k, samples in timed.items():
        print(k, statistics.median(s.wall for s in samples), flush=True)
    run.save(args)
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    raise SystemExit(code)
