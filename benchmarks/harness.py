"""The one harness every benchmarks/bench_*.py script measures and records with.

A script builds a ``Run`` (machine, versions, load average, date and command are taken once),
times its candidates with ``interleave`` (warm-up first, then rounds in which the candidates take
turns, so load from other processes hits them alike), adds figures (``Run.add_timings`` /
``add_rates``: median and spread over the rounds; ``Run.add``: anything else) and calls
``Run.save``. Each figure is one row of the results table, benchmarks/results/results.jsonl
(results.csv is the same table for spreadsheets), with the columns in ``COLUMNS``; a row that
names a ``baseline`` gets its ratio to that candidate's figure measured in the same run.

The pages benchmarks/results/<benchmark>_<cpu|gpu>.md are generated from the rows, each under
its hand-written notes (benchmarks/results/notes/<page>: title and reading; the measurements go
where the notes say ``<!-- measurements -->``, else after them):

    python benchmarks/harness.py render            # every page and results.csv from the table
    python benchmarks/harness.py merge ROWS.jsonl  # add rows measured elsewhere (the GPU check)
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
NOTES = RESULTS / "notes"
MARKER = "<!-- measurements -->"
COLUMNS = ["benchmark", "setting", "candidate", "figure", "value", "unit", "spread", "rounds", "better",
           "baseline", "ratio_to_baseline", "device", "machine", "versions", "load", "date", "command", "run",
           "note"]
# What the columns mean, printed above the measurements of every page
LEGEND = ("value: median over the rounds, [spread: max - min]; x baseline: how many times better than "
          "the baseline candidate measured in the same run (baseline / value for times, value / "
          "baseline for rates). Rows: `benchmarks/results/results.jsonl`.")


def default_table() -> Path:
    """$ST_FAST_BENCH_TABLE (the GPU check points it at its own file) or results/results.jsonl."""
    return Path(os.environ.get("ST_FAST_BENCH_TABLE") or RESULTS / "results.jsonl")


# ---------------------------------------------------------------------------- the machine


def machine(device: str = "cpu") -> str:
    """CPU model and ISA, cores, threads (and the GPU): CPU results are only comparable on one
    machine type, and the thread settings change them on a shared machine."""
    import torch

    from st_fast.utils import machine_info

    info = machine_info(torch.device(device))
    isa = f" ({', '.join(info['cpu_isa'])})" if info["cpu_isa"] else ""
    text = (f"{info['cpu']}{isa}, {info['cores']} cores; torch threads {info['threads']}, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    return text + (f"; GPU {info['gpu']}" if "gpu" in info else "")


def versions(*dists: str) -> str:
    """python, torch, triton and the given distributions that are installed."""
    import platform

    import torch

    found = [f"python {platform.python_version()}", f"torch {torch.__version__}"]  # with its +cuXXX tag
    for dist in ("triton", *dists):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def compiler_version() -> str:
    """The C++ compiler that builds the csrc/ kernels on first use (their speed depends on it)."""
    import subprocess

    try:
        out = subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True, text=True)
        return out.stdout.splitlines()[0]
    except (OSError, IndexError):
        return "no C++ compiler"


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    wall: float  # seconds
    cpu: float  # process CPU seconds, all threads: what the candidate burnt, however long it waited
    returned: Any  # what the candidate returned (e.g. images processed)


def interleave(candidates: dict[str, Callable[[], Any]], rounds: int, *, warmup: int = 1,
               sync: Callable[[], None] | None = None) -> dict[str, list[Sample]]:
    """``warmup`` untimed calls of each candidate (allocations, builds, compilation are not what
    is measured), then ``rounds`` rounds in which every candidate runs once, in turn."""
    sync = sync or (lambda: None)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            returned = fn()
            sync()
            samples[name].append(Sample(time.perf_counter() - t0, time.process_time() - c0, returned))
    return samples


def cuda_sync(device: str) -> Callable[[], None]:
    """What ``interleave`` calls around each timed call: wait for the GPU's queued work."""
    import torch

    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def _spread(xs: list[float]) -> float | None:
    return max(xs) - min(xs) if len(xs) > 1 else None


def _significant(value, digits: int):
    """Measurements keep 4 significant digits (ratios 3): more is noise, and the pages stay short."""
    return float(f"{value:.{digits}g}") if isinstance(value, float) else value


