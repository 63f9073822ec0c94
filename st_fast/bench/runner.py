"""Run a benchmark matrix; resumable. The executor decides where cells run:

* ``serial`` (default, no Ray needed): cells run one after another in this process;
* ``ray``: every cell and every poison is a Ray task on a local instance or a cluster
  (``st_fast.bench.ray_executor``).

    OUT/bench.yaml                 the config that was run
    OUT/poisons/                   each poisoned set, made or imported once (st_fast.bench.poisons)
    OUT/cells/<cell id>/           a full run directory per cell (history, checks, plots)
    OUT/cells/<cell id>/result.json   written last: its presence marks the cell finished
    OUT/results.jsonl, results.csv, results.md, plots/   rebuilt after every cell
    OUT/progress.json              cells done / running / failed / left, ETA (st_fast.bench.progress)

A finished cell is skipped; an interrupted one continues from its checkpoint (st_fast.bench.cell).

Serial workers on one OUT: several copies of the same command may share one OUT (e.g. one per
CPU core with OMP_NUM_THREADS=1): each claims a cell (or a poison it is generating) by creating
``<name>.claim`` exclusively, and the others pass over it. A claim is a lease: its holder
refreshes the file's time every HEARTBEAT_S; a claim of this host whose process has exited is
free at once, and any claim not refreshed for LEASE_S (its host died, or lost the disk) is free,
measured by the shared disk's clock, not the hosts' own. Machines beyond one are Ray's job
(docs/bench.md says why the claim files stay only for this).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write_text
from .cell import CellsFailed, run_cell
from .config import BenchConfig, Cell
from .poisons import check_sources, ensure_poison, poison_path
from .progress import Progress

EXECUTORS = ("serial", "ray")
LEASE_S = 300.0       # a claim not refreshed for this long is stale, on any host
POISONS_ONLY_SERIAL = ("--poisons-only makes the poisons in this process; drop --executor ray "
                       "(the Ray executor makes each poison as a task when its cells run)")
HEARTBEAT_S = 30.0    # how often its holder refreshes it (well inside the lease: NFS caches times)


class Claim:
    """An exclusive marker ``<path>.claim`` holding "host pid", refreshed while held (a lease)."""

    def __init__(self, target: Path, lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S):
        self.path = target.with_name(target.name + ".claim")
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _disk_now(self) -> float:
        """The time on the disk that holds the claim (hosts' clocks may disagree with it)."""
        probe = self.path.with_name(f".clock-{socket.gethostname()}-{os.getpid()}")
        probe.touch()
        try:
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)

    def owner_alive(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
            age = self._disk_now() - self.path.stat().st_mtime
        except (OSError, ValueError):
            return False  # vanished or half-written: treat as free
        if age > self.lease_s:
            return False  # not refreshed within the lease: its holder is gone, wherever it ran
        if host != socket.gethostname():
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # umask applies; no x bits
            except FileExistsError:
                if self.owner_alive():
                    return False
                self.path.unlink(missing_ok=True)  # stale: its worker died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, daemon=True, name=f"claim {self.path.name}")
            self._beat.start()
            return True
        return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return  # taken over or the disk is gone: nothing left to refresh

    def release(self) -> None:
        if self.held:
            self._stop.set()
            if self._beat is not None:
                self._beat.join()
            self.path.unlink(missing_ok=True)
            self.held = False


class Busy(Exception):
    """Another worker holds what this cell needs (its poison); try the cell later."""


def claimed_poison(out: Path, cfg: BenchConfig, cell: Cell, device: str) -> Path | None:
    """``ensure_poison`` under a claim, so that serial workers sharing OUT make each poison once."""
    path = poison_path(out, cfg, cell)
    if path is None or path.exists():
        return path
    claim = Claim(path)
    if not claim.acquire():
        raise Busy(f"{path.name} is being made by another worker")
    try:
        return ensure_poison(out, cfg, cell, device)  # made by another worker meanwhile: kept
    finally:
        claim.release()


def matches(cell_id: str, only: str | list[str] | None) -> bool:
    """``only``: None (all), a substring, or a list / comma-separated list of them (any matches)."""
    if only is None:
        return True
    patterns = [p for p in (only.split(",") if isinstance(only, str) else only) if p]
    return any(p in cell_id for p in patterns)


def finished(out: Path, cell: Cell) -> bool:
    return (out / "cells" / cell.id / "result.json").exists()


def run_bench(cfg: BenchConfig, out: str | Path, device: str = "auto", progress: bool = False,
              only: str | list[str] | None = None, poll_s: float = 5.0, executor: str = "serial",
              ray_options=None, quiet: bool = False, before_cell: Callable[[], object] | None = None,
              poisons_only: bool = False) -> list[dict]:
    """Run every unfinished cell (or those matching ``only``) with ``executor``, then write the
    reports. ``poisons_only``: make (or import) the poisoned sets those cells need, in this
    process, and stop there (returns []): long crafting done ahead, e.g. on a quiet machine.
    ``ray_options``: a ``ray_executor.RayOptions`` (executor "ray"). ``before_cell``
    (serial only): called before each cell is claimed, e.g. to share cells that became
    shareable meanwhile (bench.share); a cell it finished is skipped. Cells that fail (after
    their retries, under Ray) raise :class:`CellsFailed` once the others are done."""
    import yaml

    from .report import collect_results, write_reports

    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if poisons_only and executor != "serial":
        raise UserError(POISONS_ONLY_SERIAL)
    out = Path(out).resolve()   # absolute: workers elsewhere (Ray) see the same path
    cells = [c for c in cfg.cells() if matches(c.id, only)]
    files = sorted({c.attack for c in cells if c.attack in cfg.poison_files and not finished(out, c)})
    check_sources(out, cfg, files)   # a changed poison file is refused before any work
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if poisons_only:
        make_poisons(cfg, out, cells, device, poll_s)
        return []
    tracker = Progress(out, [c.id for c in cells], executor, quiet=quiet)
    for c in cells:
        if finished(out, c):
            tracker.skipped(c.id)
    tracker.write()

    def report() -> None:
        write_reports(collect_results([out]), out)

    if executor == "ray":
        from .ray_executor import RayOptions, run_ray

        run_ray(cfg, out, cells, device, ray_options or RayOptions(), tracker, report)
    else:
        run_serial(cfg, out, cells, device, progress, poll_s, tracker, report, before_cell)
    results = collect_results([out])
    write_reports(results, out)
    failures = {c: e for c, e in tracker.errors.items() if tracker.state.get(c) == "failed"}
    if failures:
        raise CellsFailed(failures)
    return results


def make_poisons(cfg: BenchConfig, out: Path, cells: list[Cell], device: str, poll_s: float = 5.0) -> list[Path]:
    """Each poisoned set the unfinished ``cells`` need, made once (under a claim: a poison that
    another worker is making is waited for, not made twice); their paths."""
    needed = {}
    for c in cells:
        path = poison_path(out, cfg, c)
        if path is not None and not finished(out, c):
            needed.setdefault(path, c)
    for path, cell in needed.items():
        existed = path.exists()
        while True:
            try:
                claimed_poison(out, cfg, cell, device)
                break
            except Busy:   # another worker is making it: wait, then take it (or make it, if it gave up)
                time.sleep(poll_s)
        print(f"[bench] poison {path.name}: {'already there' if existed else 'ready'}", file=sys.stderr)
    if not needed:
        print("[bench] the selected cells need no poison (clean, or finished)", file=sys.stderr)
    return list(needed)


def sync_others(out: Path, cells: list[Cell], tracker: Progress) -> None:
    """Between this worker's cells, every cell marked running is another worker's: done once its
    result exists, left again once its claim is gone, so the counts and the ETA (which divides by
    the most cells seen running at once) describe the matrix, not a stale view of it."""
    for c in cells:
        if tracker.state.get(c.id) != "running":
            continue
        if finished(out, c):
            tracker.skipped(c.id)
        elif not Claim(out / "cells" / c.id).path.exists():
            tracker.state[c.id] = "left"


def run_serial(cfg: BenchConfig, out: Path, cells: list[Cell], device: str, progress: bool,
               poll_s: float, tracker: Progress, report, before_cell=None) -> None:
    """Cells one by one in this process (poison files imported first, so a bad one stops the
    bench before anything trains); cells claimed by other workers are left to them."""
    files = {c.attack: c for c in cells if c.attack in cfg.poison_files and not finished(out, c)}
    for cell in files.values():
        tracker.poison(cell.attack, "running")
        try:
            claimed_poison(out, cfg, cell, device)
            tracker.poison(cell.attack, "done")
        except Busy:  # another worker is importing it: its cells wait below
            pass
    pending = [c for c in cells if not finished(out, c)]
    while pending:
        waiting_for_poison = []
        for cell in pending:
            sync_others(out, cells, tracker)
            if before_cell is not None:
                before_cell()
            claim = Claim(out / "cells" / cell.id)
            if not claim.acquire():
                print(f"[bench] {cell.id}: claimed by another worker, skipped", file=sys.stderr)
                tracker.state[cell.id] = "running"   # elsewhere
                continue
            try:
                if finished(out, cell):  # finished by another worker just before our claim
                    tracker.skipped(cell.id)
                    continue
                poison = claimed_poison(out, cfg, cell, device)
                print(f"[bench] {cell.id}: running", file=sys.stderr)
                tracker.running(cell.id, attempt=1)
                r = run_cell(cfg, cell, out, device, progress, poison)
            except Busy as err:
                print(f"[bench] {cell.id}: {err}; later", file=sys.stderr)
                waiting_for_poison.append(cell)
                continue
            finally:
                claim.release()
            print(f"[bench] {cell.id}: final {r['final_test_acc']:.4f} peak {r['peak_test_acc_oracle']:.4f} "
                  f"({r['wall_s']:.0f} s)", file=sys.stderr)
            tracker.finished(cell.id, r["wall_s"])
            report()
        pending = waiting_for_poison
        if pending:
            time.sleep(poll_s)
