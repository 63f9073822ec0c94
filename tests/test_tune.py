import json

import torch

from st_fast.cli import main
from st_fast.config import TrainConfig
from st_fast.data import prepare_data


def test_validation_images_are_clean_balanced_and_held_out(tiny_fashion):
    cfg = TrainConfig(data_root=str(tiny_fashion), val_size=20)
    train, _, val = prepare_data(cfg, with_val=True)
    assert len(val) == 20 and len(train) == 100
    assert torch.bincount(val.labels).tolist() == [2] * 10
    pairs = {tuple(x.flatten().tolist()[:50]) for x in train.images}
    assert not any(tuple(v.flatten().tolist()[:50]) in pairs for v in val.images)


def test_tune_picks_from_the_grid_on_validation_only(tiny_fashion, tmp_path, capsys):
    out = tmp_path / "tune"
    rc = main(["tune", "--data-root", str(tiny_fashion), "--epochs", "1", "--batch-size", "32",
               "--device", "cpu", "--optimizer", "torch", "--taus", "0.5,100", "--alphas", "0.5",
               "--acm-embedding", "none", "--acm-per-class", "4", "--ft-epochs", "0",
               "--method", "st", "--out", str(out), "--no-progress"])
    assert rc == 0
    result = json.loads((out / "tune.json").read_text())
    assert [(r["tau"], r["alpha"]) for r in result["grid"]] == [(0.5, 0.5), (100.0, 0.5)]
    assert result["grid"][1]["rollbacks"] == 0  # tau = 100 never triggers
    assert result["val_size"] == 20 and result["best"] in result["grid"]
    assert "best: --tau" in capsys.readouterr().out
