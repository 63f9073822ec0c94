"""ST engine: multipliers, rollbacks, retry, mid-epoch checks, BN freezing, triggers, fine-tune."""

import pytest
import torch

from st_fast.config import STConfig, TrainConfig
from st_fast.engine import EpochMeter, Trainer
from st_fast.errors import UserError
from st_fast.methods import METHODS
from st_fast.policy import trigger_fires
from st_fast.schedule import lr_multipliers, triggers_to_freeze

from .helpers import toy_dataset

CFG = TrainConfig(arch="small-resnet", epochs=3, batch_size=32, lr=0.05, device="cpu",
                  optimizer="torch", crop_padding=2)


def make(method="st", run_dir=None, acm_values=None, cfg=CFG, **st_kw):
    st = STConfig(method=method, tau=1.0, alpha=0.5, acm_embedding=None, acm_per_class=8,
                  ft_epochs=1, **st_kw)
    t = Trainer(cfg, st, toy_dataset(128), toy_dataset(32, seed=1), run_dir=run_dir, progress=False)
    if acm_values is not None:  # scripted ACM readings make every trigger deterministic
        seq = iter(acm_values)
        t.measure_acm = lambda: (next(seq), 0.0)
    return t


def params(model):
    return [p.detach().clone() for p in model.state_dict().values()]


def test_lr_multipliers_formula():
    assert lr_multipliers(0, 4, 0.3) == [1.0] * 4
    lam = lr_multipliers(2, 4, 0.5)  # 1 + l/4 - 1 for l = 1..4
    assert lam == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_multipliers(10, 4, 0.5) == [0.0] * 4
    assert all(a <= b for a, b in zip(lam, lam[1:]))  # shallow units slowest
    assert triggers_to_freeze(6, 0.5) == 4


def test_triggers_on_synthetic_sequences():
    assert trigger_fires("absolute", 2.0, 1.5, None, None)
    assert not trigger_fires("absolute", 1.0, 1.5, None, None)
    assert trigger_fires("relative", 3.1, 1.5, first=2.0, last_accepted=2.0)
    assert not trigger_fires("relative", 2.9, 1.5, first=2.0, last_accepted=2.0)
    assert not trigger_fires("rise", 5.0, 0.5, first=1.0, last_accepted=None)
    assert trigger_fires("rise", 2.6, 0.5, first=1.0, last_accepted=2.0)
    assert not trigger_fires("rise", 2.4, 0.5, first=1.0, last_accepted=2.0)


def test_rollback_restores_last_accepted_state_and_moves_the_front():
    t = make(acm_values=[0.5, 2.0, 0.5])  # epoch 2 triggers
    t.cfg.epochs = 2
    snaps = {}
    orig = t.run_epoch

    def spy(epoch):
        row = orig(epoch)
        snaps[epoch] = params(t.model)
        return row

    t.run_epoch = spy
    hist = t.fit()
    assert [r["rolled_back"] for r in hist] == [0, 1]
    assert t.c == 1 and t.rollbacks == 1
    for a, b in zip(snaps[0], snaps[1]):  # epoch 2 was undone: state equals the end of epoch 1
        assert torch.equal(a, b)
    assert hist[1]["multipliers"] == [1.0] * 6  # epoch 2 trained with c = 0 ...
    assert t.multipliers() == lr_multipliers(1, 6, 0.5)  # ... and the front moved after it


def test_consume_vs_retry_schedule():
    consume = make(acm_values=[2.0, 0.5, 0.5])
    consume.cfg.epochs = 2
    h = consume.fit()
    assert len(h) == 2 and h[0]["rolled_back"] == 1 and consume.epoch == 2

    retry = make(rollback="retry", max_retries=2, acm_values=[2.0, 2.0, 2.0, 0.5, 0.5])
    retry.cfg.epochs = 2
    h = retry.fit()
    # epoch 1 is rejected three times: two retries (the cap), then it is consumed
    assert h[0]["rolled_back"] == 3 and h[0]["retry_cap_reached"]
    assert h[0]["schedule_epoch"] == 1 and h[1]["schedule_epoch"] == 2
    assert h[0]["lr"] == h[0]["unit_lrs"][-1] == pytest.approx(CFG.lr)  # schedule did not advance


def test_check_every_restores_the_exact_state_of_the_last_accepted_check():
    t = make(check_every=2, acm_values=[0.5, 2.0] + [0.5] * 20)
    t.cfg.epochs = 1
    seen = []
    orig_check = t._check

    def spy(epoch, step):
        out = orig_check(epoch, step)
        seen.append((step, params(t.model), out["accepted"]))
        return out

    t._check = spy
    restored = []
    orig_restore = t._restore
    t._restore = lambda snap: (orig_restore(snap), restored.append(params(t.model)))
    t.fit()
    assert seen[0][2] and not seen[1][2]  # first check accepted, second rejected
    for a, b in zip(seen[0][1], restored[0]):
        assert torch.equal(a, b)
    assert len(t.checks) == len(t.loader) // 2 + (len(t.loader) % 2 > 0)


