"""Shared test setup: GPU tests are marked ``gpu`` and skipped where CUDA is absent."""

from __future__ import annotations

import os

import pytest
import torch

# Keep CPU tests quick and deterministic on small machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def tiny_fashion(tmp_path):
    """Root of a 120/60-image Fashion-MNIST-format dataset (cells train in a second)."""
    from .helpers import write_tiny_fashion

    return write_tiny_fashion(tmp_path / "data")


@pytest.fixture
def one_thread():
    """One intra-op thread (restored afterwards): for tiny models, two spinning OpenMP threads
    on a loaded 2-core machine made each step ~100x slower (measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread_all():
    """One thread for torch and for the BLAS / OpenMP pools under numpy and scikit-learn:
    small problems run as fast, and immune to OpenMP stalls on a busy machine."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)
