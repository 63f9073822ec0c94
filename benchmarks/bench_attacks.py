"""Generation time of every attack, and the AR recursion against its per-pixel alternative.

Model-free attacks (SP, OPS, AR) poison the whole Fashion-MNIST training set (60k, 1x28x28).
Surrogate-based attacks run with a fixed small budget on a 500-image subset (their cost is
linear in images x PGD steps x rounds; the table reports seconds per image-step too), on the
device given (CPU here; the GPU when there is one).

    python -m pytest benchmarks/bench_attacks.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_attacks.py [--device cpu] [--write benchmarks/results/attacks_cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import time

import pytest
import torch

from st_fast import attacks
from st_fast.attacks.autoregressive import ar_generate, random_ar_coefficients
from st_fast.data import load_dataset

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

def _time(fn, *a, **kw) -> float:
    t0 = time.perf_counter()
    fn(*a, **kw)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--write", default=None)
    args = ap.parse_args()
    train = load_dataset("fashion-mnist", "train")
    rows = []
    for name in ("sp", "ops", "ar"):
        t = min(_time(attacks.generate, name, train, seed=0) for _ in range(2))
        rows.append((name, f"{len(train)} (all)", "-", t, t / len(train) * 1e6))
        print(rows[-1], flush=True)
    g = torch.Generator().manual_seed(0)
    coef = random_ar_coefficients(10, 1, 3, g)[torch.arange(20000) % 10]
    start = torch.randn(20000, 1, 32, 32, generator=g, dtype=torch.float64)
    t_fast = _time(ar_generate, coef, start)
    t_pix = _time(ar_generate_per_pixel, coef, start)
    sub = train.subset(torch.arange(SURROGATE_SUBSET))
    for name, budget in SURROGATE_BUDGETS.items():
        t = _time(attacks.generate, name, sub, seed=0, device=args.device, **budget)
        rows.append((name, str(SURROGATE_SUBSET), ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                          for k, v in budget.items()), t, t / SURROGATE_SUBSET * 1e6))
        print(rows[-1], flush=True)
    if args.write:
        _write(args.write, rows, t_fast, t_pix, args.device)


def _write(path: str, rows, t_fast: float, t_pix: float, device: str) -> None:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except Exception:  # pragma: no cover
        cpu = platform.processor()
    import triton

    lines = [
        "# Attack generation time (CPU)", "",
        f"Machine: {cpu}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
        f"triton {triton.__version__}; device {device}; date {datetime.date.today()}.",
        "Command: `python benchmarks/bench_attacks.py --write benchmarks/results/attacks_cpu.md`", "",
        "| attack | images | budget | seconds | us / image |", "|---|---|---|---|---|",
        *[f"| {n} | {k} | {b} | {t:.2f} | {u:.1f} |" for n, k, b, t, u in rows], "",
        f"AR recursion, 20000 x 1 x 32 x 32: row-split {t_fast:.2f} s vs per-pixel gather {t_pix:.2f} s "
        f"({t_pix / t_fast:.1f}x).", "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
