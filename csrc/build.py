"""Build csrc/ extensions on demand with torch.utils.cpp_extension, once per process.

``OnDemandExtension(...).load()`` compiles the sources the first time it is called in a
process, caches the module, and raises ``ExtensionUnavailable`` with the reason when it cannot:
no C++ compiler or ninja, a failed check of the caller's (e.g. no CUDA toolkit), or a failed
compile (remembered, so a broken toolchain costs one attempt per process). ninja keeps the
build in the build directory, so later processes only check it (about a second) and import it.
``detect()`` is the same as a reason (None when it loads): what the fast-path registry
(st_fast.backends) calls, once per process.

Build directory: $ST_FAST_EXTENSION_DIR, else torch's default ($TORCH_EXTENSIONS_DIR or
~/.cache/torch_extensions/<python>_<cuda>/<name>).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path


class ExtensionUnavailable(RuntimeError):
    """An extension cannot be built or loaded here; the message says why."""


def _quiet_cuda_home_warning() -> None:
    """Importing cpp_extension on a CPU-only machine with a CUDA toolkit installed logs "No CUDA
    runtime is found, using CUDA_HOME=..." to every command's stderr; the CPU builds need no
    CUDA, so that line is noise here. GPU problems still surface as build failures."""
    import torch

    if not torch.cuda.is_available():
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def toolchain_problem() -> str | None:
    """Why torch cannot build a C++ extension here (compiler, ninja); None if it can."""
    if not (shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")):
        return "no C++ compiler found (c++ / g++); install one or set CXX"
    _quiet_cuda_home_warning()
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja), torch needs it to build extensions"
    return None


def _summary(exc: Exception) -> str:
    """The last line of a build error, and the compiler's first "error:" line above it."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first_error = next((line for line in lines[:-1] if "error:" in line), None)
    return lines[-1] + (f" ({first_error})" if first_error else "")


class OnDemandExtension:
    """One csrc/ extension: built and loaded on the first ``load()``, then cached."""

    def __init__(
        self,
        name: str,
        sources: Sequence[Path],
        label: str,
        extra_cflags: Sequence[str] = ("-O3",),
        extra_cuda_cflags: Sequence[str] = (),
        extra_ldflags: Sequence[str] = (),
        is_python_module: bool = True,
        build_env: Callable[[], AbstractContextManager] | None = None,
    ):
        self.name = name
        self.sources = tuple(sources)
        self.label = label  # the start of every ExtensionUnavailable message
        self.extra_cflags = list(extra_cflags)
        self.extra_cuda_cflags = list(extra_cuda_cflags)
        self.extra_ldflags = list(extra_ldflags)
        self.is_python_module = is_python_module
        # entered around the compile only (e.g. to point torch at a CUDA toolkit), then undone
        self.build_env = build_env or contextlib.nullcontext
        self.module = None  # the module (or, without a Python module, the library's path)
        self.failure: str | None = None  # why the last build failed, remembered
        self.load_seconds: float | None = None  # how long the build / check + import took
        self._lock = threading.Lock()

    def load(self, verbose: bool = False, check: Callable[[], str | None] | None = None):
        """Build (first call) and import; raise ExtensionUnavailable with the reason.

        ``check`` returns why the build cannot happen here (None: it can); it runs after the
        remembered failure and before the toolchain checks.
        """
        with self._lock:
            if self.module is not None:
                return self.module
            reason = self.failure or (check() if check else None) or toolchain_problem()
            if reason is not None:
                raise ExtensionUnavailable(f"{self.label} unavailable: {reason}")
            from torch.utils import cpp_extension

            build_dir = os.environ.get("ST_FAST_EXTENSION_DIR")
            if build_dir:
                Path(build_dir).mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            try:
                with self.build_env():
                    self.module = cpp_extension.load(
                        name=self.name,
                        sources=[str(s) for s in self.sources],
                        build_directory=build_dir,
                        extra_cflags=self.extra_cflags,
                        extra_cuda_cflags=self.extra_cuda_cflags or None,
                        extra_ldflags=self.extra_ldflags or None,
                        is_python_module=self.is_python_module,
                        verbose=verbose,
                    )
            except Exception as exc:  # compiler errors arrive as RuntimeError / CalledProcessError
                self.failure = "building csrc/ failed: " + _summary(exc)
                raise ExtensionUnavailable(f"{self.label} unavailable: {self.failure}") from exc
            self.load_seconds = time.perf_counter() - start
            return self.module

    def detect(self, check: Callable[[], str | None] | None = None) -> str | None:
        """Why the extension cannot run here, None if it loads (builds it on the first call)."""
        try:
            self.load(check=check)
        except ExtensionUnavailable as exc:
            return str(exc)
        return None
