import subprocess
import sys

import pytest

from st_fast.cli import COMMANDS, main


def test_help_for_every_command(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert name in capsys.readouterr().out


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    rc = main(["train", "--arch", "resnet19", "--dataset", "fashion-mnist", "--epochs", "1",
               "--out", str(tmp_path), "--data-root", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    # the bad architecture is what is reported (not, say, the data missing under tmp_path)
    assert err.startswith("st-fast train: error: ") and "'resnet19'" in err and "arch" in err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "st_fast", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "st-fast" in out.stdout


def test_train_with_profile_writes_trace_then_trains(tiny_fashion, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--data-root", str(tiny_fashion), "--epochs", "1", "--batch-size", "32",
               "--device", "cpu", "--no-acm-log", "--profile", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert list((out / "profile").glob("*.json")) and (out / "history.csv").exists()


def test_a_diverged_run_is_one_line_and_exit_1(tiny_fashion, tmp_path, capsys):
    # lr 1e8: the loss overflows in the first epoch; the run stops there instead of training on NaN
    rc = main(["train", "--data-root", str(tiny_fashion), "--epochs", "2", "--batch-size", "32", "--lr", "1e8",
               "--device", "cpu", "--no-acm-log", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("st-fast train: error: training diverged") and "epoch 1" in err[-1]
    assert "Traceback" not in "\n".join(err)