class Run:
    """One invocation of a benchmark script: where and how it ran, and the rows it measured."""

    def __init__(self, benchmark: str, device: str = "cpu", dists: tuple[str, ...] = (),
                 argv: list[str] | None = None):
        self.benchmark, self.device = benchmark, str(device)
        script = f"benchmarks/{Path(sys.argv[0]).name}" if sys.argv[0].endswith(".py") else sys.argv[0]
        self.command = shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])
        self.machine, self.versions = machine(self.device), versions(*dists)
        now = datetime.datetime.now()
        self.date = now.isoformat(timespec="minutes")
        self.id = f"{benchmark}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"  # merge skips known ids
        self.load_before = load_average()
        self.rows: list[dict] = []

    def add(self, setting: str, candidate: str, figure: str, value, unit: str = "", *, spread=None,
            rounds: int | None = None, better: str | None = None, baseline: str | None = None) -> None:
        """One figure. ``better``: "lower" or "higher" (needed with ``baseline``)."""
        self.rows.append({"benchmark": self.benchmark, "setting": setting, "candidate": candidate,
                          "figure": figure, "value": value, "unit": unit, "spread": spread, "rounds": rounds,
                          "better": better, "baseline": baseline})

    def add_table(self, setting: str, table: dict[str, dict[str, Any]], unit: str = "") -> None:
        """Figures without rounds or baseline: {candidate: {figure: value}}."""
        for candidate, figures in table.items():
            for figure, value in figures.items():
                self.add(setting, candidate, figure, value, unit)

    def add_timings(self, setting: str, samples: dict[str, list[Sample]], *, unit: str = "s",
                    scale: float = 1.0, baseline: str | None = None) -> None:
        """Median wall and process-CPU time of each candidate (times ``scale``, e.g. 1e3 / steps
        for ms per step), with their spread over the rounds."""
        for name, ss in samples.items():
            for figure, xs in (("wall", [s.wall for s in ss]), ("CPU", [s.cpu for s in ss])):
                xs = [x * scale for x in xs]
                self.add(setting, name, figure, statistics.median(xs), unit, spread=_spread(xs),
                         rounds=len(xs), better="lower", baseline=baseline)

    def add_rates(self, setting: str, samples: dict[str, list[Sample]], *, unit: str = "images/s",
                  baseline: str | None = None) -> None:
        """Median of (what the candidate returned) / wall seconds, e.g. images per second."""
        for name, ss in samples.items():
            xs = [s.returned / s.wall for s in ss]
            self.add(setting, name, "throughput", statistics.median(xs), unit, spread=_spread(xs),
                     rounds=len(xs), better="higher", baseline=baseline)

    def finished_rows(self) -> list[dict]:
        """The rows with their ratios (from the unrounded figures) and the run's columns."""
        value = {(r["setting"], r["candidate"], r["figure"]): r["value"] for r in self.rows}
        run = {"device": self.device, "machine": self.machine, "versions": self.versions,
               "load": f"{self.load_before} at the start, {load_average()} at the end (1 / 5 / 15 min)",
               "date": self.date, "command": self.command, "run": self.id, "note": ""}
        out = []
        for r in self.rows:
            base = value.get((r["setting"], r["baseline"], r["figure"]))
            ratio = None
            if isinstance(base, (int, float)) and isinstance(r["value"], (int, float)) and r["value"] and base:
                ratio = base / r["value"] if r["better"] == "lower" else r["value"] / base
            out.append({**r, "value": _significant(r["value"], 4), "spread": _significant(r["spread"], 2),
                        "ratio_to_baseline": _significant(ratio, 3), **run})
        return [{k: row[k] for k in COLUMNS} for row in out]

    def save(self, args: argparse.Namespace) -> None:
        """Print this run as its page shows it; with --write, append the rows to the table and
        regenerate the run's page (at --write's path when one is given)."""
        rows = self.finished_rows()
        print("\n".join(render_run(rows)))
        if not args.write:
            return
        table = Path(args.table) if args.table else default_table()
        append_rows(table, rows)
        page = _page_name(self.benchmark, self.device)
        # beside its table, so a run recorded elsewhere (--table) never rewrites a committed page
        target = table.parent / page if args.write is True else Path(args.write)
        write_page(page, read_rows(table), target)
        write_csv(table)
        print(f"rows appended to {table}; page {target}")


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    """--write / --table / --parse-only, the same in every script."""
    parser.add_argument("--write", nargs="?", const=True, default=None, metavar="PAGE",
                        help="record this run: append its rows to the results table and regenerate its "
                             "page (benchmarks/results/<benchmark>_<cpu|gpu>.md, or PAGE)")
    parser.add_argument("--table", default=None,
                        help="the results table to append to (default: $ST_FAST_BENCH_TABLE or "
                             "benchmarks/results/results.jsonl)")
    parser.add_argument("--parse-only", action="store_true",
                        help="parse the arguments, print them and exit (the GPU check's dry run)")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The script's arguments; with --parse-only, print them and exit without measuring."""
    args = parser.parse_args(argv)
    if args.parse_only:
        print(f"{parser.prog}: arguments parse: {vars(args)}")
        raise SystemExit(0)
    return args


# ---------------------------------------------------------------------------- the table


def read_rows(table: Path | None = None) -> list[dict]:
    table = table or default_table()
    if not table.exists():
        return []
    return [json.loads(line) for line in table.read_text().splitlines() if line.strip()]


