"""STController: ST inside a plain PyTorch loop, checked bit for bit against st_fast.train."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import st_fast
from st_fast.config import STConfig, TrainConfig
from st_fast.controller import STController
from st_fast.data import DeviceLoader
from st_fast.errors import UserError
from st_fast.files import load_torch_file
from st_fast.models import build_model
from st_fast.schedule import cosine_lr
from st_fast.utils import seed_everything

from .helpers import toy_dataset

EPOCHS, BATCH, SEED, LR = 3, 32, 0, 0.1


def _engine_run(train, test, **st):
    cfg = TrainConfig(dataset="toy", arch="small-resnet", epochs=EPOCHS, batch_size=BATCH, lr=LR,
                      seed=SEED, device="cpu", optimizer="torch", amp="off")
    return st_fast.train(cfg, STConfig(method="st", acm_embedding=None, **st), data=(train, test, None),
                         progress=False)


def _accuracy(model, test) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(test), 128):
            pred = model(test.images[i:i + 128].float().div_(255)).argmax(1)
            correct += int((pred == test.labels[i:i + 128]).sum())
    return correct / len(test)


def _plain_loop(train, test, probe_idx, *, epochs=EPOCHS, stop_after=None, state=None, **st):
    """The user's loop: their model, SGD over model.parameters(), their lr schedule, the
    controller; ``stop_after`` epochs -> (model, optimizer, controller) to checkpoint."""
    seed_everything(SEED)
    model = build_model("small-resnet", train.num_classes, train.channels, mean=train.mean,
                        std=train.std, image_size=train.image_size[0])
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    ctrl = STController(model, opt, probe=(train.images[probe_idx], train.labels[probe_idx]),
                        embedding=None, seed=SEED, **st)
    loader = DeviceLoader(train.images, train.labels, BATCH, shuffle=True, drop_last=True,
                          crop_padding=4, flip=True, seed=SEED)
    start = 0
    if state is not None:  # resume from a checkpoint written mid-run
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ctrl.load_state_dict(state["controller"])
        start = ctrl.epoch
    multipliers, reports = [], []
    epoch = start
    while epoch < epochs:
        for group in opt.param_groups:           # the user's own schedule: cosine per epoch
            group["lr"] = cosine_lr(LR, epoch, epochs)
        multipliers.append(ctrl.multipliers)
        model.train()
        for x, y in loader.batches(epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        report = ctrl.end_epoch()
        reports.append(report)
        if report.stop:
            break
        if not report.retry:
            epoch += 1
        if stop_after is not None and epoch == stop_after:
            return model, opt, ctrl
    return model, ctrl, multipliers, reports


def _check_fields(checks):
    return [(c["epoch"], c["step"], c["acm"], c["triggered"], c["accepted"], c["c"]) for c in checks]


@pytest.fixture(scope="module")
def data():
    return toy_dataset(256, seed=0), toy_dataset(64, seed=1, split="test")


@pytest.mark.parametrize("rollback", ["consume", "retry"])
def test_plain_loop_is_the_engine_bit_for_bit(data, one_thread, rollback):
    train, test = data
    # tau between the readings of this run: the first check passes, later ones fire
    st = {"tau": 17.0, "alpha": 0.4, "rollback": rollback, "max_retries": 1}
    result = _engine_run(train, test, **st)
    model, ctrl, multipliers, reports = _plain_loop(train, test, result.trainer.acm_idx, **st)

    engine_checks = result.checks
    assert sum(not c["accepted"] for c in engine_checks) >= 1, "the trigger must fire at least once"
    assert sum(c["accepted"] for c in engine_checks) >= 1
    assert _check_fields(ctrl.policy.checks) == _check_fields(engine_checks)
    assert [r.acm for r in reports] == [c["acm"] for c in engine_checks]
    engine_rows = [r for r in result.history if r["phase"] == "train"]
    assert [r["multipliers"] for r in engine_rows] == [multipliers[i] for i in _first_try(reports)]
    assert ctrl.policy.rollbacks == result.summary["rollbacks"] and ctrl.policy.c == result.summary["c"]
    for (name, a), b in zip(result.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert _accuracy(model, test) == result.final_test_acc


def _first_try(reports):
    """Index of each epoch's first attempt among the loop's attempts (retries repeat an epoch)."""
    out, new_epoch = [], True
    for i, r in enumerate(reports):
        if new_epoch:
            out.append(i)
        new_epoch = not r.retry
    return out


def test_state_dict_round_trip_mid_run_resumes_identically(data, one_thread, tmp_path):
    train, test = data
    st = {"tau": 17.0, "alpha": 0.4}
    idx = torch.arange(256)
    full_model, full_ctrl, _, full_reports = _plain_loop(train, test, idx, **st)
    model, opt, ctrl = _plain_loop(train, test, idx, stop_after=2, **st)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "controller": ctrl.state_dict()}, tmp_path / "ckpt.pt")
    state = load_torch_file(tmp_path / "ckpt.pt", "test checkpoint")  # weights_only
    resumed_model, resumed_ctrl, _, _ = _plain_loop(train, test, idx, state=state, **st)
    assert _check_fields(resumed_ctrl.policy.checks) == _check_fields(full_ctrl.policy.checks)
    assert any(not c["accepted"] for c in full_ctrl.policy.checks)
    for a, b in zip(full_model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 1).flatten(1))


def _probe(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 3


@pytest.mark.parametrize("make_sched", [
    lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s)),
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=20),
], ids=["lambdalr", "onecycle"])
def test_adamw_with_scheduler_gets_multipliers_on_top(make_sched):
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    ctrl = STController(model, opt, probe=_probe(), tau=1e-6, alpha=0.7, embedding=None)
    assert len(opt.param_groups) == 3 and [g["st_unit"] for g in opt.param_groups] == [0, 1, 2]
    sched = make_sched(opt)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append([g["lr"] for g in o.param_groups]))
    x, y = _probe(seed=1)
    for _ in range(3):  # multipliers lambda(c): 1, 1, 1; .63, .97, 1; 0, .27, .6 (every check fires)
        for _ in range(3):
            scheduled = [g["lr"] for g in opt.param_groups]
            frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            scales = ctrl.multipliers
            assert seen[-1] == [lr * scales[g["st_unit"]] for lr, g in zip(scheduled, opt.param_groups)]
            assert [g["lr"] for g in opt.param_groups] == scheduled  # the scheduler's value is back
            for n, p in model.named_parameters():
                unit = {"conv": 0, "bn": 1, "fc": 2}[n.split(".")[0]]
                assert torch.equal(p, frozen[n]) == (scales[unit] == 0), n
            sched.step()
        report = ctrl.end_epoch()
        assert report.decision == "rollback" and report.multipliers == ctrl.multipliers
    assert seen[-1][0] == 0 and seen[-1][2] > 0  # shallow units slowed first


def test_rollback_restores_model_optimizer_bn_and_rng():
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = _probe(seed=2)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctrl = STController(model, opt, probe=_probe(), tau=1e-6, embedding=None)
    momentum = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    rng = torch.get_rng_state()
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    torch.rand(5)
    assert not torch.equal(model.bn.running_mean, before["bn.running_mean"])
    report = ctrl.end_epoch()
    assert report.decision == "rollback" and report.c == 1 and report.triggered
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for p in model.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], momentum[id(p)])
    assert torch.equal(torch.get_rng_state(), rng)
    # a second rollback returns to the same state (training did not write into the snapshot)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    ctrl.end_epoch()
    for p in model.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], momentum[id(p)])


def test_units_must_cover_every_parameter_once():
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match=r"not in any unit: fc\.weight, fc\.bias"):
        STController(model, opt, units=[model.conv, model.bn], probe=_probe())
    with pytest.raises(UserError, match=r"more than one unit: conv\.weight, conv\.bias"):
        STController(model, opt, units=[model.conv, model.conv, model.bn, model.fc], probe=_probe())
    with pytest.raises(UserError, match="unit index"):
        STController(model, opt, units=lambda name: None, probe=_probe())
    with pytest.raises(UserError, match=r"unit\(s\) \[1\] have no parameters"):
        STController(model, opt, units=lambda name: 0 if name.startswith("conv") else 2, probe=_probe())
    ctrl = STController(model, opt, units=lambda name: 0 if name.startswith(("conv", "bn")) else 1,
                        probe=_probe(), embedding=None)
    assert ctrl.num_units == 2 and [len(g["params"]) for g in opt.param_groups] == [4, 2]


def test_default_units_are_top_level_children_and_model_units():
    model = _Net()
    ctrl = STController(model, torch.optim.SGD(model.parameters(), lr=0.1), probe=_probe(), embedding=None)
    assert ctrl.unit_names == ["conv", "bn", "fc"]
    net = build_model("small-resnet", 3, 1, image_size=8)
    ctrl = STController(net, torch.optim.SGD(net.parameters(), lr=0.1), probe=_probe(), embedding=None)
    assert ctrl.num_units == len(net.units())


def test_split_after_a_scheduler_needs_it_passed():
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5 ** e)
    with pytest.raises(UserError, match="scheduler is already attached"):
        STController(model, opt, probe=_probe())
    STController(model, opt, probe=_probe(), embedding=None, schedulers=[sched])
    opt.step()  # no gradients: nothing moves
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.05] * 3


def test_bad_settings_are_one_line_errors():
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match="probe="):
        STController(model, opt)
    with pytest.raises(UserError, match="tau"):
        STController(model, opt, probe=_probe(), tau=-1)
    with pytest.raises(UserError, match="repeats >= 2"):
        STController(model, opt, probe=_probe(), decide_on="lower")
    with pytest.raises(UserError, match="never acts"):
        STController(model, opt, probe=_probe(), method="nt")


def test_lower_bound_decision_uses_the_spread():
    from st_fast.monitor import decision_value

    assert decision_value(3.6, 0.1, 3, "mean", 0.95) == 3.6
    low = decision_value(3.6, 0.1, 3, "lower", 0.95)
    assert math.isclose(low, 3.6 - 2.919986 * 0.1 / math.sqrt(3), rel_tol=1e-6) and low < 3.5


class _NeverIterate:
    def __iter__(self):
        raise AssertionError("rank 1 must not measure ACM")


def _ddp_worker(rank, world, port, results):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = _Net()
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        probe = _probe() if rank == 0 else _NeverIterate()
        ctrl = STController(ddp, opt, probe=probe, tau=1e-6, embedding=None)
        x, y = _probe(seed=3 + rank)  # each rank its own shard
        decisions = []
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
            r = ctrl.end_epoch()
            decisions.append((r.decision, r.c, r.acm))
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        results[rank] = {"decisions": decisions, "params": flat, "start": start}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_rank0_decides_and_every_rank_rolls_back():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, port, results), nprocs=2, join=True)
        r0, r1 = results[0], results[1]
    assert r0["decisions"] == r1["decisions"] and [d[0] for d in r0["decisions"]] == ["rollback"] * 2
    assert torch.equal(r0["params"], r1["params"]) and torch.equal(r0["params"], r0["start"])


def test_sub_epoch_checks_roll_back_to_the_last_accepted_check(monkeypatch):
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctrl = STController(model, opt, probe=_probe(), tau=1.0, embedding=None)
    readings = iter([0.5, 2.0, 0.5])  # accept after step 2, reject after step 4, accept at the end
    monkeypatch.setattr(ctrl, "measure", lambda: _reading(next(readings)))
    x, y = _probe(seed=4)
    states = []
    for step in range(1, 7):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step == 2:
            assert ctrl.check().decision == "accept"
            states.append({k: v.clone() for k, v in model.state_dict().items()})
        if step == 4:
            report = ctrl.check()
            assert report.decision == "rollback" and report.step == 4 and report.c == 1
            for k, v in model.state_dict().items():
                assert torch.equal(v, states[0][k]), k
    report = ctrl.end_epoch()
    assert (report.decision, report.step, report.epoch) == ("accept", 6, 1) and ctrl.steps_in_epoch == 0
    assert [(c["step"], c["accepted"]) for c in ctrl.policy.checks] == [(2, True), (4, False), (6, True)]


def _reading(value):
    from st_fast.monitor import ACMReading

    return ACMReading(value, 0.0, [value], value, 0.0, "-")
