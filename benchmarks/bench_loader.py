"""Data pipeline alone: st_fast's DeviceLoader vs a torchvision DataLoader with per-image transforms.

Both produce float batches in [0, 1] with random crop (zero padding 4) and horizontal flip, in
a random order, from the same uint8 images; no model runs, so this is the input pipeline's cost.

    python -m pytest benchmarks/bench_loader.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_loader.py [--device cpu|cuda] [--rounds 5] [--write [PAGE]]

The script form interleaves the two per round (benchmarks/harness.py) and records median images/s
and the ratio to the DataLoader.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from harness import Run, add_output_flags, cuda_sync, interleave, parse_args

from st_fast.data import DeviceLoader

N, BATCH = 10000, 128


def make_images(channels=1, size=28, n=N):
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def torchvision_loader(images, labels, workers=0):
    from torchvision.transforms import v2

    tf = v2.Compose([v2.RandomCrop(images.shape[-1], padding=4), v2.RandomHorizontalFlip(),
                     v2.ToDtype(torch.float32, scale=True)])

    class PerImage(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return tf(images[i]), labels[i]

    return torch.utils.data.DataLoader(PerImage(), batch_size=BATCH, shuffle=True, num_workers=workers)


def device_loader(images, labels, device="cpu"):
    return DeviceLoader(images, labels, BATCH, crop_padding=4, flip=True, device=device)


def one_epoch(loader, device) -> int:
    n = 0
    for x, _ in loader:
        x = x.to(device, non_blocking=True)
        n += len(x)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return n


@pytest.mark.parametrize("which", ["torchvision", "st_fast"])
def test_loader_epoch(benchmark, which):
    images, labels = make_images(n=2048)
    loader = device_loader(images, labels) if which == "st_fast" else torchvision_loader(images, labels)
    benchmark.pedantic(one_epoch, args=(loader, "cpu"), rounds=3, warmup_rounds=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    add_output_flags(ap)
    args = parse_args(ap, argv)
    run = Run("loader", args.device, argv=argv)
    images, labels = make_images()
    loaders = {"torchvision DataLoader, per image": torchvision_loader(images, labels),
               "st_fast DeviceLoader": device_loader(images, labels, args.device)}
    epochs = {name: (lambda loader=loader: one_epoch(loader, args.device)) for name, loader in loaders.items()}
    samples = interleave(epochs, args.rounds, sync=cuda_sync(args.device))
    run.add_rates(f"{N} images 1x28x28, batch {BATCH}, crop pad 4 + flip", samples,
                  baseline="torchvision DataLoader, per image")
    run.save(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
