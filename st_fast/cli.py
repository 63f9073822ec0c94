"""The ``st-fast`` command line.

Each subcommand lives in ``st_fast/commands/<name>.py`` and provides
``add_parser(subparsers)`` (which sets ``func`` on its parser). User errors
(:class:`st_fast.errors.UserError`), bad flags and file-system errors (read-only, no space,
permission) print one line and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Before torch is imported: OpenMP threads that spin-wait for work steal the CPU from every
# other job on a shared machine (measured: benchmarks/results/load_cpu.md); a user's own
# setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import __version__  # noqa: E402
from .errors import TrainingDiverged, UserError  # noqa: E402


class HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default unless its help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        # switches (nargs 0) say in their help what they turn on or off
        quiet = action.default is None or action.nargs == 0 or action.default == argparse.SUPPRESS
        if "default" not in text and not quiet and action.option_strings and not isinstance(action.default, list):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and defaults shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

# Order here is the order in `st-fast --help`.
COMMANDS = ("demo", "train", "tune", "poison", "detect", "acm", "bench", "report", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="st-fast",
        description="Learn from unlearnable (availability-poisoned) data: Progressive Staged "
        "Training, Activation Cluster Measurement, attacks and benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"st-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"st_fast.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"st-fast {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"st-fast {args.command}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # read-only, full disk, permission: the path and the reason, one line
        where = f"{err.filename}: " if err.filename else ""
        print(f"st-fast {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"st-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
