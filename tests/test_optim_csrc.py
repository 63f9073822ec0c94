"""The csrc/ CUDA extension: compiles wherever nvcc exists (no GPU needed); runs on a GPU.

Compile checks, quickest first:
  - the kernel file with plain nvcc (includes no torch header; a few seconds);
  - the torch binding with the host compiler, syntax only (torch headers; ~20 s, marked slow);
  - the full build + import through torch.utils.cpp_extension (~50 s the first time on a machine,
    for sm_80 where there is no GPU; torch's extension directory keeps it for later runs).
Each skips only where its toolchain is absent; with the toolchain, a failed compile fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import pytest
import torch
from st_fast.csrc import SOURCE_DIR

from st_fast.optim import cuda_ext

KERNEL = SOURCE_DIR / "fused_sgd_kernel.cu"
BINDING = SOURCE_DIR / "fused_sgd.cpp"


def _nvcc_or_skip():
    nvcc = cuda_ext.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit at $CUDA_HOME, /usr/local/cuda*, or on PATH)")
    return nvcc


def _run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"


def test_kernel_compiles_with_nvcc(tmp_path):
    nvcc = _nvcc_or_skip()
    _run(
        [
            nvcc,
            "-c",
            KERNEL,
            "-o",
            tmp_path / "fused_sgd_kernel.o",
            "-O3",
            "-gencode=arch=compute_80,code=sm_80",
            "--Werror=all-warnings",
            # the flags torch's extension builder adds: the kernel must not rely on implicit
            # half / bfloat16 conversions
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        ]
    )


@pytest.mark.slow
def test_binding_compiles(tmp_path):
    from torch.utils import cpp_extension

    cuda_home = cuda_ext.find_cuda_home()
    if cuda_home is None:
        pytest.skip("no CUDA toolkit headers found")
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler found")
    includes = [*cpp_extension.include_paths(), str(cuda_home / "include")]
    includes.append(sysconfig.get_paths()["include"])
    _run(
        [
            compiler,
            "-std=c++20",
            "-fsyntax-only",
            "-Wall",
            "-Werror",
            "-DTORCH_EXTENSION_NAME=st_fast_fused_sgd",
            "-DTORCH_API_INCLUDE_EXTENSION_H",
            *(f"-isystem{path}" for path in includes),
            BINDING,
        ]
    )


def test_cuda_home_is_found_where_nvcc_is():
    if shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda"):
        pytest.skip("no nvcc on PATH")
    home = cuda_ext.find_cuda_home()
    assert home is not None and (home / "include" / "cuda_runtime.h").exists()


def test_extension_builds_and_imports(monkeypatch):
    missing = cuda_ext.toolchain_missing(require_gpu=False)
    if missing is not None:
        pytest.skip(missing)
    if not torch.cuda.is_available():
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    try:
        module = cuda_ext.load_extension(require_gpu=False)
    except cuda_ext.ExtensionUnavailable as exc:
        pytest.fail(f"the CUDA toolchain is present but the extension did not build: {exc}")
    assert callable(module.fused_sgd_step)
