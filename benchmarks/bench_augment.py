"""CG augmentation throughput: ColorGray backends against torchvision applied per image.

Workload: a batch of 512 images, 3 x 32 x 32 (CIFAR size), colour jitter (0.4, 0.4, 0.4, 0.1)
with p = 0.8, then grayscale with p = 0.2. The baseline is what a training script does today:
torchvision.transforms.v2 ``RandomApply([ColorJitter], p=0.8)`` + ``RandomGrayscale(0.2)``
called on each image of the batch.

    python -m pytest benchmarks/bench_augment.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_augment.py [--rounds 7] [--threads 1,2] [--write benchmarks/results/augment_cpu.md]

The script form interleaves the candidates round by round (so load from other processes hits
all of them alike), reports the median wall and process CPU time per batch and the ratios to
the baseline measured in the same rounds, once per torch thread count in ``--threads``. On a
shared machine the CPU-time ratio is the steadier figure: wall time also counts the time the
process waits for a core.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import pytest
import torch
from torchvision.transforms import v2

from st_fast.augment import ColorGray, available_backends

BATCH, SIZE = 512, 32
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BASELINE = "torchvision v2 per image (baseline)"


def make_batch(dtype=torch.float32, device=DEVICE, seed=0):
    x = torch.rand(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x
    return x.to(device)


def torchvision_per_image():
    t = v2.Compose(
        [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(0.2)]
    )
    return lambda x: torch.stack([t(img) for img in x])


def candidates(device=DEVICE) -> dict:
    """name -> (function of a batch, batch); only backends that can run here."""
    status = available_backends(device)
    x_float, x_uint8 = make_batch(torch.float32, device), make_batch(torch.uint8, device)
    cands = {
        BASELINE: (torchvision_per_image(), x_float),
        "ColorGray torchvision (functional per image)": (ColorGray(backend="torchvision"), x_float),
    }
    for backend in ("torch", "cpp", "triton", "dali"):
        if status[backend] != "ok":
            continue
        cands[f"ColorGray {backend} float32"] = (ColorGray(backend=backend), x_float)
        cands[f"ColorGray {backend} uint8"] = (ColorGray(backend=backend), x_uint8)
    return cands


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


CANDIDATES = candidates()


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_color_gray_batch(benchmark, name):
    fn, x = CANDIDATES[name]
    fn(x)  # warm up: pipelines are built, kernels compiled
    benchmark.extra_info["images"] = BATCH
    benchmark.pedantic(lambda: (fn(x), _sync()), rounds=5, iterations=1)


# ----------------------------------------------------------------------------- script form


def interleaved(cands: dict, rounds: int) -> tuple[dict, dict]:
    """Wall seconds and process CPU seconds (all threads) per call, per candidate."""
    wall = {name: [] for name in cands}
    cpu = {name: [] for name in cands}
    for fn, x in cands.values():
        fn(x)
    _sync()
    for _ in range(rounds):
        for name, (fn, x) in cands.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn(x)
            _sync()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def _versions() -> str:
    import torchvision
    import triton

    try:
        cxx = os.environ.get("CXX", "c++")
        compiler = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
        compiler = compiler.splitlines()[0]
    except (OSError, IndexError):
        compiler = "no C++ compiler"
    return (
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"triton {triton.__version__}, python {platform.python_version()}, {compiler}"
    )


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def table(wall: dict, cpu: dict) -> list[str]:
    base, base_cpu = statistics.median(wall[BASELINE]), statistics.median(cpu[BASELINE])
    lines = [
        "| candidate | wall ms / batch | images/s (wall) | x baseline (wall) "
        "| CPU ms / batch | images/s per CPU second | x baseline (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in wall:
        med, med_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
        lines.append(
            f"| {name} | {med * 1e3:.1f} | {BATCH / med:,.0f} | {base / med:.1f} "
            f"| {med_cpu * 1e3:.1f} | {BATCH / med_cpu:,.0f} | {base_cpu / med_cpu:.1f} |"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", default=str(torch.get_num_threads()),
                        help="comma-separated torch thread counts, one table each")  # fmt: skip
    parser.add_argument("--write", help="write the markdown report here")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    start = datetime.datetime.now().isoformat(timespec="minutes")
    lines = [
        "# CG augmentation throughput",
        "",
        f"- machine: {machine()}, device {DEVICE}",
        f"- {_versions()}",
        f"- date: {start}",
        f"- workload: {BATCH} images 3x{SIZE}x{SIZE}, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 + grayscale p=0.2",
        f"- {args.rounds} interleaved rounds per table, medians; CPU ms = process CPU time of all threads",
        f"- load average at the start: {_load()}",
        f"- OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "- command: `" + shlex.join(["python", *sys.argv]) + "`",
    ]
    for n in threads:
        torch.set_num_threads(n)
        wall, cpu = interleaved(CANDIDATES, args.rounds)
        lines += [
            "",
            f"## {n} torch thread{'s' if n > 1 else ''} (load average after: {_load()})",
            "",
        ]
        lines += table(wall, cpu)
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        from st_fast.utils import atomic_write_text

        atomic_write_text(args.write, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
