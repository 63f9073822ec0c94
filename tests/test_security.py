"""No file runs code, a resumed run is the same run, bad input is one line before any work."""

from __future__ import annotations

import errno
import json
import os
import stat
import time

import pytest
import torch

from st_fast import cli
from st_fast.config import STConfig, TrainConfig
from st_fast.errors import UserError


class Payload:
    """Unpickling this runs ``touch MARKER``: what a malicious run directory would ship."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "st_fast-checkpoint-2", "payload": Payload(marker), **extra}, path)


def run_cli(capsys, *argv):
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own refusals
        rc = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def assert_one_line_error(rc, err, *needles):
    """Exit 2; the last stderr line is the error, the only one (progress lines may precede it)."""
    assert rc == 2, err
    text = "\n".join(err)
    assert [i for i, line in enumerate(err) if "error:" in line] == [len(err) - 1], err
    assert "Traceback" not in text and "weights_only" not in text and "will likely succeed" not in text, err
    for n in needles:
        assert n in err[-1], err


TRAIN = ["--epochs", 2, "--batch-size", 32, "--acm-per-class", 3, "--acm-embedding", "none",
         "--no-progress", "--device", "cpu"]


# ---------------------------------------------------------------- files that would run code

def test_train_resume_refuses_malicious_checkpoint(tmp_path, tiny_fashion, capsys):
    marker = tmp_path / "pwned"
    plant(tmp_path / "run" / "checkpoint.pt", marker)
    rc, err = run_cli(capsys, "train", "--data-root", tiny_fashion, "--out", tmp_path / "run",
                      "--resume", *TRAIN)
    assert_one_line_error(rc, err, "checkpoint.pt", "could run code")
    assert not marker.exists()


def test_demo_refuses_malicious_checkpoint(tmp_path, tiny_fashion, capsys):
    marker = tmp_path / "pwned"
    plant(tmp_path / "demo" / "nt" / "checkpoint.pt", marker)
    rc, err = run_cli(capsys, "demo", "--data-root", tiny_fashion, "--out", tmp_path / "demo",
                      "--epochs", 1, "--train-subset", 100, "--methods", "nt", "--no-progress", "--device", "cpu")
    assert_one_line_error(rc, err, "could run code")
    assert not marker.exists()


def test_tune_refuses_malicious_checkpoint(tmp_path, tiny_fashion, capsys):
    marker = tmp_path / "pwned"
    plant(tmp_path / "tune" / "tau2-alpha0.25" / "checkpoint.pt", marker)
    rc, err = run_cli(capsys, "tune", "--data-root", tiny_fashion, "--out", tmp_path / "tune",
                      "--taus", "2", "--alphas", "0.25", *TRAIN)
    assert_one_line_error(rc, err, "could run code")
    assert not marker.exists()


def test_bench_refuses_malicious_checkpoint(tmp_path, tiny_fashion, capsys):
    marker = tmp_path / "pwned"
    config = tmp_path / "b.yaml"
    config.write_text(f"dataset: fashion-mnist\ndata_root: {tiny_fashion}\nattacks: [clean]\n"
                      "defences: [nt]\ntrain: {epochs: 1, batch_size: 32}\n"
                      "st: {acm_per_class: 3, acm_embedding: null}\n")
    plant(tmp_path / "out" / "cells" / "clean-small-resnet-nt-s0" / "checkpoint.pt", marker)
    rc, err = run_cli(capsys, "bench", "--config", config, "--out", tmp_path / "out", "--device", "cpu")
    assert_one_line_error(rc, err, "could run code")
    assert not marker.exists()


def test_malicious_poison_and_feature_files_refused(tmp_path, tiny_fashion, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"perturbation": Payload(marker)}, evil)
    for argv in (["train", "--data-root", tiny_fashion, "--poison", evil, "--out", tmp_path / "r", *TRAIN],
                 ["poison", "--from", evil, "--attack", "sp", "--data-root", tiny_fashion,
                  "--out", tmp_path / "p.pt"],
                 ["acm", "--features", evil, "--labels", evil]):
        rc, err = run_cli(capsys, *argv)
        assert_one_line_error(rc, err, "evil.pt")
        assert not marker.exists()


def test_cifar_batch_pickle_cannot_run_code(tmp_path):
    import pickle

    from st_fast.files import restricted_unpickle

    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": Payload(marker)}))
    with pytest.raises(UserError, match="could run code"):
        restricted_unpickle(tmp_path / "data_batch_1", "CIFAR batch file")
    assert not marker.exists()
    import numpy as np

    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"batch_label": "x"}
    (tmp_path / "ok").write_bytes(pickle.dumps(good, protocol=2))
    back = restricted_unpickle(tmp_path / "ok", "CIFAR batch file")
    assert back[b"labels"] == [0, 1] and back[b"data"].shape == (2, 3072)


def test_old_format_checkpoint_refused_clearly(tmp_path, tiny_fashion, capsys):
    (tmp_path / "run").mkdir()
    torch.save({"model": {}, "method": "nt", "config": {}}, tmp_path / "run" / "checkpoint.pt")
    rc, err = run_cli(capsys, "train", "--data-root", tiny_fashion, "--out", tmp_path / "run", "--resume", *TRAIN)
    assert_one_line_error(rc, err, "older version", "delete it")


# ---------------------------------------------------------------- a resumed run is the same run

def _interrupt_after_first_epoch(monkeypatch):
    from st_fast.engine import Trainer

    original, calls = Trainer.save_checkpoint, []

    def save_then_stop(self):
        original(self)
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_stop)
    return lambda: monkeypatch.setattr(Trainer, "save_checkpoint", original)


def _history(run):
    rows = json.loads((run / "history.json").read_text())
    return [(r["train_loss"], r["train_acc"], r["test_acc"], r.get("acm")) for r in rows]


@pytest.mark.parametrize("flag,value,field", [("--lr", "0.05", "lr"), ("--seed", "1", "seed"),
                                              ("--epochs", "3", "epochs"),
                                              ("--train-subset", "90", "train_subset")])
def test_resume_with_changed_setting_refused(tmp_path, tiny_fashion, capsys, monkeypatch, flag, value, field):
    restore = _interrupt_after_first_epoch(monkeypatch)
    base = ["train", "--data-root", tiny_fashion, "--out", tmp_path / "run", "--train-subset", 100, *TRAIN]
    assert run_cli(capsys, *base)[0] == 130
    restore()
    rc, err = run_cli(capsys, *base, "--resume", flag, value)
    assert_one_line_error(rc, err, "belongs to another run", f"{field} ")


def test_resume_without_checkpoint_is_an_error(tmp_path, tiny_fashion, capsys):
    rc, err = run_cli(capsys, "train", "--data-root", tiny_fashion, "--out", tmp_path / "empty", "--resume", *TRAIN)
    assert_one_line_error(rc, err, "no checkpoint to resume")


def test_resume_with_no_progress_is_bit_identical(tmp_path, tiny_fashion, capsys, monkeypatch):
    common = ["train", "--data-root", tiny_fashion, "--method", "st", "--train-subset", 100,
              *[a for a in TRAIN if a != "--no-progress"]]
    assert run_cli(capsys, *common, "--out", tmp_path / "full")[0] == 0
    restore = _interrupt_after_first_epoch(monkeypatch)
    assert run_cli(capsys, *common, "--out", tmp_path / "part")[0] == 130
    restore()
    assert run_cli(capsys, *common, "--out", tmp_path / "part", "--resume", "--no-progress")[0] == 0
    assert _history(tmp_path / "part") == _history(tmp_path / "full")
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_demo_does_not_resume_a_train_run(tmp_path, tiny_fashion, capsys):
    common = ["--data-root", tiny_fashion, "--train-subset", 100, "--no-progress", "--device", "cpu"]
    assert run_cli(capsys, "train", "--out", tmp_path / "demo" / "nt", "--epochs", 1, "--batch-size", 128,
                   "--acm-per-class", 3, *common)[0] == 0
    rc, err = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--epochs", 1, "--methods", "nt", *common)
    assert_one_line_error(rc, err, "belongs to another run", "writer 'train' -> 'demo'")


# ---------------------------------------------------------------- validation at construction

@pytest.mark.parametrize("flag,value,field", [
    ("--epochs", "0", "epochs"), ("--epochs", "-1", "epochs"), ("--batch-size", "0", "batch_size"),
    ("--lr", "0", "lr"), ("--lr", "nan", "lr"), ("--momentum", "1", "momentum"),
    ("--tau", "-1", "tau"), ("--alpha", "-0.5", "alpha"), ("--train-subset", "0", "train_subset"),
    ("--train-subset", "-5", "train_subset"), ("--train-subset", "99999999", "train_subset"),
    ("--test-subset", "0", "test_subset"), ("--acm-embedding", "umap", "acm_embedding"),
    ("--acm-radius", "median", "acm_radius"), ("--acm-backend", "gpu", "acm_backend"),
    ("--acm-classes", "1", "acm_classes"), ("--multiplier-rule", "cubic", "multiplier_rule"),
    ("--method", "bogus", "method"), ("--dataset", "mnist-x", "dataset"), ("--arch", "resnet9000", "arch"),
    ("--amp", "fp8", "amp"), ("--ft-lr", "0", "ft_lr"),
])
def test_cli_range_rules(tmp_path, tiny_fashion, capsys, flag, value, field):
    rc, err = run_cli(capsys, "train", "--data-root", tiny_fashion, "--out", tmp_path / "r", *TRAIN, flag, value)
    assert_one_line_error(rc, err, field)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize("cls,kwargs,field", [
    (TrainConfig, {"epochs": -1}, "epochs"), (TrainConfig, {"lr": "fast"}, "lr"),
    (TrainConfig, {"batch_size": 0}, "batch_size"), (TrainConfig, {"momentum": -0.1}, "momentum"),
    (TrainConfig, {"train_subset": 0}, "train_subset"), (TrainConfig, {"seed": 1.5}, "seed"),
    (STConfig, {"method": "bogus"}, "method"), (STConfig, {"tau": 0}, "tau"),
    (STConfig, {"alpha": -1}, "alpha"), (STConfig, {"acm_radius": "x"}, "acm_radius"),
    (STConfig, {"multiplier_rule": "x"}, "multiplier_rule"), (STConfig, {"trigger": "x"}, "trigger"),
])
def test_constructor_range_rules(cls, kwargs, field):
    with pytest.raises(UserError, match=f"^{field} must be ") as info:
        cls(**kwargs)
    assert isinstance(info.value, ValueError)


def test_aliases_accepted_and_named_canonically():
    assert TrainConfig(dataset="CIFAR-10", arch="wrn-28-10").dataset == "cifar10"


@pytest.mark.parametrize("params,needle", [
    (["--eps", "8/0"], "8/0"), (["--eps", "-1"], "-1"), (["--ratio", "2"], "ratio"),
    (["--param", "steps=0"], "steps"), (["--param", "steps=2.5"], "steps"), (["--subset", "0"], "subset"),
])
def test_attack_parameters_checked_before_work(tmp_path, tiny_fashion, capsys, params, needle):
    rc, err = run_cli(capsys, "poison", "--attack", "em-sample", "--data-root", tiny_fashion,
                      "--out", tmp_path / "p.pt", *params)
    assert_one_line_error(rc, err, needle)


def test_bench_yaml_names_the_field(tmp_path, capsys):
    config = tmp_path / "b.yaml"
    config.write_text('dataset: fashion-mnist\nattacks: [clean]\ndefences: [nt]\ntrain: {epochs: "three"}\n')
    rc, err = run_cli(capsys, "bench", "--config", config, "--dry-run")
    assert_one_line_error(rc, err, "b.yaml", "train", "epochs must be an integer")
    config.write_text("dataset: fashion-mnist\nattacks: [sp]\ndefences: [nt]\nattack_params: {sp: {eps: -1}}\n")
    rc, err = run_cli(capsys, "bench", "--config", config, "--dry-run")
    assert_one_line_error(rc, err, "attack_params.sp", "eps")


# ---------------------------------------------------------------- file-system errors

def _unwritable(tmp_path):
    """A directory nobody may write into (root ignores mode bits: use sysfs, which refuses)."""
    if os.geteuid() == 0:
        return tmp_path.joinpath("/sys/st-fast-test-out")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return d


@pytest.mark.parametrize("where", ["read-only", "under-a-file"])
def test_poison_refuses_unwritable_out_before_the_attack(tmp_path, tiny_fashion, capsys, where):
    if where == "read-only":
        out = _unwritable(tmp_path) / "em.pt"
    else:
        (tmp_path / "sp.pt").write_bytes(b"x")
        out = tmp_path / "sp.pt" / "inner.pt"
    t0 = time.perf_counter()
    rc, err = run_cli(capsys, "poison", "--attack", "em-sample", "--data-root", tiny_fashion, "--out", out)
    assert time.perf_counter() - t0 < 10
    assert_one_line_error(rc, err, "cannot write")


def test_train_refuses_unwritable_out(tmp_path, tiny_fashion, capsys):
    rc, err = run_cli(capsys, "train", "--data-root", tiny_fashion, "--out", _unwritable(tmp_path) / "run", *TRAIN)
    assert_one_line_error(rc, err, "cannot write")


def test_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, tiny_fashion, capsys, monkeypatch):
    from st_fast import files

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    rc, err = run_cli(capsys, "poison", "--attack", "sp", "--data-root", tiny_fashion,
                      "--out", tmp_path / "out" / "sp.pt")
    assert_one_line_error(rc, err, "sp.pt", "No space left on device")
    assert list((tmp_path / "out").iterdir()) == []   # neither the file nor a temporary


def test_written_files_respect_the_umask(tmp_path, tiny_fashion, capsys):
    old = os.umask(0o022)
    try:
        rc, _ = run_cli(capsys, "poison", "--attack", "sp", "--data-root", tiny_fashion, "--out", tmp_path / "sp.pt")
        assert rc == 0
        rc, _ = run_cli(capsys, "train", "--data-root", tiny_fashion, "--out", tmp_path / "run",
                        "--poison", tmp_path / "sp.pt", *TRAIN[:2], "--epochs", 1, *TRAIN[4:])
        assert rc == 0
    finally:
        os.umask(old)
    written = [tmp_path / "sp.pt", *[p for p in (tmp_path / "run").rglob("*") if p.is_file()]]
    assert any(p.suffix == ".png" for p in written)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}
