"""Shared test helpers: small synthetic data, and the rules for C++ and Triton comparison tests.

A comparison test against a C++ extension or a Triton kernel may skip only when the toolchain
is absent (no compiler / ninja, Triton not importable); when the toolchain is there and the
build or the kernel fails, the test fails (``built_or_fail``, ``run_interpreted``).
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from st_fast.csrc import build
from st_fast.kernels import triton_missing
from st_fast.kernels.color_gray import NOOP

from st_fast.augment.color_gray import CGParams
from st_fast.data import ImageDataset

ROOT = Path(__file__).resolve().parents[1]


def toy_dataset(n=256, classes=4, channels=1, size=16, seed=0, split="train") -> ImageDataset:
    """Class-dependent mean brightness + noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    base = (labels.float() / max(1, classes - 1) * 160 + 40).view(-1, 1, 1, 1)
    noise = torch.randn(n, channels, size, size, generator=g) * 30
    images = (base + noise).clamp(0, 255).to(torch.uint8)
    return ImageDataset(images, labels, [f"c{i}" for i in range(classes)], (0.5,) * channels,
                        (0.25,) * channels, name="toy", split=split)


def write_idx(path, arr) -> None:
    """A gzipped uint8 IDX file (the Fashion-MNIST on-disk format)."""
    header = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def write_tiny_fashion(root, n_train=120, n_test=60):
    """A small, learnable Fashion-MNIST-format dataset under root/FashionMNIST/raw."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        imgs = np.clip(labels[:, None, None] * 20 + rng.normal(0, 20, (n, 28, 28)), 0, 255)
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", imgs)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


# ------------------------------------------------------------------ C++ extensions and Triton


def built_or_fail(extension: build.OnDemandExtension):
    """Build / load a csrc/ extension for a test: skip without a toolchain, fail if the build
    fails with one (a broken source must turn the suite red, not fall back silently)."""
    problem = build.toolchain_problem()
    if problem is not None:
        pytest.skip(f"no toolchain for {extension.label}: {problem}")
    try:
        return extension.load()
    except build.ExtensionUnavailable as exc:
        pytest.fail(f"the toolchain is present but {extension.label} did not build: {exc}")


_RESULT_MARK = "<<interpreted result>>"


def run_interpreted(target: str, timeout: float = 600):
    """Call ``target`` ("tests.module:function") in a fresh Python with TRITON_INTERPRET=1 and
    return what it returns (JSON-serialisable): Triton fixes at decoration time whether a kernel
    is interpreted, and this process imported the kernels without it. Skips only when Triton
    does not import; an error inside fails the caller. Keep the kernels' grids small there
    (about 1 ms per program)."""
    missing = triton_missing()
    if missing is not None:
        pytest.skip(missing)
    module, function = target.split(":")
    code = (
        f"import json, {module} as m\n"
        f"print({_RESULT_MARK!r} + json.dumps(m.{function}()))"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"{target} failed under TRITON_INTERPRET=1:\n{proc.stderr[-4000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith(_RESULT_MARK)][-1]
    return json.loads(line[len(_RESULT_MARK) :])


# ------------------------------------------------------------------ ACM inputs


def blobs(n=200, d=16, k=4, spread=1.0, seed=0):
    """k Gaussian classes; ``spread`` scales the class centres (0 = no structure)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.normal(size=(k, d)) * 3.0
    x = spread * centres[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y


def knn_accuracy(z, y, k=5):
    """Leave-one-out k-NN accuracy in an embedding."""
    z = torch.as_tensor(z, dtype=torch.float64)
    y = torch.as_tensor(y)
    d = torch.cdist(z, z)
    d.fill_diagonal_(float("inf"))
    nn = d.topk(k, largest=False).indices
    votes = torch.nn.functional.one_hot(y[nn], int(y.max()) + 1).sum(1)
    return float((votes.argmax(1) == y).double().mean())


# ------------------------------------------------------------------ CG inputs

CG_TOL = {torch.float32: 1.0 / 255, torch.uint8: 1}  # against torchvision


def cg_images(n, channels, dtype, size=(8, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, *size, generator=g)
    # include saturated, black and exactly-gray pixels: the edge cases of HSV and clamping
    x[:, :, 0, 0] = 1.0
    x[:, :, 0, 1] = 0.0
    x[:, :, 1, 0] = 0.5
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x


def single_op_params(n, op, factor, gray=False):
    """CG parameters applying one op (or none) with one factor to every image."""
    factors = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(n, 1)
    order = torch.full((n, 4), NOOP, dtype=torch.int32)
    if op is not None:
        factors[:, op] = factor
        order[:, 0] = op
    return CGParams(factors, order, torch.full((n,), gray), torch.full((n,), op is not None))


def max_abs_diff(a, b):
    return (a.double() - b.double()).abs().max().item()
