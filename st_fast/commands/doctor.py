"""`st-fast doctor`: every fast path, each backend, whether it runs here and why not."""

from __future__ import annotations

import argparse
import importlib
import json

# The modules that declare the fast paths (importing one declares its paths).
OWNERS = ("st_fast.cluster", "st_fast.augment", "st_fast.optim")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="list the fast paths and which backends run here",
        description="Prints every fast path (t-SNE, class statistics, CG augmentation, fused "
        "SGD), each of its backends, and whether it can run here on the CPU and on CUDA, with "
        "the reason where it cannot. Builds the C++ extensions that are not built yet (the "
        "first time on a machine: about a minute) unless --no-build.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument(
        "--no-build", action="store_true", help="do not build C++ extensions; report them unchecked"
    )
    p.set_defaults(func=run)


def collect(build: bool = True) -> dict:
    """The registry as plain data: machine facts and every fast path's backends."""
    import torch

    from .. import backends
    from ..kernels import TRITON_AVAILABLE

    for module in OWNERS:
        importlib.import_module(module)
    devices = ["cpu", "cuda"]
    triton_version = None
    if TRITON_AVAILABLE:
        import triton

        triton_version = triton.__version__
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "paths": [path.describe(devices, build=build) for path in backends.fast_paths()],
    }


def _lines(report: dict) -> list[str]:
    gpus = report["cuda_devices"]
    shown = ["cpu", "cuda"] if gpus else ["cpu"]
    lines = [
        f"torch {report['torch']}, triton {report['triton'] or 'not installed'}, "
        + (
            f"{gpus} CUDA GPU(s)"
            if gpus
            else "no CUDA GPU visible (CUDA backends not listed per device)"
        ),
    ]
    for path in report["paths"]:
        auto = "; ".join(f"{k}: {' > '.join(v)}" for k, v in path["auto"].items() if k != "*")
        lines += ["", f"{path['name']} ({path['title']})  auto order: {auto}"]
        for b in path["backends"]:
            lines.append(f"  {b['name']:<12} {b['summary']}")
            for device in shown:
                lines.append(f"  {'':<12}   {device:<5} {_verdict(b['devices'][device])}")
    return lines


def _verdict(reason) -> str:
    from ..backends import NOT_CHECKED

    if reason is None:
        return "yes"
    return "not checked (--no-build)" if reason == NOT_CHECKED else f"no: {reason}"


def run(args: argparse.Namespace) -> int:
    report = collect(build=not args.no_build)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("\n".join(_lines(report)))
    return 0
