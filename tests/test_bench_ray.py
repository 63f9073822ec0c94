"""Executors of the benchmark matrix: Ray (a local instance, 2 CPUs), the serial default with its
leased claims, progress and the CLI flags."""

import json
import os
import signal
import socket
import sys
import threading
import time

import pytest
import torch

from st_fast.bench import parse_config, run_bench
from st_fast.bench.cell import CellsFailed
from st_fast.cli import main
from st_fast.errors import UserError

VOLATILE = {"wall_s", "time_train", "time_acm", "time_eval", "machine"}   # when and where, not what
VICTIM = "sp-r1-small-resnet-nt-s0"


def _raw(root, **kw):
    cfg = {"name": "ray", "dataset": "fashion-mnist", "attacks": ["sp"], "ratios": [1.0, 0.5],
           "defences": ["nt", "st"], "seeds": [0], "data_root": str(root),
           "train": {"epochs": 3, "batch_size": 32, "device": "cpu", "optimizer": "torch"},
           "st": {"acm_embedding": None, "acm_per_class": 4, "log_acm": False}}
    return {**cfg, **kw}


def _kill_when_mid_run(cell_dir, seen: dict) -> None:
    """SIGKILL the worker running ``cell_dir`` once its first checkpoint is written."""
    deadline = time.time() + 120
    while time.time() < deadline:
        if (cell_dir / "result.json").exists():
            seen["missed"] = True   # the cell finished before it could be killed
            return
        if (cell_dir / "checkpoint.pt").exists() and (cell_dir / "worker.json").exists():
            worker = json.loads((cell_dir / "worker.json").read_text())
            os.kill(worker["pid"], signal.SIGKILL)
            seen["killed"] = worker
            return
        time.sleep(0.002)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """The same 4-cell, 2-poison matrix run serially (one thread) and on Ray (2 one-thread
    workers), where one cell's worker is killed mid-run."""
    ray = pytest.importorskip("ray")
    from st_fast.bench.ray_executor import RayOptions

    from .helpers import write_tiny_fashion

    tmp = tmp_path_factory.mktemp("bench_ray")
    cfg = parse_config(_raw(write_tiny_fashion(tmp / "data")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_bench(cfg, tmp / "serial", device="cpu", quiet=True)
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        seen = {}
        killer = threading.Thread(target=_kill_when_mid_run, args=(tmp / "ray" / "cells" / VICTIM, seen))
        killer.start()
        on_ray = run_bench(cfg, tmp / "ray", device="cpu", executor="ray", quiet=True,
                           ray_options=RayOptions(cpus_per_cell=1, max_retries=1))
        killer.join()
        yield {"cfg": cfg, "tmp": tmp, "serial": serial, "ray": on_ray, "seen": seen,
               "options": RayOptions(cpus_per_cell=1, max_retries=1)}
    finally:
        ray.shutdown()


def _by_cell(results):
    return {r["cell"]: {k: v for k, v in r.items() if k not in VOLATILE} for r in results}


def test_ray_matrix_equals_serial_and_survives_a_killed_worker(matrix):
    from st_fast import attacks

    seen, tmp = matrix["seen"], matrix["tmp"]
    assert "killed" in seen, "the victim cell finished before its worker could be killed"
    assert len(matrix["ray"]) == 4
    assert _by_cell(matrix["ray"]) == _by_cell(matrix["serial"])   # the retried cell too
    progress = json.loads((tmp / "ray" / "progress.json").read_text())
    assert (progress["done"], progress["failed"], progress["left"], progress["running"]) == (4, 0, 0, 0)
    assert progress["retried_cells"] == {VICTIM: 2} and progress["executor"] == "ray"
    assert progress["poisons"] == {"sp-r1-s0": "done", "sp-r0.5-s0": "done"}
    worker = json.loads((tmp / "ray" / "cells" / VICTIM / "worker.json").read_text())
    assert worker["attempt"] == 2 and worker["pid"] != seen["killed"]["pid"]
    for name in ("sp-r1-s0.pt", "sp-r0.5-s0.pt"):   # each poison made once, the same as serial's
        a, b = (attacks.load(tmp / d / "poisons" / name).images for d in ("serial", "ray"))
        assert torch.equal(a, b)
    lines = (tmp / "ray" / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["cell"] for x in lines) == sorted(_by_cell(matrix["serial"]))


def test_ray_rerun_skips_finished_cells_and_reports_a_failed_one(matrix):
    ray = pytest.importorskip("ray")
    out = matrix["tmp"] / "ray"
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/result.json")}
    bad = out / "cells" / "sp-r0.5-small-resnet-st-s0"
    (bad / "result.json").unlink()
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")   # refused on resume: a UserError
    assert ray.is_initialized()   # the module's instance: the driver uses it and leaves it running
    with pytest.raises(CellsFailed, match="sp-r0.5-small-resnet-st-s0: after 1 attempt.*checkpoint"):
        run_bench(matrix["cfg"], out, device="cpu", executor="ray", quiet=True, ray_options=matrix["options"])
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.exists())   # skipped, not rerun
    progress = json.loads((out / "progress.json").read_text())
    assert (progress["done"], progress["failed"]) == (3, 1)   # reported, never skipped
    assert "sp-r0.5-small-resnet-st-s0" in progress["failed_cells"]
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def test_without_ray_the_cli_says_how_to_install_it(tiny_fashion, tmp_path, monkeypatch, capsys):
    import yaml

    (tmp_path / "b.yaml").write_text(yaml.safe_dump(_raw(tiny_fashion)))
    monkeypatch.setitem(sys.modules, "ray", None)   # import ray now raises ImportError
    assert main(["bench", "--config", str(tmp_path / "b.yaml"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'st_fast[ray]'" in err[0]
    assert main(["bench", "--config", str(tmp_path / "b.yaml"), "--max-retries", "3"]) == 2
    assert "--max-retries apply to --executor ray only" in capsys.readouterr().err


def test_claims_are_leases_on_the_disks_clock(tmp_path):
    from st_fast.bench.runner import Claim

    target = tmp_path / "cells" / "c"
    claim = Claim(target, heartbeat_s=0.05)
    assert claim.acquire() and not Claim(target).acquire()
    old = claim.path.stat().st_mtime
    time.sleep(0.2)
    assert claim.path.stat().st_mtime > old   # the holder refreshes its lease
    claim.release()
    # another host's claim: alive while refreshed, free once the lease has run out
    other = target.with_name("c.claim")
    other.write_text("elsewhere 1\n")
    assert not Claim(target, lease_s=60).acquire()
    stale = time.time() - 3600
    os.utime(other, (stale, stale))
    assert Claim(target, lease_s=60).acquire()
    assert other.read_text().split() == [socket.gethostname(), str(os.getpid())]


def test_progress_counts_and_eta(tmp_path, capsys):
    from st_fast.bench.progress import Progress

    p = Progress(tmp_path, ["a", "b", "c", "d", "e"], "ray")
    p.skipped("a")
    p.running("b", 1)
    p.running("c", 1)
    assert p.eta_s() is None   # nothing finished in this run: no estimate
    p.finished("b", 10.0)
    p.retrying("c", "WorkerCrashedError: died")
    p.running("c", 2)
    p.finished("c", 30.0)
    p.running("d", 1)
    # mean 20 s per cell, 2 cells not finished, at most 2 side by side
    assert p.counts() == {"done": 3, "running": 1, "failed": 0, "left": 1} and p.eta_s() == 20.0
    p.failed("d", "UserError: bad")
    snap = json.loads((tmp_path / "progress.json").read_text())
    assert snap["failed_cells"] == {"d": "UserError: bad"} and snap["retried_cells"] == {"c": 2}
    assert snap["left"] == 1 and snap["eta_s"] == 10.0
    assert "3/5 done, 0 running, 1 failed, 1 left; ETA 10 s" in capsys.readouterr().err
    # a retried attempt that finishes (or fails) before any poll saw it start still counts
    p.retrying("e", "WorkerCrashedError: died")
    p.finished("e", 5.0, attempt=2)
    p.failed("d", "UserError: bad", attempt=3)
    snap = json.loads((tmp_path / "progress.json").read_text())
    assert snap["retried_cells"] == {"c": 2, "e": 2, "d": 3}


def test_ray_imports_a_poison_file_and_trains_on_it_as_serial_did(matrix):
    import hashlib

    ray = pytest.importorskip("ray")
    assert ray.is_initialized()
    made = matrix["tmp"] / "serial" / "poisons" / "sp-r1-s0.pt"   # the serial run's own SP poison
    raw = _raw(matrix["cfg"].data_root, attacks=["sp-file"], ratios=[1.0], defences=["nt"],
               poison_files={"sp-file": {"path": str(made)}})
    [r] = run_bench(parse_config(raw), matrix["tmp"] / "file", device="cpu", executor="ray", quiet=True,
                    ray_options=matrix["options"])
    assert r["poison_sha256"] == hashlib.sha256(made.read_bytes()).hexdigest()
    serial = _by_cell(matrix["serial"])[VICTIM]
    # what says how the poison was obtained (a file's path and checksum, a generated one's version)
    renamed = {"attack", "cell", "poison_file", "poison_sha256", "attack_version"}
    assert {k: v for k, v in _by_cell([r])[r["cell"]].items() if k not in renamed} == \
           {k: v for k, v in serial.items() if k not in renamed}


class _FakeRay:
    """Just enough of ray for the driver: every task fails with ``error`` (a worker that keeps dying)."""

    def __init__(self, error):
        self.error, self.submitted = error, []

    def cluster_resources(self):
        return {"CPU": 2.0}

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **kw):
                assert kw["max_retries"] == 0   # retries are the driver's, counted alike
                return self

            def remote(self, *args):
                fake.submitted.append((fn.__name__, args[-1]))
                return len(fake.submitted)
        return Task()

    def wait(self, refs, num_returns, timeout):
        return refs[:1], refs[1:]

    def get(self, ref):
        raise self.error


def test_a_task_that_keeps_failing_is_retried_then_reported(tiny_fashion, tmp_path, capsys):
    from st_fast.bench.progress import Progress
    from st_fast.bench.ray_executor import RayOptions, _Driver

    cfg = parse_config(_raw(tiny_fashion, attacks=["clean"], ratios=[1.0], defences=["nt"]))
    [cell] = cfg.cells()
    tracker = Progress(tmp_path, [cell.id], "ray", quiet=True)
    fake = _FakeRay(RuntimeError("The worker died unexpectedly"))
    _Driver(fake, cfg, tmp_path, "cpu", RayOptions(max_retries=2), tracker, lambda: None).run([cell])
    assert [attempt for _, attempt in fake.submitted] == [1, 2, 3]   # the first try and 2 retries
    assert tracker.state[cell.id] == "failed"
    assert tracker.errors[cell.id] == "after 3 attempt(s): RuntimeError: The worker died unexpectedly"
    fake = _FakeRay(UserError("checkpoint.pt: not this cell's"))   # would fail the same way: no retry
    _Driver(fake, cfg, tmp_path, "cpu", RayOptions(max_retries=2), tracker, lambda: None).run([cell])
    assert len(fake.submitted) == 1 and "after 1 attempt(s): UserError" in tracker.errors[cell.id]
