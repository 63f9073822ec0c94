"""Generation time of every attack, and the AR recursion against its per-pixel alternative.

Model-free attacks (SP, OPS, AR) poison the whole Fashion-MNIST training set (60k, 1x28x28).
Surrogate-based attacks run with a fixed small budget on a 500-image subset (their cost is
linear in images x PGD steps x rounds; the table reports seconds per image-step too), on the
device given (CPU here; the GPU when there is one).

    python -m pytest benchmarks/bench_attacks.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_attacks.py [--device cpu] [--write [PAGE]]
"""

from __future__ import annotations

import argparse
import statistics

import pytest
import torch
from harness import Run, add_output_flags, cuda_sync, interleave, parse_args

from st_fast import attacks
from st_fast.attacks.autoregressive import ar_generate, random_ar_coefficients
from st_fast.data import load_dataset
from st_fast.run import make_poison

# CPU budgets for the surrogate-based attacks (the publication defaults are far larger);
# EM's batch size is pinned at 128, the default when the committed table was measured
_EM = dict(arch="small-resnet", steps=5, step_size=1.6 / 255, train_steps=10, max_rounds=1, stop_acc=2.0,
           batch_size=128)
SURROGATE_BUDGETS = {
    "em-sample": _EM,
    "em-class": _EM,
    "rem": dict(arch="small-resnet", steps=2, adv_steps=1, samples=1, train_steps=20, perturb_freq=10),
    "tap": dict(arch="small-resnet", steps=5, epochs=1),
    "hypo": dict(arch="small-resnet", steps=5, epochs=1),
}
SURROGATE_SUBSET = 500


def ar_generate_per_pixel(coef: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The direct vectorisation: one window gather per pixel over all samples (the
    alternative st_fast's row-split recursion replaces)."""
    s = start.clone()
    k = coef.shape[-1]
    _, _, h, w = s.shape
    for i in range(h - k + 1):
        for j in range(w - k + 1):
            s[:, :, i + k - 1, j + k - 1] = (s[:, :, i:i + k, j:j + k] * coef).sum((-1, -2))
    return s


@pytest.fixture(scope="module")
def fmnist():
    return load_dataset("fashion-mnist", "train")


@pytest.mark.parametrize("name", ["sp", "ops", "ar"])
def test_model_free_full_set(benchmark, fmnist, name):
    ps = benchmark.pedantic(attacks.generate, args=(name, fmnist), kwargs={"seed": 0}, rounds=2, iterations=1)
    assert len(ps.indices) == len(fmnist)


@pytest.mark.parametrize("impl", ["row-split", "per-pixel"])
def test_ar_recursion(benchmark, impl):
    g = torch.Generator().manual_seed(0)
    coef = random_ar_coefficients(10, 1, 3, g)[torch.arange(20000) % 10]
    start = torch.randn(20000, 1, 32, 32, generator=g, dtype=torch.float64)
    fn = ar_generate if impl == "row-split" else ar_generate_per_pixel
    out = benchmark.pedantic(fn, args=(coef, start), rounds=2, iterations=1)
    assert torch.allclose(out, ar_generate(coef, start))


@pytest.mark.parametrize("name", list(SURROGATE_BUDGETS))
def test_surrogate_small_budget(benchmark, fmnist, name):
    sub = fmnist.subset(torch.arange(SURROGATE_SUBSET))
    benchmark.pedantic(attacks.generate, args=(name, sub),
                       kwargs={"seed": 0, "device": "auto", **SURROGATE_BUDGETS[name]}, rounds=1, iterations=1)


# ---------------------------------------------------------------- script form

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model-free-rounds", type=int, default=2, help="timed generations of SP, OPS and AR")
    add_output_flags(ap)
    args = parse_args(ap, argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    run = Run("attacks", device, argv=argv)
    sync = cuda_sync(device)
    train = load_dataset("fashion-mnist", "train")
    model_free = {name: (lambda name=name: attacks.generate(name, train, seed=0)) for name in ("sp", "ops", "ar")}
    times = interleave(model_free, args.model_free_rounds, warmup=0, sync=sync)
    sub = train.subset(torch.arange(SURROGATE_SUBSET))
    surrogate = {name: (lambda name=name, b=budget: make_poison(name, sub, seed=0, device=device, **b))
                 for name, budget in SURROGATE_BUDGETS.items()}
    times.update(interleave(surrogate, 1, warmup=0, sync=sync))
    run.add_timings("generation time", times)
    for name, samples in times.items():
        budget = SURROGATE_BUDGETS.get(name)
        images = SURROGATE_SUBSET if budget else len(train)
        run.add("generation time", name, "images", str(images) if budget else f"{images} (all)")
        run.add("generation time", name, "budget", ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in budget.items()) if budget else "-")
        wall = statistics.median(s.wall for s in samples)
        run.add("generation time", name, "wall per image", wall / images * 1e6, "us", better="lower")
    g = torch.Generator().manual_seed(0)
    coef = random_ar_coefficients(10, 1, 3, g)[torch.arange(20000) % 10]
    start = torch.randn(20000, 1, 32, 32, generator=g, dtype=torch.float64)
    recursion = {"row-split": lambda: ar_generate(coef, start), "per-pixel gather": lambda: ar_generate_per_pixel(coef, start)}
    run.add_timings("AR recursion, 20000 x 1 x 32 x 32", interleave(recursion, 1, warmup=0), baseline="per-pixel gather")
    run.save(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
