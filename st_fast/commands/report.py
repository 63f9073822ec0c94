"""`st-fast report`: rebuild tables and plots from finished benchmark or run directories."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild tables and plots from finished runs",
                       description="Collects result.json of every finished cell under the given "
                                   "directories (cells/<id>/ folders, or the packed cells.jsonl) and "
                                   "writes results.md/.csv/.jsonl and plots/.")
    p.add_argument("run_dirs", nargs="+", help="bench output directories or cell directories")
    p.add_argument("--out", default=None, help="where to write (default: the first directory)")
    p.add_argument("--paired", action="append", default=[], metavar="A:B",
                   help="add a table of A's final accuracy minus B's, paired by seed, per attack "
                        "(repeatable; e.g. --paired st-full:nt-cg-ft)")
    p.add_argument("--summary", default=None, metavar="COLS",
                   help="comma-separated columns of a compact final-accuracy table put first "
                        "(default: the bench config's report.summary, if any)")
    p.add_argument("--pack", action="store_true",
                   help="also write DIR/cells.jsonl: every finished cell's result, config, summary, history "
                        "and checks in one line each, enough to rebuild every report without cells/")
    p.add_argument("--unpack", action="store_true",
                   help="write each packed cell back as DIR/cells/<id>/ (result, config, summary, history, "
                        "checks), e.g. to continue a packed study: `st-fast bench` skips finished cells")
    p.add_argument("--cell-plots", action="store_true",
                   help="also rebuild each cell's plots (DIR/cells/<id>/plots/: accuracy, acm, multipliers)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import collect_results, write_reports
    from ..bench.config import parse_pair
    from ..bench.report import pack_cells, unpack_cells, write_cell_plots
    from ..errors import UserError

    pairs = [parse_pair(spec) for spec in args.paired]
    summary = [c for c in (args.summary or "").split(",") if c] or None
    results = collect_results(args.run_dirs)
    if not results:
        raise UserError(f"no finished cells (result.json) under {', '.join(args.run_dirs)}")
    out = Path(args.out or args.run_dirs[0])
    for run_dir in map(Path, args.run_dirs):
        if args.pack and (run_dir / "cells").is_dir():
            print(f"packed {pack_cells(run_dir)}")
        if args.unpack:
            print(f"unpacked {unpack_cells(run_dir)} cells under {run_dir / 'cells'}/")
        if args.cell_plots:
            print(f"plots of {write_cell_plots(run_dir)} cells under {run_dir / 'cells'}/")
    write_reports(results, out, pairs=pairs, summary=summary)
    print((out / "results.md").read_text())
    return 0
