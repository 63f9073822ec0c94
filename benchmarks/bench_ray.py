"""What Ray adds per cell: the tiny benchmark matrix (4 cells, 2 poisons) serial vs on Ray.

Candidates, each from an empty output folder (poisons made, every cell trained, reports written):
"serial" runs the cells one after another in this process with one torch thread; "ray, 1
worker" and "ray, 2 workers" start a local Ray instance of 1 / 2 CPUs (one-thread tasks) and
shut it down, both inside the timed call. Each Ray call also returns how long its
``ray.init`` took, so the matrix time without the start-up is reported beside the total, and
the overhead per cell is (ray 1 worker, without start-up - serial) / cells: the task
submission, the worker processes' imports and the result round trip.

    python benchmarks/bench_ray.py --rounds 2 --write
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from harness import Run, add_output_flags, interleave, parse_args  # noqa: E402


def matrix_config(data_root: Path, epochs: int):
    from st_fast.bench import parse_config

    return parse_config({"name": "ray-overhead", "dataset": "fashion-mnist", "attacks": ["sp"],
                         "ratios": [1.0, 0.5], "defences": ["nt", "st"], "seeds": [0],
                         "data_root": str(data_root),
                         "train": {"epochs": epochs, "batch_size": 32, "device": "cpu", "optimizer": "torch"},
                         "st": {"acm_embedding": None, "acm_per_class": 4, "log_acm": False}})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each runs every candidate)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per cell")
    p.add_argument("--train-images", type=int, default=120, help="images of the synthetic training set")
    add_output_flags(p)
    args = parse_args(p, argv)

    import ray
    import torch

    from st_fast.bench import run_bench
    from st_fast.bench.ray_executor import RayOptions
    from tests.helpers import write_tiny_fashion

    torch.set_num_threads(1)
    run = Run("ray", dists=("ray",))
    work = Path(tempfile.mkdtemp(prefix="bench_ray-"))
    cfg = matrix_config(write_tiny_fashion(work / "data", n_train=args.train_images), args.epochs)
    cells = len(cfg.cells())
    calls = iter(range(10**6))

    def serial():
        run_bench(cfg, work / f"out{next(calls)}", device="cpu", quiet=True)
        return 0.0

    def on_ray(cpus: int):
        def call():
            t0 = time.perf_counter()
            ray.init(num_cpus=cpus, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False)
            started = time.perf_counter() - t0
            try:
                run_bench(cfg, work / f"out{next(calls)}", device="cpu", executor="ray", quiet=True,
                          ray_options=RayOptions(cpus_per_cell=1))
            finally:
                ray.shutdown()
            return started
        return call

    try:
        samples = interleave({"serial": serial, "ray, 1 worker": on_ray(1), "ray, 2 workers": on_ray(2)},
                             rounds=args.rounds, warmup=0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    setting = (f"{cells} cells (sp at ratios 1 and 0.5 x nt, st), 2 poisons; {args.train_images} "
               f"synthetic 28x28 images, {args.epochs} epochs, small-resnet, one torch thread per worker")
    run.add_timings(setting, samples, baseline="serial")
    matrix = {}
    for name, ss in samples.items():
        init = [s.returned for s in ss]
        matrix[name] = statistics.median(s.wall - s.returned for s in ss)
        if name != "serial":
            run.add(setting, name, "ray.init", statistics.median(init), "s", rounds=len(ss), better="lower")
            run.add(setting, name, "wall without ray.init", matrix[name], "s", rounds=len(ss), better="lower")
    run.add(setting, "ray, 1 worker", "overhead per cell vs serial", (matrix["ray, 1 worker"] - matrix["serial"]) / cells,
            "s", rounds=args.rounds, better="lower")
    run.save(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
