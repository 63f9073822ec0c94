"""Progress of a whole benchmark matrix: cells done / running / failed / left, and an ETA.

The ETA is the mean wall time of the cells finished in this run, times the cells not finished,
divided by how many ran side by side at most (1 for the serial executor): cells skipped because
an earlier run finished them tell nothing about this machine's speed, so they are not counted.
Every change is printed as one line and written atomically to OUT/progress.json.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from ..files import atomic_write_json


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """State of every cell (and poison) of one matrix, kept by the process that schedules them."""

    def __init__(self, out: Path, cells: list[str], executor: str, quiet: bool = False):
        self.out, self.executor, self.quiet = Path(out), executor, quiet
        self.state = dict.fromkeys(cells, "left")
        self.attempts = dict.fromkeys(cells, 0)
        self.errors: dict[str, str] = {}
        self.poisons: dict[str, str] = {}
        self.times: list[float] = []   # wall seconds of the cells finished in this run
        self.widest = 1                # most cells seen running at once
        self.started = time.time()
        self._last = None

    def counts(self) -> dict[str, int]:
        states = list(self.state.values())
        return {k: states.count(k) for k in ("done", "running", "failed", "left")}

    def eta_s(self) -> float | None:
        c = self.counts()
        if not self.times:
            return None
        return statistics.fmean(self.times) * (c["running"] + c["left"]) / self.widest

    # ---------------------------------------------------------------- changes

    def skipped(self, cell: str) -> None:
        self.state[cell] = "done"

    def running(self, cell: str, attempt: int) -> None:
        """``cell`` started its ``attempt``-th try (1 = first)."""
        self.state[cell] = "running"
        self.attempts[cell] = attempt
        self.widest = max(self.widest, self.counts()["running"])
        self._changed()

    def retrying(self, cell: str, error: str) -> None:
        """A failed attempt that will run again: back to 'left' until it is started."""
        self.state[cell] = "left"
        self.errors[cell] = error
        self._changed()

    def finished(self, cell: str, wall_s: float, attempt: int | None = None) -> None:
        self._saw_attempt(cell, attempt)
        self.state[cell] = "done"
        self.errors.pop(cell, None)
        self.times.append(float(wall_s))
        self._changed()

    def failed(self, cell: str, error: str, attempt: int | None = None) -> None:
        self._saw_attempt(cell, attempt)
        self.state[cell] = "failed"
        self.errors[cell] = error
        self._changed()

    def _saw_attempt(self, cell: str, attempt: int | None) -> None:
        """The try that ended, when the caller knows it: a retried attempt can finish before any
        poll saw it start."""
        if attempt is not None:
            self.attempts[cell] = max(self.attempts.get(cell, 0), attempt)

    def poison(self, name: str, state: str) -> None:
        self.poisons[name] = state
        self._changed()

    # ---------------------------------------------------------------- output

    def snapshot(self) -> dict:
        eta = self.eta_s()
        return {"executor": self.executor, "cells": len(self.state), **self.counts(),
                "eta_s": None if eta is None else round(eta, 1), "elapsed_s": round(time.time() - self.started, 1),
                "mean_cell_s": round(statistics.fmean(self.times), 2) if self.times else None,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "running_cells": sorted(c for c, s in self.state.items() if s == "running"),
                "failed_cells": {c: self.errors[c] for c, s in self.state.items() if s == "failed"},
                "retried_cells": {c: n for c, n in self.attempts.items() if n > 1},
                "poisons": dict(self.poisons)}

    def line(self) -> str:
        c = self.counts()
        eta = self.eta_s()
        poisons = list(self.poisons.values())
        made = f"; poisons {poisons.count('done')}/{len(poisons)}" if poisons else ""
        return (f"[bench] {c['done']}/{len(self.state)} done, {c['running']} running, {c['failed']} failed, "
                f"{c['left']} left{made}; ETA {'?' if eta is None else _duration(eta)}")

    def _changed(self) -> None:
        self.write()
        line = self.line()
        if line != self._last and not self.quiet:
            print(line, file=sys.stderr)
        self._last = line

    def write(self) -> None:
        atomic_write_json(self.out / "progress.json", self.snapshot())
