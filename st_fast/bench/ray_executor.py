"""The matrix on Ray: every poison and every cell a Ray task with declared resources.

The driver (the ``st-fast bench --executor ray`` process) is the only scheduler and the only
writer of the reports. It submits

1. the imports of poison files, and waits for them: a bad file or option stops the bench with
   its one-line error before anything trains;
2. each generated poison the unfinished cells need, once (cells of every seed and defence
   share it), and the cells whose poison is already there;
3. each cell whose poison has just been made (a cell waits for its poison's task).

Retries belong to the driver, not to Ray (tasks have ``max_retries=0``), so that an exception
in a task and a worker or node that died count alike: up to ``max_retries`` further attempts,
then the cell is reported as failed (progress.json, the CellsFailed error), never skipped. A
``UserError`` (a bad config, a refused checkpoint) is not retried: it would fail the same way.
A retried cell continues from its last checkpoint, as an interrupted serial run does.

Tasks read and write OUT directly, so OUT must be on a disk every node shares (each task checks
that it sees the driver's token file there and says so if not).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write_json, atomic_write_text
from .cell import run_cell
from .config import BenchConfig, Cell
from .poisons import ensure_poison, poison_path
from .progress import Progress

INSTALL = "--executor ray needs Ray, which is not installed: pip install 'st_fast[ray]' (or pip install 'ray>=2.9')"
TOKEN = ".bench-token"
POLL_S = 2.0   # how often the driver looks for cells that have started (their worker.json)


@dataclass
class RayOptions:
    """address: None (start a local instance on this machine), "auto" or HOST:PORT (join a
    cluster). gpus_per_cell: None = 1 when the cluster has GPUs, else 0; fractions share a GPU.
    max_retries: attempts after the first. init: extra ``ray.init`` arguments (a local instance)."""

    address: str | None = None
    gpus_per_cell: float | None = None
    cpus_per_cell: float = 1.0
    max_retries: int = 2
    init: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.gpus_per_cell is not None and not 0 <= self.gpus_per_cell:
            raise UserError(f"--gpus-per-cell must be >= 0, got {self.gpus_per_cell}")
        if not self.cpus_per_cell > 0:
            raise UserError(f"--cpus-per-cell must be > 0, got {self.cpus_per_cell}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise UserError(f"--max-retries must be an integer >= 0, got {self.max_retries!r}")


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL) from None
    return ray


# ---------------------------------------------------------------- the tasks (run on workers)

def _on_worker(out: str, token: str, threads: int) -> Path:
    """Worker set-up: the torch threads the task declared, and the shared OUT."""
    import torch

    torch.set_num_threads(threads)
    out = Path(out)
    try:
        seen = (out / TOKEN).read_text()
    except OSError:
        seen = None
    if seen != token:
        raise UserError(f"{out} is not visible as the driver wrote it from {socket.gethostname()}: "
                        "the bench's --out must be on a disk every Ray node shares")
    return out


def poison_task(cfg: BenchConfig, cell: Cell, out: str, device: str, threads: int, token: str) -> str:
    """Make (or import) the poisoned set ``cell`` needs; returns its path."""
    return str(ensure_poison(_on_worker(out, token, threads), cfg, cell, device))


def cell_task(cfg: BenchConfig, cell: Cell, out: str, device: str, threads: int, token: str,
              attempt: int) -> dict:
    """Train one cell (its poison is made); returns its result."""
    out = _on_worker(out, token, threads)
    run_dir = out / "cells" / cell.id
    done = run_dir / "result.json"
    if done.exists():  # an earlier attempt finished, and its reply was lost with its worker
        return json.loads(done.read_text())
    # who runs the cell, for the driver's progress and for a person chasing a stuck cell
    atomic_write_json(run_dir / "worker.json", {"host": socket.gethostname(), "pid": os.getpid(),
                                                "attempt": attempt, "started": time.time()})
    return run_cell(cfg, cell, out, device, False, poison_path(out, cfg, cell))


# ---------------------------------------------------------------- the driver

def _error_text(err: BaseException) -> str:
    """One line: the task's own exception (Ray wraps it), else what Ray says happened."""
    cause = getattr(err, "cause", None)
    err = cause if isinstance(cause, BaseException) else err
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}"[:300]


def _final(err: BaseException) -> bool:
    """Errors that a retry would repeat."""
    return isinstance(err, UserError) or isinstance(getattr(err, "cause", None), UserError)


