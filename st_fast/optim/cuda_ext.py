"""On-demand build of the csrc/ CUDA extension behind FusedSGD's "cuda" backend.

``load_extension()`` compiles csrc/fused_sgd.cpp + csrc/fused_sgd_kernel.cu with
torch.utils.cpp_extension.load the first time it is called (about a minute; ninja reuses the
build afterwards), caches the module for the process, and raises ``ExtensionUnavailable`` with
the reason when it cannot: no CUDA build of torch, no GPU, no CUDA toolkit, no C++ compiler or
ninja, or a failed compile (remembered, so a broken toolchain costs one attempt per process).
The build-once machinery is st_fast.csrc.build, shared with the other csrc/ extensions.

Build directory: $ST_FAST_EXTENSION_DIR, else torch's default ($TORCH_EXTENSIONS_DIR or
~/.cache/torch_extensions).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from pathlib import Path

import torch

from st_fast.csrc import SOURCE_DIR
from st_fast.csrc.build import ExtensionUnavailable, OnDemandExtension, toolchain_problem

EXTENSION_NAME = "st_fast_fused_sgd"
SOURCES = (SOURCE_DIR / "fused_sgd.cpp", SOURCE_DIR / "fused_sgd_kernel.cu")

# ExtensionUnavailable is re-exported: FusedSGD catches it from here.
__all__ = [
    "ExtensionUnavailable",
    "detect",
    "find_cuda_home",
    "find_nvcc",
    "load_extension",
    "toolchain_missing",
    "unavailable_reason",
]


def _is_cuda_home(path: str | os.PathLike | None) -> bool:
    if not path:
        return False
    root = Path(path)
    return (root / "bin" / "nvcc").exists() and (root / "include" / "cuda_runtime.h").exists()


def find_cuda_home() -> Path | None:
    """The CUDA toolkit root (with bin/nvcc and include/cuda_runtime.h), or None.

    Looks at $CUDA_HOME, $CUDA_PATH, torch's guess, /usr/local/cuda, /usr/local/cuda-*, and the
    directory above ``nvcc`` on PATH. torch's own guess can be wrong when ``nvcc`` on PATH is
    a wrapper script outside the toolkit (as on this project's CI machines).
    """
    from torch.utils import cpp_extension

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    candidates.append(getattr(cpp_extension, "CUDA_HOME", None))
    candidates.append("/usr/local/cuda")
    candidates.extend(sorted(glob.glob("/usr/local/cuda-*"), reverse=True))
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for candidate in candidates:
        if _is_cuda_home(candidate):
            return Path(candidate)
    return None


def find_nvcc() -> Path | None:
    home = find_cuda_home()
    return home / "bin" / "nvcc" if home else None


def toolchain_missing(require_gpu: bool = True) -> str | None:
    """What this machine lacks to build (or, with ``require_gpu``, run) the extension; None if
    nothing: a CUDA build of torch, a GPU, a CUDA toolkit, a C++ compiler and ninja."""
    if torch.version.cuda is None:
        return "this torch build has no CUDA support"
    if require_gpu and not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if find_cuda_home() is None:
        return "no CUDA toolkit found (nvcc and headers); install one or set CUDA_HOME"
    return toolchain_problem()


def unavailable_reason(require_gpu: bool = True) -> str | None:
    """Why the extension cannot be built (or used, with ``require_gpu``) here; None if it can."""
    return _extension.failure or toolchain_missing(require_gpu)


@contextlib.contextmanager
def _torch_pointed_at_cuda_home():
    """During the build only: torch fixed its CUDA_HOME guess at import, and the guess can be
    wrong (see find_cuda_home); point it at the real toolkit, then put the guess back."""
    from torch.utils import cpp_extension

    guess = getattr(cpp_extension, "CUDA_HOME", None)
    if not _is_cuda_home(guess):
        cpp_extension.CUDA_HOME = str(find_cuda_home())
    try:
        yield
    finally:
        cpp_extension.CUDA_HOME = guess


_extension = OnDemandExtension(
    EXTENSION_NAME,
    SOURCES,
    "CUDA extension",
    extra_cflags=["-O3"],
    extra_cuda_cflags=["-O3"],
    build_env=_torch_pointed_at_cuda_home,
)


def load_extension(verbose: bool = False, require_gpu: bool = True):
    """Build (first call) and import the extension; raise ExtensionUnavailable with the reason.

    ``require_gpu=False`` builds without a GPU (set TORCH_CUDA_ARCH_LIST then); the module
    imports, but its kernels need CUDA tensors.
    """
    return _extension.load(
        verbose=verbose, check=lambda: unavailable_reason(require_gpu=require_gpu)
    )


def detect() -> str | None:
    """For the fast-path registry: why the extension cannot run here (builds it the first time)."""
    return _extension.detect(check=unavailable_reason)
