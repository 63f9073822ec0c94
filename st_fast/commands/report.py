"""`st-fast report`: rebuild tables and plots from finished benchmark or run directories."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild tables and plots from finished runs",
                       description="Collects result.json of every finished cell under the given "
                                   "directories and writes results.md/.csv/.jsonl and plots/.")
    p.add_argument("run_dirs", nargs="+", help="bench output directories or cell directories")
    p.add_argument("--out", default=None, help="where to write (default: the first directory)")
    p.add_argument("--paired", action="append", default=[], metavar="A:B",
                   help="add a table of A's final accuracy minus B's, paired by seed, per attack "
                        "(repeatable; e.g. --paired st-full:nt-cg-ft)")
    p.add_argument("--summary", default=None, metavar="COLS",
                   help="comma-separated columns of a compact final-accuracy table put first "
                        "(default: the bench config's report.summary, if any)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import collect_results, write_reports
    from ..bench.config import parse_pair
    from ..errors import UserError

    pairs = [parse_pair(spec) for spec in args.paired]
    summary = [c for c in (args.summary or "").split(",") if c] or None
    results = collect_results(args.run_dirs)
    if not results:
        raise UserError(f"no finished cells (result.json) under {', '.join(args.run_dirs)}")
    out = Path(args.out or args.run_dirs[0])
    write_reports(results, out, pairs=pairs, summary=summary)
    print((out / "results.md").read_text())
    return 0
