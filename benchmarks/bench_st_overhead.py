"""What ST costs on top of NT: ACM checks and bookkeeping per epoch, at demo scale.

NT and ST train the same data from the same initialisation; each epoch's phases are timed by
the trainer itself (history: time_train = optimizer steps incl. snapshots, time_acm = feature
extraction + t-SNE + statistics, time_eval = test evaluation, which both methods pay). The
overhead is ST's (train + ACM) over NT's train; epochs that ST rolled back are listed apart.
Each run's process CPU time is recorded too: with one thread it is what the wall time would be
on an idle machine, so ST / NT in CPU time is the figure that survives a shared, loaded CPU.
Issue 5's goal: <= 10% on the CPU at demo scale, <= 5% on a GPU.

    python benchmarks/bench_st_overhead.py [--epochs 3] [--train-subset 10000] [--write [PAGE]]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import Run, add_output_flags, parse_args

from st_fast.config import STConfig, TrainConfig
from st_fast.data import prepare_data
from st_fast.engine import Trainer


def train_run(method: str, args, poison: str | None) -> tuple[list[dict], float]:
    """(per-epoch history, process CPU seconds of fit())."""
    cfg = TrainConfig(dataset="fashion-mnist", arch="small-resnet", epochs=args.epochs, seed=0,
                      train_subset=args.train_subset, test_subset=args.test_subset, device=args.device,
                      poison=poison)
    train, test = prepare_data(cfg)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(cfg, STConfig(method=method, log_acm=False), train, test,
                                run_dir=Path(d), progress=False)
        cpu0 = time.process_time()
        trainer.fit()
        cpu = time.process_time() - cpu0
    return trainer.history, cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-subset", type=int, default=10000, help="demo scale: 10000")
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--attack", default="sp", help="model-free attack poisoning the training set")
    p.add_argument("--device", default="cpu")
    add_output_flags(p)
    args = parse_args(p, argv)
    run = Run("st_overhead", args.device, argv=argv)

    from st_fast import attacks
    from st_fast.data import load_dataset

    with tempfile.TemporaryDirectory() as d:
        poison = str(Path(d) / "poison.pt")
        attacks.generate(args.attack, load_dataset("fashion-mnist", "train"), seed=0).save(poison)
        (nt, nt_cpu), (st, st_cpu) = train_run("nt", args, poison), train_run("st", args, poison)

    def med(rows, key):
        return statistics.median(r[key] for r in rows) if rows else float("nan")

    setting = (f"{args.attack}-poisoned Fashion-MNIST, {args.train_subset} training images, small-resnet, "
               f"{args.epochs} epochs, ACM on 1000 images (100 per class, t-SNE, default settings), "
               f"{args.test_subset} test images")
    for name, rows in (("NT", nt), ("ST", st)):
        for r in rows:
            epoch = f"{name} epoch {r['epoch']}"
            for figure, key in (("train", "time_train"), ("ACM", "time_acm"), ("eval", "time_eval")):
                run.add(f"{setting}: per epoch", epoch, figure, r.get(key) or 0.0, "s")
            run.add(f"{setting}: per epoch", epoch, "rolled back", "yes" if r["rolled_back"] else "")
    kept = [r for r in st if not r["rolled_back"]]
    nt_train, st_train, st_acm = med(nt, "time_train"), med(kept, "time_train"), med(kept, "time_acm")
    # the overhead is ST's steps + check over NT's steps (both pay the evaluation); rolled-back
    # epochs cost a whole epoch plus its check and are counted apart
    whole = f"{setting}: whole run"
    run.add_table(whole, {"NT": {"train, median of kept epochs": nt_train, "process CPU": nt_cpu},
                           "ST": {"train, median of kept epochs": st_train, "ACM, median of kept epochs": st_acm,
                                  "process CPU": st_cpu}}, unit="s")
    run.add_table(whole, {"ST": {"overhead over an NT epoch (train + ACM)": ((st_train + st_acm) / nt_train - 1) * 100,
                                  "CPU time over NT": (st_cpu / nt_cpu - 1) * 100}}, unit="%")
    run.add_table(whole, {"ST": {"steps / NT steps": st_train / nt_train,
                                  "rolled-back epochs": len(st) - len(kept)}})
    run.save(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
