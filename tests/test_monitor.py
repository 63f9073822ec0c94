"""ACMMonitor: ACM of any model on a probe set through a forward hook, logged per reading."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import st_fast
from st_fast.cluster import acm
from st_fast.errors import UserError
from st_fast.models import build_model


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(F.adaptive_avg_pool2d(h, 1).flatten(1)))


def _probe(n=30):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    return (torch.rand(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1) * 0.5), y


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_restores_modes_and_leaves_no_hooks():
    model = _Net()
    model.train()
    model.bn.eval()  # a user's frozen BatchNorm stays frozen
    mon = st_fast.ACMMonitor(model, _probe(), embedding=None)
    with torch.enable_grad():
        mon.measure()
        assert torch.is_grad_enabled()
    assert model.training and model.conv.training and not model.bn.training and model.drop.training
    assert _hooks(model) == 0
    model.fc.register_forward_pre_hook(lambda m, a: 1 / 0)  # a forward that fails
    with pytest.raises(ZeroDivisionError):
        mon.measure()
    assert _hooks(model) == 1 and model.training and not model.bn.training


def test_penultimate_reading_is_the_engines_features():
    net = build_model("small-resnet", 3, 1, image_size=8)
    images = (torch.arange(30 * 64) % 251).to(torch.uint8).view(30, 1, 8, 8)
    labels = torch.arange(30) % 3
    net.eval()
    with torch.no_grad():
        feats = net.features(images.float().div(255))
    reading = st_fast.ACMMonitor(net, (images, labels), embedding=None).measure()
    assert reading.acm == acm(feats, labels, embedding=None)
    assert reading.values == [reading.acm] and reading.std == 0.0 and reading.impl == "none"


def test_named_layer_is_pooled_and_wrong_names_fail_early():
    model = _Net().eval()
    x, y = _probe()
    with torch.no_grad():
        pooled = F.adaptive_avg_pool2d(model.conv(x), 1).flatten(1)
    reading = st_fast.ACMMonitor(model, (x, y), layer="conv", embedding=None).measure()
    assert reading.acm == acm(pooled, y, embedding=None)
    with pytest.raises(UserError, match="not a module"):
        st_fast.ACMMonitor(model, (x, y), layer="nope")
    with pytest.raises(UserError, match="every"):
        st_fast.ACMMonitor(model, (x, y), every=0)


def test_every_and_the_logs(tmp_path):
    model = _Net()
    x, y = _probe()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    scalars = []

    class Writer:
        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

    mon = st_fast.ACMMonitor(model, loader, every=2, embedding="pca", log_to=tmp_path / "acm",
                             repeats=2, tensorboard=Writer())
    assert mon.step() is None
    first = mon.step()
    assert first is not None and mon.step() is None
    second = mon.step(step=40)
    assert [r["call"] for r in mon.rows] == [2, 4] and [r["step"] for r in mon.rows] == [2, 40]
    rows = json.loads((tmp_path / "acm" / "acm.json").read_text())
    assert [r["acm"] for r in rows] == [first.acm, second.acm] and len(rows[0]["acm_values"]) == 2
    assert (tmp_path / "acm" / "acm.csv").read_text().count("\n") == 3
    assert (tmp_path / "acm" / "acm.png").stat().st_size > 1000
    assert [t for t, _, _ in scalars] == ["acm/mean", "acm/std"] * 2


def test_lower_bound_needs_repeats_and_probe_errors():
    model = _Net()
    with pytest.raises(UserError, match="repeats >= 2"):
        st_fast.ACMMonitor(model, _probe(), decide_on="lower")
    with pytest.raises(UserError, match="probe"):
        st_fast.ACMMonitor(model, 3)
    with pytest.raises(UserError, match="images but"):
        st_fast.ACMMonitor(model, (torch.zeros(3, 1, 8, 8), torch.zeros(2)))
    with pytest.raises(UserError, match="no nn.Linear"):
        st_fast.ACMMonitor(nn.Sequential(nn.Conv2d(1, 2, 3)), _probe())


def test_tensorboard_events_when_it_imports(tmp_path):
    pytest.importorskip("torch.utils.tensorboard", exc_type=ImportError)
    mon = st_fast.ACMMonitor(_Net(), _probe(), embedding=None, log_to=tmp_path)
    mon.step()
    mon.writer.flush()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    off = st_fast.ACMMonitor(_Net(), _probe(), embedding=None, log_to=tmp_path / "b", tensorboard=False)
    assert off.writer is None
