"""Epoch throughput (images/s): st_fast NT and ST against a plain torchvision-style loop.

Same model (same architecture and initial weights), same batch size, same data, same
augmentation (random crop with zero padding + horizontal flip), SGD momentum 0.9, wd 5e-4:

    torchvision loop   torch DataLoader over the uint8 images with per-image torchvision
                       transforms (v2.RandomCrop(padding) + v2.RandomHorizontalFlip + ToDtype),
                       torch.optim.SGD with one param group per unit (what per-unit lrs need)
    st_fast NT         Trainer.train_epoch: device-resident data, batched crop/flip, FusedSGD
    st_fast ST         Trainer.train_epoch with ST's multipliers after one trigger (c = 1)
    ST + ACM check     Trainer.run_epoch: the same steps plus one ACM check (default
                       settings) and the test evaluation, i.e. a whole ST epoch (script form only)

Settings: CPU: small-resnet on Fashion-MNIST-shaped data (1x28x28, 10 classes, random uint8
images), 2048 images, batch 128, fp32. GPU: ResNet-18 on 3x32x32 (CIFAR-shaped), 50000 images,
batch 512, bf16 autocast, channels_last; the loop gets pinned memory and 8 workers.
Issue 8's GPU goal: NT >= 25k img/s on an H100, ST within 5% of NT.

    python -m pytest benchmarks/bench_throughput.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_throughput.py [--device cpu|cuda] [--rounds 3] [--write [PAGE]]

The script form interleaves the candidates epoch by epoch (benchmarks/harness.py) and records
median images/s and each one's ratio to the torchvision loop.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from harness import Run, add_output_flags, cuda_sync, interleave, parse_args

from st_fast.config import STConfig, TrainConfig
from st_fast.data import ImageDataset
from st_fast.engine import Trainer
from st_fast.models import build_model


@dataclass(frozen=True)
class Setting:
    device: str
    arch: str
    n: int
    channels: int
    size: int
    batch: int
    amp: str
    channels_last: bool
    workers: int
    padding: int


CPU = Setting("cpu", "small-resnet", 2048, 1, 28, 128, "off", False, 0, 4)
GPU = Setting("cuda", "resnet18", 50_000, 3, 32, 512, "bf16", True, 8, 4)


def make_data(s: Setting, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (s.n, s.channels, s.size, s.size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (s.n,), generator=g)
    ds = ImageDataset(images, labels, [str(i) for i in range(10)], (0.5,) * s.channels, (0.25,) * s.channels,
                      name="synthetic")
    test = ds.subset(torch.arange(min(1000, s.n)))
    return ds, test


def train_config(s: Setting) -> TrainConfig:
    return TrainConfig(arch=s.arch, batch_size=s.batch, lr=0.1, epochs=10, device=s.device, amp=s.amp,
                       channels_last=s.channels_last, crop_padding=s.padding, flip=True)


# ---------------------------------------------------------------------------- the baseline loop
class UInt8Images(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


class TorchvisionLoop:
    """What a user writes without st_fast: DataLoader + per-image transforms + torch SGD with one
    param group per unit."""

    def __init__(self, s: Setting, train: ImageDataset):
        from torchvision.transforms import v2

        self.s = s
        self.device = torch.device(s.device)
        torch.manual_seed(0)
        self.model = build_model(s.arch, 10, s.channels, mean=train.mean, std=train.std, image_size=s.size)
        fmt = torch.channels_last if s.channels_last else torch.preserve_format
        self.model.to(self.device, memory_format=fmt)
        groups = [{"params": list(u.parameters())} for u in self.model.units()]
        self.opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=5e-4)
        tf = v2.Compose([v2.RandomCrop(s.size, padding=s.padding), v2.RandomHorizontalFlip(),
                         v2.ToDtype(torch.float32, scale=True)])
        self.loader = torch.utils.data.DataLoader(
            UInt8Images(train.images, train.labels, tf), batch_size=s.batch, shuffle=True, drop_last=True,
            num_workers=s.workers, pin_memory=self.device.type == "cuda",
            persistent_workers=s.workers > 0)

    def epoch(self) -> int:
        self.model.train()
        n = 0
        amp = self.s.amp == "bf16"
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.s.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            n += len(y)
        _sync(self.device)
        return n


# ---------------------------------------------------------------------------- candidates
def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def candidates(s: Setting, with_acm: bool = False) -> dict:
    """name -> a callable running one epoch and returning the number of images it trained on."""
    train, test = make_data(s)
    cfg = train_config(s)
    torch.manual_seed(0)
    nt = Trainer(cfg, None, train, test, progress=False)
    st = Trainer(cfg, STConfig(method="st", log_acm=False), train, test, progress=False)
    st.policy.c = 1  # after one trigger: multipliers < 1 for the shallow units, so per-unit lrs are live
    st_scales = st.multipliers()
    loop = TorchvisionLoop(s, train)
    epochs = {"nt": 0, "st": 0}

    def run_nt():
        epochs["nt"] += 1
        nt.train_epoch(epochs["nt"], 0.1, [1.0] * nt.num_units)
        return len(nt.loader) * s.batch

    def run_st():
        epochs["st"] += 1
        st.train_epoch(epochs["st"], 0.1, st_scales)
        return len(st.loader) * s.batch

    cands = {"torchvision loop (baseline)": loop.epoch, "st_fast NT": run_nt, "st_fast ST (c = 1)": run_st}
    if with_acm:
        st_acm = Trainer(cfg, STConfig(method="st"), train, test, progress=False)

        def run_st_acm():
            st_acm.run_epoch(0)   # steps + ACM check + test evaluation (rollback decisions included)
            return len(st_acm.loader) * s.batch

        cands["st_fast ST epoch incl. ACM check + eval"] = run_st_acm
    return {"_optimizer": nt.opt.backend, **cands}


# ---------------------------------------------------------------------------- pytest-benchmark
BASELINE = "torchvision loop (baseline)"


def _bench_ratio(benchmark, s: Setting):
    """One run: every candidate's images/s and its ratio to the loop, in extra_info; the timed
    function is one st_fast NT epoch."""
    cands = candidates(s)
    backend = cands.pop("_optimizer")
    samples = interleave(cands, rounds=1, sync=cuda_sync(s.device))
    med = {k: statistics.median(x.returned / x.wall for x in v) for k, v in samples.items()}
    benchmark.extra_info.update({"device": s.device, "arch": s.arch, "batch": s.batch, "optimizer": backend})
    for k, v in med.items():
        benchmark.extra_info[f"{k} img/s"] = round(v)
        benchmark.extra_info[f"{k} / loop"] = round(v / med[BASELINE], 3)
    benchmark.pedantic(cands["st_fast NT"], rounds=2, iterations=1)
    assert all(v > 0 for v in med.values())


def test_throughput_cpu(benchmark):
    _bench_ratio(benchmark, CPU)


@pytest.mark.gpu
def test_throughput_gpu(benchmark):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    _bench_ratio(benchmark, GPU)


# ---------------------------------------------------------------------------- script form
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, help="training images (default: 2048 CPU, 50000 GPU)")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--no-acm", action="store_true", help="skip the whole-ST-epoch row")
    add_output_flags(parser)
    args = parse_args(parser, argv)
    base = CPU if args.device == "cpu" else GPU
    s = Setting(**{**base.__dict__, **({"n": args.n} if args.n else {}), **({"batch": args.batch} if args.batch else {})})
    run = Run("throughput", s.device, argv=argv)
    cands = candidates(s, with_acm=not args.no_acm)
    backend = cands.pop("_optimizer")
    samples = interleave(cands, args.rounds, sync=cuda_sync(s.device))  # one warm-up epoch each first
    setting = (f"{s.arch}, {s.n} images {s.channels}x{s.size}x{s.size} (random uint8), 10 classes, batch {s.batch}, "
               f"amp {s.amp}, channels_last {s.channels_last}, crop padding {s.padding} + flip; loop: DataLoader, "
               f"{s.workers} workers; st_fast optimizer backend: {backend}")
    run.add_rates(setting, samples, baseline=BASELINE)
    nt, st = (statistics.median(x.returned / x.wall for x in samples[k]) for k in ("st_fast NT", "st_fast ST (c = 1)"))
    run.add(setting, "st_fast ST (c = 1)", "throughput / st_fast NT's", st / nt)  # issue 8: >= 0.95 on the GPU
    run.save(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
