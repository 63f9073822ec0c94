"""CG augmentation throughput: ColorGray backends against torchvision applied per image.

Workload: a batch of 512 images, 3 x 32 x 32 (CIFAR size), colour jitter (0.4, 0.4, 0.4, 0.1)
with p = 0.8, then grayscale with p = 0.2. The baseline is what a training script does today:
torchvision.transforms.v2 ``RandomApply([ColorJitter], p=0.8)`` + ``RandomGrayscale(0.2)``
called on each image of the batch.

    python -m pytest benchmarks/bench_augment.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_augment.py [--rounds 7] [--threads 1,2] [--write [PAGE]]

The script form interleaves the candidates round by round (benchmarks/harness.py), records the
median wall and process CPU time per batch and the ratios to the baseline measured in the same
rounds, once per torch thread count in ``--threads``. On a
shared machine the CPU-time ratio is the steadier figure: wall time also counts the time the
process waits for a core.
"""

from __future__ import annotations

import argparse
import statistics

import pytest
import torch
from harness import (
    Run,
    add_output_flags,
    compiler_version,
    cuda_sync,
    interleave,
    load_average,
    parse_args,
)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", default=str(torch.get_num_threads()),
                        help="comma-separated torch thread counts, one table each")  # fmt: skip
    add_output_flags(parser)
    args = parse_args(parser, argv)
    run = Run("augment", DEVICE, dists=("torchvision",), argv=argv)
    run.versions += f", {compiler_version()}"
    calls = {name: (lambda fn=fn, x=x: fn(x)) for name, (fn, x) in CANDIDATES.items()}
    for n in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(n)
        samples = interleave(calls, args.rounds, sync=cuda_sync(DEVICE))
        setting = f"{n} torch thread{'s' if n > 1 else ''} (load average after: {load_average()})"
        run.add_timings(setting, samples, unit="ms/batch", scale=1e3, baseline=BASELINE)
        for name, ss in samples.items():
            run.add(setting, name, "images/s (wall)", BATCH / statistics.median(s.wall for s in ss), "images/s",
                    better="higher")
            run.add(setting, name, "images per CPU second", BATCH / max(statistics.median(s.cpu for s in ss), 1e-9),
                    "images/s", better="higher")
    run.save(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
