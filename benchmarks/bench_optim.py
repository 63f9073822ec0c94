"""FusedSGD step time on ResNet-18's parameters vs torch.optim.SGD with one group per unit.

ResNet-18 (torchvision, 10 classes): 62 parameter tensors, 11.2M values, 10 units (stem, eight
residual blocks, head), momentum 0.9, weight decay 5e-4, random gradients set once. Each unit
has its own lr multiplier (ST's lambda_l); torch needs one param group per unit for that.

    python -m pytest benchmarks/bench_optim.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_optim.py [--rounds 15] [--write [PAGE]]

The script form interleaves the candidates round by round (benchmarks/harness.py), records
medians and the ratio to the faster torch per-unit-groups variant (by median wall time), and
checks that every candidate computed the same update as torch's single-tensor SGD.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import pytest
import torch
from harness import Run, add_output_flags, cuda_sync, interleave, parse_args
from torch import nn

from st_fast.optim import FusedSGD

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
HYPER = dict(momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def resnet18_units(model: nn.Module) -> list[nn.Module]:
    """Stem (conv1 + bn1), the eight BasicBlocks, head."""
    stem = nn.ModuleList([model.conv1, model.bn1])
    blocks = [
        b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer
    ]
    return [stem, *blocks, model.fc]


TINY = False  # --host-overhead: every tensor shrunk to one value, so only host time remains


def make_model(device: str = "cpu") -> tuple[nn.Module, list[nn.Module]]:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    gen = torch.Generator(device=device).manual_seed(1)
    for p in model.parameters():
        if TINY:
            p.data = p.data.flatten()[:1].clone()
        p.grad = torch.randn(p.shape, generator=gen, device=device) * 0.01
    return model, resnet18_units(model)


def unit_scales(n_units: int, distinct: bool) -> list[float]:
    """ST's lambda_l = clip(1 + l/L - alpha c, 0, 1) after a few triggers: all different."""
    if not distinct:
        return [1.0] * n_units
    return [min(1.0, max(0.0, 1 + (u + 1) / n_units - 1.05)) for u in range(n_units)]


def torch_per_unit(kind: str, scales):
    def build(model, units):
        groups = [{"params": list(u.parameters()), "lr": LR * s} for u, s in zip(units, scales)]
        return torch.optim.SGD(groups, lr=LR, **{kind: True}, **HYPER)

    return build


def fused_sgd(backend: str, scales):
    def build(model, units):
        opt = FusedSGD(model.parameters(), lr=LR, backend=backend, **HYPER)
        opt.set_lr_scale(scales, units=units)
        return opt

    return build


def candidates(device: str) -> dict:
    distinct = unit_scales(10, distinct=True)
    ones = unit_scales(10, distinct=False)
    out = {
        "torch SGD fused, 10 per-unit groups": torch_per_unit("fused", distinct),
        "torch SGD foreach, 10 per-unit groups": torch_per_unit("foreach", distinct),
        "torch SGD fused, 1 group (no per-unit lr)": lambda m, u: torch.optim.SGD(
            m.parameters(), lr=LR, fused=True, **HYPER
        ),
    }
    backends = ["torch_fused", "foreach", "reference"]
    if device == "cuda":
        from st_fast.optim import available_backends

        backends = [b for b in available_backends("cuda") if b != "reference"]
    for backend in backends:
        out[f"FusedSGD {backend}, 10 distinct scales"] = fused_sgd(backend, distinct)
    out["FusedSGD torch_fused, all scales 1"] = fused_sgd("torch_fused", ones)
    if device == "cuda":
        out["FusedSGD triton, all scales 1"] = fused_sgd("triton", ones)
    return out


# ---------------------------------------------------------------------------- pytest-benchmark


@pytest.mark.parametrize("name", list(candidates("cpu")))
def test_step_time_cpu(benchmark, name):
    torch.set_num_threads(2)
    model, units = make_model()
    opt = candidates("cpu")[name](model, units)
    opt.step()  # momentum buffers exist from here on
    benchmark.group = "ResNet-18 optimizer step (CPU)"
    benchmark.extra_info["tensors"] = sum(1 for _ in model.parameters())
    benchmark.pedantic(opt.step, rounds=30, warmup_rounds=3)


# ---------------------------------------------------------------------------- script


def check_same_update(device: str) -> float:
    """Max |difference| after 3 steps between each candidate and torch's single-tensor loop."""
    base, units = make_model(device)
    worst = 0.0
    reference_model = copy.deepcopy(base)
    ref_units = resnet18_units(reference_model)
    scales = unit_scales(10, True)
    groups = [{"params": list(u.parameters()), "lr": LR * s} for u, s in zip(ref_units, scales)]
    ref = torch.optim.SGD(groups, lr=LR, foreach=False, **HYPER)
    for _ in range(3):
        ref.step()
    for name, build in candidates(device).items():
        if "distinct" not in name and "per-unit" not in name:
            continue
        model = copy.deepcopy(base)
        opt = build(model, resnet18_units(model))
        for _ in range(3):
            opt.step()
        diff = max(
            (a - b).abs().max().item()
            for a, b in zip(model.parameters(), reference_model.parameters())
        )
        worst = max(worst, diff)
    return worst


def measure(device: str, rounds: int, steps: int) -> dict:
    """``steps`` optimizer steps per timed call, the candidates interleaved (the warm-up call
    creates the momentum buffers)."""
    def steps_of(opt):
        return lambda: [opt.step() for _ in range(steps)]

    calls = {name: steps_of(build(*make_model(device))) for name, build in candidates(device).items()}
    return interleave(calls, rounds, sync=cuda_sync(device))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed sample")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--append", action="store_true",
                        help="kept for old command lines: recorded rows are always appended to the table")
    parser.add_argument(
        "--host-overhead",
        action="store_true",
        help="shrink every tensor to one value: measures the per-step host (Python) time",
    )
    add_output_flags(parser)
    args = parse_args(parser, argv)
    global TINY
    TINY = args.host_overhead
    torch.set_num_threads(args.threads)
    run = Run("optim", args.device, argv=argv)
    diff = check_same_update(args.device)
    samples = measure(args.device, args.rounds, args.steps)
    per_unit = [n for n in samples if "per-unit groups" in n]
    fastest_torch = min(per_unit, key=lambda n: statistics.median(s.wall for s in samples[n]))
    setting = ("ResNet-18 parameters, every tensor shrunk to 1 value (host overhead)" if TINY
               else "ResNet-18 parameters (62 tensors, 11.18M values, 10 units)")
    run.add_timings(setting, samples, unit="ms/step", scale=1e3 / args.steps, baseline=fastest_torch)
    run.add("same update: max |param difference| vs torch single-tensor SGD with per-unit groups after 3 steps",
            "every candidate", "max |difference|", diff)
    run.save(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
