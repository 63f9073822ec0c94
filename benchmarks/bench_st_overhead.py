"""What ST costs on top of NT: ACM checks and bookkeeping per epoch, at demo scale.

NT and ST train the same data from the same initialisation; each epoch's phases are timed by
the trainer itself (history: time_train = optimizer steps incl. snapshots, time_acm = feature
extraction + t-SNE + statistics, time_eval = test evaluation, which both methods pay). The
overhead is ST's (train + ACM) over NT's train; epochs that ST rolled back are listed apart.
Each run's process CPU time is recorded too: with one thread it is what the wall time would be
on an idle machine, so ST / NT in CPU time is the figure that survives a shared, loaded CPU.
Issue 5's goal: <= 10% on the CPU at demo scale, <= 5% on a GPU.

    python benchmarks/bench_st_overhead.py [--epochs 3] [--train-subset 10000] [--write FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from st_fast.config import TrainConfig
from st_fast.st import STConfig, StagedTrainer
from st_fast.trainer import prepare_data


def run(method: str, args, poison: str | None) -> tuple[list[dict], float]:
    """(per-epoch history, process CPU seconds of fit())."""
    cfg = TrainConfig(dataset="fashion-mnist", arch="small-resnet", epochs=args.epochs, seed=0,
                      train_subset=args.train_subset, test_subset=args.test_subset, device=args.device,
                      poison=poison)
    train, test = prepare_data(cfg)
    with tempfile.TemporaryDirectory() as d:
        trainer = StagedTrainer(cfg, STConfig(method=method, log_acm=False), train, test,
                                run_dir=Path(d), progress=False)
        cpu0 = time.process_time()
        trainer.fit()
        cpu = time.process_time() - cpu0
    return trainer.history, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-subset", type=int, default=10000, help="demo scale: 10000")
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--attack", default="sp", help="model-free attack poisoning the training set")
    p.add_argument("--device", default="cpu")
    p.add_argument("--write", default=None, help="also write the markdown table to this file")
    args = p.parse_args()

    from st_fast import attacks
    from st_fast.data import load_dataset

    with tempfile.TemporaryDirectory() as d:
        poison = str(Path(d) / "poison.pt")
        attacks.generate(args.attack, load_dataset("fashion-mnist", "train"), seed=0).save(poison)
        (nt, nt_cpu), (st, st_cpu) = run("nt", args, poison), run("st", args, poison)

    def med(rows, key):
        return statistics.median(r[key] for r in rows) if rows else float("nan")

    kept = [r for r in st if not r["rolled_back"]]
    rolled = [r for r in st if r["rolled_back"]]
    nt_train, st_train, st_acm = med(nt, "time_train"), med(kept, "time_train"), med(kept, "time_acm")
    overhead = (st_train + st_acm) / nt_train - 1
    lines = [
        f"# ST overhead over NT ({args.device})", "",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f}",
        f"- date: {datetime.date.today()}",
        f"- setting: {args.attack}-poisoned Fashion-MNIST, {args.train_subset} training images, small-resnet, "
        f"{args.epochs} epochs, ACM on 1000 images (100 per class, t-SNE, default settings), "
        f"{args.test_subset} test images", "",
        "| method | epoch | train s | ACM s | eval s | rolled back |", "|---|---|---|---|---|---|",
    ]
    for name, rows in (("NT", nt), ("ST", st)):
        for r in rows:
            lines.append(f"| {name} | {r['epoch']} | {r['time_train']:.2f} | {r.get('time_acm') or 0:.2f} | "
                         f"{r['time_eval']:.2f} | {'yes' if r['rolled_back'] else ''} |")
    lines += ["", f"Median over kept epochs: NT train {nt_train:.2f} s; ST train {st_train:.2f} s + ACM "
                  f"{st_acm:.2f} s. **ST overhead: {overhead * 100:.1f}%** of an NT epoch (goal <= 10% on "
                  f"the CPU); ST steps / NT steps = {st_train / nt_train:.3f}. Rolled-back epochs: {len(rolled)} "
                  "(each costs a whole epoch plus its check; not in the median).", "",
              f"Process CPU time of the whole run (train + checks + evaluation, {args.epochs} epochs): NT "
              f"{nt_cpu:.1f} s, ST {st_cpu:.1f} s: **ST costs {(st_cpu / nt_cpu - 1) * 100:.1f}% more CPU "
              f"time than NT**" + (f" (includes {len(rolled)} rolled-back epoch(s))" if rolled else "") + ".", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        from st_fast.utils import atomic_write_text

        atomic_write_text(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