def append_rows(table: Path, rows: list[dict]) -> None:
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_csv(table: Path) -> Path:
    """The table as CSV beside it (same rows, same columns)."""
    from st_fast.utils import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(read_rows(table))
    path = table.with_suffix(".csv")
    atomic_write_text(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------- the pages


def _page_name(benchmark: str, device: str) -> str:
    return f"{benchmark}_{'gpu' if device.startswith('cuda') else 'cpu'}.md"


def _format(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return str(value).replace("|", "\\|")  # a '|' in a name would end the table cell


def _table(rows: list[dict]) -> list[str]:
    """Rows of one setting as a table: candidates down, figures across (a ratio column after
    each figure that has one)."""
    candidates = list(dict.fromkeys(r["candidate"] for r in rows))
    figures = list(dict.fromkeys(r["figure"] for r in rows))
    cell = {(r["candidate"], r["figure"]): r for r in rows}
    has_ratio = {f for f in figures if any(r["ratio_to_baseline"] is not None for r in rows if r["figure"] == f)}
    header = ["candidate"]
    for f in figures:
        unit = next((r["unit"] for r in rows if r["figure"] == f and r["unit"]), "")
        header.append(_format(f"{f} ({unit})" if unit else f))
        if f in has_ratio:
            header.append(f"{f}: x baseline")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in candidates:
        out = [_format(c)]
        for f in figures:
            r = cell.get((c, f), {})
            spread = f" [{_format(r['spread'])}]" if r.get("spread") is not None else ""
            out.append(_format(r.get("value")) + spread)
            if f in has_ratio:
                ratio = r.get("ratio_to_baseline")
                out.append("" if ratio is None else f"{_format(ratio)}x")
        lines.append("| " + " | ".join(out) + " |")
    baselines = sorted({r["baseline"] for r in rows if r["baseline"] and r["ratio_to_baseline"] is not None})
    return lines + ([f"\nbaseline: {', '.join(baselines)}"] if baselines else []) + [""]


def render_run(rows: list[dict]) -> list[str]:
    """One run's section: how it ran, then a table per setting."""
    first = rows[0]
    lines = [f"### {first['date']}: `{first['command']}`", "",
             f"- machine: {first['machine']}", f"- versions: {first['versions']}"]
    lines += [f"- load average: {first['load']}"] if first["load"] else []
    lines += [f"- note: {first['note']}"] if first["note"] else []
    lines.append("")
    for setting in dict.fromkeys(r["setting"] for r in rows):
        lines += [f"#### {setting}", "", *_table([r for r in rows if r["setting"] == setting])]
    return lines


def write_page(page: str, rows: list[dict], target: Path | None = None) -> Path:
    """The page: its notes with the measurements (newest run first) of its benchmark and device."""
    from st_fast.utils import atomic_write_text

    mine = [r for r in rows if _page_name(r["benchmark"], r["device"]) == page]
    runs: dict[str, list[dict]] = {}
    for r in mine:
        runs.setdefault(r["run"], []).append(r)
    ordered = sorted(runs.values(), key=lambda rs: rs[0]["date"], reverse=True)  # stable: ties keep file order
    measured = ["## Measurements", "", LEGEND, ""] + [line for rs in ordered for line in render_run(rs)]
    notes_file = NOTES / page
    notes = notes_file.read_text().rstrip("\n") if notes_file.exists() else f"# {page[:-3]}"
    if MARKER not in notes:
        notes += "\n\n" + MARKER
    header = (f"<!-- generated by `python benchmarks/harness.py render` from results.jsonl and "
              f"notes/{page}: edit those, not this page -->\n")
    text = header + notes.replace(MARKER, "\n".join(measured).rstrip("\n")) + "\n"
    target = target or RESULTS / page
    atomic_write_text(target, text)
    return target


def render(table: Path | None = None) -> list[Path]:
    """Every page that has rows, and the CSV view of the table."""
    table = table or default_table()
    rows = read_rows(table)
    pages = sorted({_page_name(r["benchmark"], r["device"]) for r in rows})
    written = [write_page(page, rows) for page in pages]
    return written + [write_csv(table)]


def merge(sources: list[Path], table: Path | None = None) -> int:
    """Append the rows of runs the table does not hold yet (merging twice adds nothing)."""
    table = table or default_table()
    known = {r["run"] for r in read_rows(table)}
    new = [r for src in sources for r in read_rows(src) if r["run"] not in known]
    append_rows(table, new)
    return len(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="render the benchmark pages, or merge rows into the table")
    parser.add_argument("action", choices=["render", "merge"])
    parser.add_argument("sources", nargs="*", type=Path, help="merge: results tables (JSONL) to add")
    parser.add_argument("--table", type=Path, default=None, help="default: $ST_FAST_BENCH_TABLE or "
                                                                 "benchmarks/results/results.jsonl")
    args = parser.parse_args(argv)
    if args.action == "merge":
        print(f"{merge(args.sources, args.table)} rows added")
    for path in render(args.table):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
