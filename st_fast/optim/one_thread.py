"""Run small CPU updates on a worker thread whose OpenMP team is one thread.

torch's fused SGD kernel hands every tensor to the intra-op pool however small; on a busy
machine each hand-off can stall for a scheduler time slice (a 29-tensor model went from 0.2 ms
to 320 ms a step). OpenMP's thread count is a per-thread setting (the nthreads ICV), so one
worker thread set once to a one-thread team runs those updates inline, while the rest of the
process keeps its own count: ``torch.set_num_threads`` would change it for everyone.
The update is elementwise, so the thread count does not change its result.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_lock = threading.Lock()
_worker: tuple[int, ThreadPoolExecutor | None] | None = None  # (pid, worker or None)


def _torch_libgomp():
    """torch's own libgomp (the instance whose settings its kernels read), or None."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    lib_dir = Path(torch.__file__).parent / "lib"
    bundled = [
        p
        for pattern in ("libgomp*.so*", "libiomp*.so*", "libomp*")
        for p in sorted(lib_dir.glob(pattern))
    ]
    name = str(bundled[0]) if bundled else ctypes.util.find_library("gomp")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _one_thread_team(libgomp) -> None:
    torch.get_num_threads()  # torch's per-thread lazy init runs first and would reset the ICV
    libgomp.omp_set_num_threads(1)


def _start() -> ThreadPoolExecutor | None:
    libgomp = _torch_libgomp()
    if libgomp is None:
        return None
    worker = ThreadPoolExecutor(
        1,
        thread_name_prefix="st_fast_one_thread",
        initializer=_one_thread_team,
        initargs=(libgomp,),
    )
    if worker.submit(torch.get_num_threads).result() != 1:  # not the library torch reads
        worker.shutdown()
        return None
    return worker


def single_thread_worker() -> ThreadPoolExecutor | None:
    """The worker (started on first use, again after a fork), or None where torch does not
    use OpenMP or its library cannot be reached; callers then run inline."""
    global _worker
    with _lock:
        if _worker is None or _worker[0] != os.getpid():
            _worker = (os.getpid(), _start())
        return _worker[1]


def _no_grad_call(fn, args, kwargs):
    with torch.no_grad():  # grad mode is per thread; the caller's step runs under no_grad
        return fn(*args, **kwargs)


def run_on_one_thread(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with a one-thread intra-op team, without touching this thread's."""
    worker = single_thread_worker()
    if worker is None:
        return fn(*args, **kwargs)
    return worker.submit(_no_grad_call, fn, args, kwargs).result()
