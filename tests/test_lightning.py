"""The Lightning callbacks: a 2-epoch fit on the CPU (skipped only without Lightning) and the
one-line message when Lightning is missing."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .helpers import ROOT

pl = pytest.importorskip("lightning.pytorch")

from st_fast.integrations.lightning import ACMCallback, STCallback  # noqa: E402


class _Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        # three units (the top-level children): conv, bn, fc
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)))

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5 ** e)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    return torch.rand(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1) * 0.3, y


def test_two_epoch_fit_with_st_and_acm_callbacks(tmp_path):
    torch.manual_seed(0)
    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    st = STCallback(probe=(x, y), tau=1e-6, alpha=0.7, embedding=None)  # every check fires
    watch = ACMCallback(probe=(x, y), embedding=None, log_to=tmp_path / "acm")
    module = _Module()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[st, watch],
                         logger=pl.loggers.CSVLogger(tmp_path), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1)
    trainer.fit(module, loader)

    ctrl = st.controller
    assert [c["epoch"] for c in ctrl.policy.checks] == [1, 2] and ctrl.policy.rollbacks == 2
    opt = trainer.optimizers[0]
    assert [g["st_unit"] for g in opt.param_groups] == [0, 1, 2]
    # the epoch scheduler was split with the groups and still drives every group's lr
    assert [g["lr"] for g in opt.param_groups] == [0.1 * 0.5 ** 2] * 3
    # two rollbacks to the state at fit start: the weights are those of before training
    torch.manual_seed(0)
    before = _Module()
    for a, b in zip(module.state_dict().values(), before.state_dict().values()):
        assert torch.equal(a, b)
    rows = list(csv.DictReader(open(next(tmp_path.glob("lightning_logs/*/metrics.csv")))))
    logged = {k for r in rows for k, v in r.items() if v}
    assert {"st/acm", "st/c", "st/rolled_back", "acm"} <= logged
    assert len(watch.monitor.rows) == 2 and (tmp_path / "acm" / "acm.csv").exists()
    assert st.state_dict()["policy"]["rollbacks"] == 2


def test_retry_is_refused():
    from st_fast.errors import UserError

    with pytest.raises(UserError, match="consume"):
        STCallback(probe=_data(), rollback="retry")


def test_clear_message_without_lightning():
    code = (
        "import sys\n"
        "for m in ('lightning', 'lightning.pytorch', 'pytorch_lightning'): sys.modules[m] = None\n"
        "from st_fast.integrations.lightning import STCallback\n"
        "try:\n    STCallback(probe=None)\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("UserError") and "pip install 'st_fast[lightning]'" in out.stdout
    assert out.stdout.count("\n") == 1
