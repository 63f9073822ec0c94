import json

import pytest
import torch

from st_fast.config import TrainConfig
from st_fast.engine import Trainer
from st_fast.errors import UserError
from st_fast.schedule import cosine_lr

from .helpers import toy_dataset

CFG = dict(arch="small-resnet", epochs=3, batch_size=32, lr=0.05, device="cpu", optimizer="torch",
           crop_padding=2)


def _trainer(tmp_path, **kw):
    cfg = TrainConfig(**{**CFG, **kw})
    return Trainer(cfg, None, toy_dataset(128), toy_dataset(64, seed=1, split="test"), run_dir=tmp_path,
                   progress=False)


def test_training_learns_and_writes_run_dir(tmp_path):
    t = _trainer(tmp_path, epochs=2, seed=0)
    hist = t.fit()
    assert len(hist) == 2 and all(r["images_per_s"] > 0 for r in hist)
    # four classes (chance 0.25) told apart by brightness: measured 0.75 after two epochs
    assert hist[-1]["test_acc"] >= 0.6
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    for name in ("config.json", "history.csv", "history.json", "checkpoint.pt", "plots/accuracy.png"):
        assert (tmp_path / name).exists(), name
    assert [r["epoch"] for r in json.loads((tmp_path / "history.json").read_text())] == [1, 2]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_resume_matches_uninterrupted(tmp_path):
    full = _trainer(tmp_path / "full").fit()
    # "kill" after two epochs: a fresh trainer limited to 2 epochs, then resume to 3
    _trainer(tmp_path / "part").fit(stop_after=2)
    resumed = _trainer(tmp_path / "part")
    assert resumed.try_resume() and resumed.epoch == 2
    hist = resumed.fit()
    assert [r["train_loss"] for r in hist] == pytest.approx([r["train_loss"] for r in full], rel=1e-5)
    assert hist[-1]["test_acc"] == full[-1]["test_acc"]


def test_damaged_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a valid st_fast checkpoint"):
        _trainer(tmp_path).try_resume()


def test_per_unit_lr_scales_reach_the_optimizer(tmp_path):
    t = _trainer(tmp_path)
    t.opt.set_lrs(0.1, [0.0, 0.5, 1, 1, 1, 1])
    lrs = [g["lr"] for g in t.opt.optimizer.param_groups]
    assert lrs[:2] == [0.0, 0.05]
    with pytest.raises(UserError, match="one lr multiplier per unit"):
        t.opt.set_lrs(0.1, [1.0])


def test_cosine_lr():
    assert cosine_lr(0.1, 0, 10) == pytest.approx(0.1)
    assert cosine_lr(0.1, 5, 10) == pytest.approx(0.05)


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="epochs"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(UserError, match="unknown TrainConfig"):
        TrainConfig.from_dict({"epochz": 3})


def test_features_shape(tmp_path):
    t = _trainer(tmp_path)
    f = t.features(torch.randint(0, 255, (10, 1, 16, 16), dtype=torch.uint8))
    assert f.shape == (10, 128) and f.dtype == torch.float32


def test_inference_does_not_depend_on_batch_size(tmp_path):
    t = _trainer(tmp_path)
    images = torch.randint(0, 255, (300, 1, 16, 16), dtype=torch.uint8)
    assert t.inference_batch_size == 128  # CPU: cache-sized batches (see Trainer)
    torch.testing.assert_close(t.features(images), t.features(images, batch_size=1000), atol=1e-5, rtol=1e-4)
    assert t.evaluate() == t.evaluate(batch_size=7)