class _Driver:
    def __init__(self, ray, cfg: BenchConfig, out: Path, device: str, opts: RayOptions,
                 tracker: Progress, report):
        self.ray, self.cfg, self.out, self.device, self.opts = ray, cfg, out, device, opts
        self.tracker, self.report = tracker, report
        self.token = uuid.uuid4().hex
        atomic_write_text(out / TOKEN, self.token)
        gpus = opts.gpus_per_cell
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
        self.threads = max(1, int(opts.cpus_per_cell))
        common = {"num_cpus": opts.cpus_per_cell, "max_retries": 0}
        self.cell_fn = ray.remote(cell_task).options(num_gpus=gpus, **common)
        self.model_poison_fn = ray.remote(poison_task).options(num_gpus=gpus, **common)
        self.poison_fn = ray.remote(poison_task).options(num_gpus=0, **common)
        self.tasks: dict = {}          # ref -> ("poison", key, cell, attempt) | ("cell", id, cell, attempt)
        self.attempts: dict[str, int] = {}
        self.waiting: dict[Path, list[Cell]] = {}   # poison being made -> cells that need it

    # submission
    def submit_poison(self, key: Path, cell: Cell) -> None:
        from .. import attacks

        attempt = self.attempts[str(key)] = self.attempts.get(str(key), 0) + 1
        fn = self.poison_fn
        if cell.attack not in self.cfg.poison_files and attacks.resolve(cell.attack).uses_model:
            fn = self.model_poison_fn   # crafted against a model: give it the cell's GPU
        ref = fn.remote(self.cfg, cell, str(self.out), self.device, self.threads, self.token)
        self.tasks[ref] = ("poison", key, cell, attempt)
        self.tracker.poison(key.stem, "running")

    def submit_cell(self, cell: Cell) -> None:
        attempt = self.attempts[cell.id] = self.attempts.get(cell.id, 0) + 1
        ref = self.cell_fn.remote(self.cfg, cell, str(self.out), self.device, self.threads, self.token, attempt)
        self.tasks[ref] = ("cell", cell.id, cell, attempt)

    # completion
    def wait(self) -> None:
        ready, _ = self.ray.wait(list(self.tasks), num_returns=1, timeout=POLL_S)
        for ref in ready:
            kind, key, cell, attempt = self.tasks.pop(ref)
            try:
                value = self.ray.get(ref)
            except Exception as err:  # noqa: BLE001 - every failure is counted and reported
                self.failed(kind, key, cell, attempt, err)
                continue
            if kind == "poison":
                self.tracker.poison(key.stem, "done")
                for c in self.waiting.pop(key, []):
                    self.submit_cell(c)
            else:
                self.tracker.finished(cell.id, value["wall_s"], attempt)
                self.report()
        self.look_for_started()

    def failed(self, kind: str, key, cell: Cell, attempt: int, err: BaseException) -> None:
        text = _error_text(err)
        if not _final(err) and attempt <= self.opts.max_retries:
            print(f"[bench] {kind} {getattr(key, 'stem', key)}: attempt {attempt} failed ({text}); retrying",
                  file=sys.stderr)
            if kind == "poison":
                self.submit_poison(key, cell)
            else:
                self.tracker.retrying(cell.id, text)
                self.submit_cell(cell)
            return
        if kind == "cell":
            self.tracker.failed(cell.id, f"after {attempt} attempt(s): {text}", attempt)
            return
        self.tracker.poison(key.stem, "failed")
        if key.stem in self.cfg.poison_files:   # a bad import stops the bench before training
            raise UserError(text.partition(": ")[2] if _final(err) else f"poison_files.{key.stem}: {text}")
        for c in self.waiting.pop(key, []):
            self.tracker.failed(c.id, f"its poison {key.name} failed after {attempt} attempt(s): {text}")

    def look_for_started(self) -> None:
        """Cells whose worker has written worker.json for the current attempt are running."""
        for kind, _key, cell, attempt in self.tasks.values():
            if kind != "cell" or self.tracker.state[cell.id] == "running":
                continue
            try:
                seen = json.loads((self.out / "cells" / cell.id / "worker.json").read_text())
            except (OSError, ValueError):
                continue
            if seen.get("attempt") == attempt:
                self.tracker.running(cell.id, attempt)

    def run(self, cells: list[Cell]) -> None:
        todo = [c for c in cells if self.tracker.state[c.id] != "done"]
        files = {poison_path(self.out, self.cfg, c): c for c in todo if c.attack in self.cfg.poison_files}
        for key, cell in files.items():
            if not key.exists():
                self.submit_poison(key, cell)
        while self.tasks:   # imports first: nothing trains before every file is known good
            self.wait()
        for cell in todo:
            key = poison_path(self.out, self.cfg, cell)
            if key is None or key.exists():
                self.submit_cell(cell)
                continue
            if key not in self.waiting:
                self.waiting[key] = []
                self.submit_poison(key, cell)
            self.waiting[key].append(cell)
        while self.tasks:
            self.wait()


def run_ray(cfg: BenchConfig, out: Path, cells: list[Cell], device: str, opts: RayOptions,
            tracker: Progress, report) -> None:
    """Run ``cells`` as Ray tasks (joining ``opts.address``, or on a local instance started here
    and shut down after); results land in OUT as the cells finish."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"include_dashboard": False, **opts.init}
        ray.init(address=opts.address, **kwargs)
    try:
        _Driver(ray, cfg, out, device, opts, tracker, report).run(cells)
    finally:
        if started_here:
            ray.shutdown()
