"""The demo on a shared machine: wall time idle and beside two other st-fast training jobs.

On a 2-core machine three CPU-bound jobs get a fair share of 1/3 each, so the demo beside two
others should take about 3x its idle time; OpenMP threads that spin-wait for work (libgomp's
default when OMP_WAIT_POLICY is unset) take far more than their share from the others. The
CLI now sets OMP_WAIT_POLICY=PASSIVE unless the user has set it. This script times both:
"before" runs an older checkout (``--before-root``: its CLI leaves OMP_WAIT_POLICY unset),
"after" this one; in each case the two background jobs run the same code as the demo.

    python benchmarks/bench_load.py --before-root ../old-checkout --write
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Run, add_output_flags, parse_args  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def env_for(root: Path) -> dict:
    """This checkout's st_fast, or the older one's; OMP_WAIT_POLICY left to the CLI."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(root)
    return env


def timed_demo(root: Path, env: dict, args, out: Path) -> float:
    cmd = [sys.executable, "-m", "st_fast", "demo", "--out", str(out), "--epochs", str(args.epochs),
           "--train-subset", str(args.train_subset), "--methods", args.methods, "--no-progress",
           "--device", "cpu"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def background_jobs(root: Path, env: dict, n: int, tmp: Path) -> list[subprocess.Popen]:
    """``n`` st-fast training runs long enough to outlast the demo (stopped afterwards)."""
    return [subprocess.Popen([sys.executable, "-m", "st_fast", "train", "--epochs", "200",
                              "--train-subset", "5000", "--acm-embedding", "none", "--no-progress",
                              "--device", "cpu", "--out", str(tmp / f"load{i}")],
                             cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(n)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before-root", type=Path, default=None,
                   help="an older checkout whose CLI does not set OMP_WAIT_POLICY (omit: after only)")
    p.add_argument("--after-root", type=Path, default=ROOT,
                   help="the checkout measured as 'after' (default: this one)")
    p.add_argument("--epochs", type=int, default=2, help="demo epochs (the full demo: 6)")
    p.add_argument("--train-subset", type=int, default=4000, help="demo training images (the full demo: 10000)")
    p.add_argument("--methods", default="nt,st-full", help="demo methods")
    p.add_argument("--jobs", type=int, default=2, help="st-fast training jobs beside the demo")
    add_output_flags(p)
    args = parse_args(p, argv)
    run = Run("load")
    setting = (f"demo --epochs {args.epochs} --train-subset {args.train_subset} --methods {args.methods}; "
               f"{args.jobs} st-fast train jobs beside it")
    cases = [("after: OMP_WAIT_POLICY=PASSIVE (CLI default)", args.after_root.resolve())]
    if args.before_root:
        cases.insert(0, ("before: OMP_WAIT_POLICY unset", args.before_root.resolve()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, root in cases:
            env = env_for(root)
            idle = timed_demo(root, env, args, tmp / f"idle-{len(run.rows)}")
            jobs = background_jobs(root, env, args.jobs, tmp / f"jobs-{len(run.rows)}")
            try:
                time.sleep(5)   # the jobs are past their start-up and training
                loaded = timed_demo(root, env, args, tmp / f"loaded-{len(run.rows)}")
            finally:
                for j in jobs:
                    j.kill()
                    j.wait()
            print(f"{name}: idle {idle:.1f} s, beside {args.jobs} jobs {loaded:.1f} s ({loaded / idle:.2f}x)")
            run.add(setting, name, "wall idle", idle, "s", better="lower")
            run.add(setting, name, "wall under load", loaded, "s", better="lower",
                    baseline=cases[0][0] if args.before_root else None)
            run.add(setting, name, "slowdown under load", loaded / idle, "x", better="lower",
                    baseline=cases[0][0] if args.before_root else None)
    run.save(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
