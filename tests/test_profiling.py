"""profile_training: a Chrome trace and an operator summary, and the run left as it was."""

import json

import pytest
import torch

from st_fast.config import STConfig, TrainConfig
from st_fast.engine import Trainer
from st_fast.errors import UserError
from st_fast.profiling import SUMMARY, TRACE, profile_training

from .helpers import toy_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def make_trainer():
    cfg = TrainConfig(arch="small-resnet", epochs=1, batch_size=8, lr=0.05, device="cpu", optimizer="torch",
                      crop_padding=1)
    st = STConfig(method="st", acm_embedding=None, acm_per_class=2, log_acm=False)
    return Trainer(cfg, st, toy_dataset(32, size=8), toy_dataset(8, size=8, seed=1), progress=False)


def test_profile_writes_trace_and_summary_and_restores_state(tmp_path):
    trainer = make_trainer()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    rng = torch.get_rng_state()
    out = profile_training(trainer, steps=2, out_dir=tmp_path / "prof", warmup=1)
    trace = json.loads((tmp_path / "prof" / TRACE).read_text())
    assert trace["traceEvents"] and any("st_fast.train_steps" in e.get("name", "") for e in trace["traceEvents"])
    text = (tmp_path / "prof" / SUMMARY).read_text()
    assert "top 25 operators by self CPU time" in text and "aten::" in text and "img/s" in text
    assert out["steps"] == 2 and out["images_per_s"] > 0 and out["top_ops"]
    assert all(len(row) == 4 for row in out["top_ops"])
    for k, v in trainer.model.state_dict().items():  # profiling did not change the run
        assert torch.equal(v, before[k]), k
    assert torch.equal(torch.get_rng_state(), rng)
    assert trainer.progress is False


def test_profile_clips_steps_to_one_epoch_and_rejects_bad_counts(tmp_path):
    trainer = make_trainer()   # 4 batches
    out = profile_training(trainer, steps=100, out_dir=tmp_path, warmup=1, restore=False)
    assert out["steps"] == 3
    with pytest.raises(UserError):
        profile_training(trainer, steps=0, out_dir=tmp_path)


@pytest.mark.gpu
def test_profile_on_cuda_lists_cuda_time(tmp_path):
    cfg = TrainConfig(arch="small-resnet", epochs=1, batch_size=8, device="cuda", crop_padding=1)
    st = STConfig(method="nt", acm_embedding=None, acm_per_class=2, log_acm=False)
    trainer = Trainer(cfg, st, toy_dataset(32, size=8), None, progress=False)
    profile_training(trainer, steps=2, out_dir=tmp_path, warmup=1)
    assert "by self CUDA time" in (tmp_path / SUMMARY).read_text()