def test_freeze_bn_keeps_running_stats_of_frozen_units():
    t = make(freeze_bn=True)
    bn_stem = t.model.stem[1]
    before = bn_stem.running_mean.clone()
    scales = [0.0] + [1.0] * 5
    t.train_steps(0, 0.05, scales, 0, 2, EpochMeter("cpu"))
    assert torch.equal(bn_stem.running_mean, before)
    t2 = make(freeze_bn=False)
    b2 = t2.model.stem[1].running_mean.clone()
    t2.train_steps(0, 0.05, scales, 0, 2, EpochMeter("cpu"))
    assert not torch.equal(t2.model.stem[1].running_mean, b2)
    assert bn_stem.momentum == 0.1  # restored after the steps


def test_acm_es_stops_at_first_trigger_and_fine_tunes():
    t = make("acm-es-ft", acm_values=[0.5, 2.0] + [0.5] * 5)
    h = t.fit()
    assert [r["phase"] for r in h] == ["train", "train", "finetune"]
    assert "early stop" in t.stop_reason


def test_acm_es_cg_ft_differs_from_st_full_only_in_the_stop():
    t = make("acm-es-cg-ft", acm_values=[0.5, 2.0] + [0.5] * 5)
    h = t.fit()
    assert t.cfg.cg and [r["phase"] for r in h] == ["train", "train", "finetune"]
    assert all(r["multipliers"] == [1.0] * 6 for r in h)


def test_nt_cg_ft_and_st_full_run_the_same_finetune():
    a = make("nt-cg-ft", acm_values=[0.5] * 10)
    b = make("st-full", acm_values=[0.5] * 10)
    ha, hb = a.fit(), b.fit()
    fa = [(r["lr"], r["multipliers"]) for r in ha if r["phase"] == "finetune"]
    fb = [(r["lr"], r["multipliers"]) for r in hb if r["phase"] == "finetune"]
    assert fa == fb and len(fa) == 1
    assert a.augment is not None and b.augment is not None and a.cfg.cg and b.cfg.cg


def test_st_resume_matches_uninterrupted(tmp_path):
    acm = [0.5, 2.0, 0.5, 0.5, 0.5, 0.5]
    full = make(run_dir=tmp_path / "a", acm_values=list(acm)).fit()
    part = make(run_dir=tmp_path / "b", acm_values=list(acm))
    part.fit(stop_after=2)
    resumed = make(run_dir=tmp_path / "b", acm_values=acm[2:])
    assert resumed.try_resume() and resumed.c == 1
    hist = resumed.fit()
    assert [r["train_loss"] for r in hist] == pytest.approx([r["train_loss"] for r in full], rel=1e-5)
    assert [r["rolled_back"] for r in hist] == [r["rolled_back"] for r in full]


def test_bad_st_config():
    with pytest.raises(UserError, match="method must be one of nt, "):
        STConfig(method="magic")
    with pytest.raises(UserError, match="trigger"):
        STConfig(trigger="sometimes")
    with pytest.raises(UserError, match="acm-layer"):
        make(acm_layer="block99")
    assert {"nt", "nt-cg", "st", "st-cg", "st-full", "nt-cg-ft", "acm-es", "acm-es-ft"} <= set(METHODS)


def test_real_acm_is_measured_and_logged(tmp_path):
    t = make("nt", run_dir=tmp_path)
    t.cfg.epochs = 1
    h = t.fit()
    assert h[0]["acm"] is not None and h[0]["acm"] > 0
    assert (tmp_path / "plots" / "acm.png").exists() and (tmp_path / "plots" / "multipliers.png").exists()
    assert (tmp_path / "checks.csv").exists() and (tmp_path / "summary.json").exists()
    # each check says how ACM embedded: "exact/cpp-avx2", "exact/torch", ..., "pca", "none"
    assert t.checks and all(c["acm_impl"] == "none" for c in t.checks)  # make(): no embedding


def test_a_snapshot_survives_being_restored_and_trained_on():
    """Two rollbacks to one snapshot both return to the accepted state (momentum included)."""
    t = make("nt", cfg=CFG)        # no trigger: the first epoch's momentum is in the snapshot
    t.fit(stop_after=1)
    snap = t.snapshot()
    before = [v.clone() for v in snap["optimizer"]["state"].values() for v in v.values()
              if isinstance(v, torch.Tensor)]
    t._restore(snap)
    t.train_epoch(1, 0.05, t.multipliers())       # steps after the rollback
    after = [v for v in snap["optimizer"]["state"].values() for v in v.values() if isinstance(v, torch.Tensor)]
    assert before and all(torch.equal(a, b) for a, b in zip(before, after))
