"""Adaptive attacks (issue 18 item 4): em-t, em-class-t, rem-t (CG inside the EOT) and em-a
(EM against an ST-trained surrogate) on a tiny set: shapes, bounds, determinism by seed."""

from __future__ import annotations

import pytest
import torch

from st_fast import attacks
from st_fast.attacks.cg_eot import apply_cg
from st_fast.augment import ColorGray

from .helpers import toy_dataset

TINY = {"arch": "small-resnet", "device": "cpu", "batch_size": 16}
BUDGET = {
    "em-t": {"steps": 2, "max_rounds": 2, "train_steps": 2},
    "em-class-t": {"steps": 1, "max_rounds": 2, "train_steps": 2},
    "rem-t": {"steps": 1, "samples": 1, "adv_steps": 1, "train_steps": 2},
    "em-a": {"steps": 1, "max_rounds": 2, "train_steps": 2, "acm_per_class": 4, "acm_embedding": "pca"},
}


@pytest.fixture(scope="module")
def rgb():
    return toy_dataset(n=24, classes=3, channels=3, size=8)


@pytest.mark.parametrize("channels", [1, 3])
def test_differentiable_cg_equals_colorgray(channels):
    cg = ColorGray(backend="torch", seed=4)
    x = torch.rand(40, channels, 6, 6)
    params = cg.sample_params(40)
    d = torch.zeros_like(x, requires_grad=True)
    out = apply_cg((x + d).clamp(0, 1), params)
    assert torch.allclose(out, cg.apply(x, params), atol=1e-5)
    out.square().sum().backward()
    assert torch.isfinite(d.grad).all() and float(d.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", sorted(BUDGET))
def test_adaptive_attack_shapes_bounds_and_seed(name, rgb, one_thread):
    a = attacks.generate(name, rgb, seed=0, **TINY, **BUDGET[name])
    assert a.images.shape == rgb.images.shape and torch.equal(a.indices, torch.arange(len(rgb)))
    change = a.perturbation(rgb.images)
    assert float(change.abs().max()) <= 8 / 255 + 1e-6 and float(change.abs().max()) > 0
    assert a.meta["norm"] == "linf" and a.meta["params"]["p_jitter" if name != "em-a" else "tau"] in (0.8, 3.5)
    b = attacks.generate(name, rgb, seed=0, **TINY, **BUDGET[name])
    assert torch.equal(a.images, b.images)
    c = attacks.generate(name, rgb, seed=1, **TINY, **BUDGET[name])
    assert not torch.equal(a.images, c.images)


def test_em_t_noise_depends_on_cg(rgb, one_thread):
    """CG is really inside the loop: em-t with both probabilities 0 (CG is the identity) makes
    other noise than with the defaults (jitter 0.8, gray 0.2), all else equal."""
    kw = {**TINY, **BUDGET["em-t"]}
    off = attacks.generate("em-t", rgb, seed=0, p_jitter=0.0, p_gray=0.0, **kw)
    on = attacks.generate("em-t", rgb, seed=0, **kw)
    assert not torch.equal(off.images, on.images)


def test_em_a_rolls_back_when_acm_triggers(rgb, one_thread):
    low = attacks.generate("em-a", rgb, seed=0, tau=1e-6, **TINY, **BUDGET["em-a"])
    st = low.meta["info"]["st"]
    assert st["rollbacks"] == 2 and st["c"] == 2 and len(st["acm"]) == 2
    high = attacks.generate("em-a", rgb, seed=0, tau=1e6, **TINY, **BUDGET["em-a"])
    assert high.meta["info"]["st"]["rollbacks"] == 0
    assert not torch.equal(low.images, high.images)
