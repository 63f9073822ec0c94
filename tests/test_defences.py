"""Defences: each does what it claims (CPU), batched paths match their references, and each
trains end to end through Trainer."""


import pytest
import torch
import torch.nn.functional as F

import st_fast
from st_fast.config import STConfig, TrainConfig
from st_fast.defences import DEFENCES, resolve
from st_fast.defences.ablations import cutmix, cutout, gaussian_blur, gaussian_blur_reference, mixup
from st_fast.defences.at import attack_mode, pgd_linf
from st_fast.defences.iss import grayscale_uint8, jpeg_uint8, jpeg_uint8_reference
from st_fast.defences.ueraser import (
    UEraserPolicy,
    op_autocontrast,
    op_brightness,
    op_contrast,
    op_equalize,
    op_posterize,
    op_solarize,
    select_max_loss,
    trivial_augment,
)
from st_fast.errors import UserError
from st_fast.models import build_model

from .helpers import toy_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

EXPECTED = {"at", "iss-grayscale", "iss-jpeg", "ueraser", "ueraser-lite", "cutout", "mixup", "cutmix",
            "gaussian-blur", "weight-decay", "dropout"}


def smooth_images(n=8, c=3, size=16, seed=0):
    """Natural-ish uint8 images (smooth blobs): JPEG and blur behave as on real data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, size // 4, size // 4, generator=g)
    return (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) * 255).to(torch.uint8)


def tiny_model(channels=3, classes=4, size=16):
    torch.manual_seed(0)
    return build_model("small-resnet", classes, channels, image_size=size)


# ----------------------------------------------------------------------------- AT
def test_pgd_examples_lie_in_the_eps_ball_and_raise_the_loss():
    model = tiny_model(size=8)
    model.eval()
    x = smooth_images(8, size=8).float() / 255
    y = torch.arange(8) % 4
    eps = 8 / 255
    adv = pgd_linf(model, x, y, eps=eps, step_size=2 / 255, steps=10)
    assert adv.shape == x.shape
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y) + 1e-3
    assert all(p.grad is None for p in model.parameters())  # only the input was differentiated


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_at_restores_model_mode_and_keeps_batchnorm_statistics(mode):
    model = tiny_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = smooth_images(8).float() / 255
    with attack_mode(model, mode):
        assert model.training == (mode == "train")
        pgd_linf(model, x, torch.arange(8) % 4, steps=2)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    with attack_mode(model, mode):
        pass
    assert not model.training


# ----------------------------------------------------------------------------- ISS
def test_iss_grayscale_matches_torchvision_and_keeps_shape():
    from torchvision.transforms.v2 import functional as TF

    x = smooth_images(6)
    g = grayscale_uint8(x)
    assert g.shape == x.shape and g.dtype == torch.uint8
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    ref = TF.rgb_to_grayscale(x.float(), num_output_channels=3).round().to(torch.uint8)
    assert (g.int() - ref.int()).abs().max() <= 1
    one = x[:, :1].contiguous()
    assert torch.equal(grayscale_uint8(one), one)


@pytest.mark.parametrize("channels", [1, 3])
def test_iss_jpeg_degrades_and_matches_pillow(channels):
    x = smooth_images(6, c=channels)
    x = (x.int() + torch.randint(-20, 21, x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 255).to(torch.uint8)
    j = jpeg_uint8(x, quality=10)
    assert j.shape == x.shape and j.dtype == torch.uint8
    assert (j.float() - x.float()).abs().mean() > 2  # quality 10 loses detail
    assert (j.int() - jpeg_uint8_reference(x, 10).int()).abs().max() <= 1
    with pytest.raises(UserError):
        jpeg_uint8(x, quality=0)


def test_iss_prepare_returns_a_dataset_of_the_same_shape():
    ds = toy_dataset(16, channels=3)
    for name in ("iss-grayscale", "iss-jpeg"):
        out = resolve(name).prepare(ds, 0)
        assert out.images.shape == ds.images.shape and out.images.dtype == torch.uint8
        assert torch.equal(out.labels, ds.labels) and "iss" in out.meta
        assert not torch.equal(out.images, ds.images)


# ----------------------------------------------------------------------------- ablations
def test_mixup_and_cutmix_soft_targets_sum_to_one():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    y = torch.arange(8) % 4
    mx, my = mixup(x, y, 4, alpha=1.0)
    assert my.shape == (8, 4) and torch.allclose(my.sum(1), torch.ones(8))
    assert mx.shape == x.shape
    for _ in range(4):
        cx, cy = cutmix(x, y, 4, alpha=1.0, prob=1.0)
        assert cy.shape == (8, 4) and torch.allclose(cy.sum(1), torch.ones(8))
        # the weight of the own label equals the fraction of own pixels (where partners differ)
        own = (cx == x).all(1).float().mean((1, 2))
        kept = cy[torch.arange(8), y]
        assert (kept >= own - 1e-6).all()


def test_cutout_zeroes_one_square_patch():
    torch.manual_seed(0)
    x = torch.ones(32, 1, 16, 16)
    out = cutout(x, 8)
    zero = out[:, 0] == 0
    assert zero.any((1, 2)).all()  # every image lost a patch
    for z in zero:
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        box = z[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and z.sum() == box.numel()  # the zeros form one rectangle
        assert box.shape[0] <= 8 and box.shape[1] <= 8
    assert (out[:, 0] == 0).sum(dim=(1, 2)).float().mean() > 30  # mostly whole 8x8 squares


def test_batched_gaussian_blur_matches_torchvision():
    torch.manual_seed(0)
    x = torch.rand(5, 3, 12, 12)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0])
    for k in (3, 5):
        assert torch.allclose(gaussian_blur(x, sigma, k), gaussian_blur_reference(x, sigma, k), atol=1e-5)


def test_weight_decay_and_dropout_are_config_overrides():
    assert resolve("weight-decay").train_overrides["weight_decay"] > TrainConfig().weight_decay
    assert resolve("dropout").train_overrides["dropout"] > 0


# ----------------------------------------------------------------------------- UEraser
def test_ueraser_policy_changes_images_and_keeps_shape_and_range():
    torch.manual_seed(0)
    for c in (1, 3):
        x = smooth_images(32, c=c).float() / 255
        out = UEraserPolicy()(x)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1
        changed = (out - x).abs().flatten(1).amax(1) > 1e-3
        assert changed.float().mean() > 0.7  # most images altered (some draw only the identity)
    out = trivial_augment(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1


def test_trivial_augment_ops_match_torchvision():
    from torchvision.transforms.v2 import functional as TF

    x = smooth_images(4, c=3).float() / 255
    m = torch.tensor([-0.5, 0.3, 0.9, 0.0])
    for i in range(4):
        xi, f = x[i], 1 + float(m[i])
        assert torch.allclose(op_brightness(x[i:i + 1], m[i:i + 1])[0], TF.adjust_brightness(xi, f), atol=1e-6)
        assert torch.allclose(op_contrast(x[i:i + 1], m[i:i + 1])[0], TF.adjust_contrast(xi, f), atol=2e-3)
        t = 1 - abs(float(m[i]))
        assert torch.allclose(op_solarize(x[i:i + 1], m[i:i + 1])[0], TF.solarize(xi, t), atol=1e-6)
        assert torch.allclose(op_autocontrast(x[i:i + 1], m[i:i + 1])[0], TF.autocontrast(xi), atol=1e-5)
    u8 = (x * 255).round().to(torch.uint8)
    eq = op_equalize(u8.float() / 255, m)
    ref = torch.stack([TF.equalize(img) for img in u8]).float() / 255
    assert (eq - ref).abs().max() <= 1 / 255 + 1e-6
    bits = (8 - (m.abs() * 6).round()).int()
    post = op_posterize(x, m)
    ref = torch.stack([TF.posterize(img, int(b)) for img, b in zip(x, bits)])
    assert torch.allclose(post, ref, atol=1e-6)


def test_select_max_loss_picks_the_worst_copy():
    model = tiny_model(channels=1)
    model.train()
    x = smooth_images(6, c=1).float() / 255
    y = torch.arange(6) % 4
    copies = torch.cat([x, torch.rand_like(x), 1 - x])
    chosen = select_max_loss(model, copies, y, 3)
    with attack_mode(model, "train"), torch.no_grad():
        losses = F.cross_entropy(model(copies), y.repeat(3), reduction="none").view(3, 6)
    best = losses.argmax(0)
    for i in range(6):
        assert torch.equal(chosen[i], copies[best[i] * 6 + i])
    assert model.training


# ----------------------------------------------------------------------------- end to end
def run_with_defence(name, method="nt", channels=3):
    """Through the one entry point, as `st-fast train --defence NAME` runs it."""
    cfg = TrainConfig(arch="small-resnet", epochs=1, batch_size=8, lr=0.05, device="cpu", optimizer="torch",
                      crop_padding=2)
    train, test = toy_dataset(16, channels=channels, size=8), toy_dataset(8, channels=channels, size=8, seed=1)
    st = STConfig(method=method, acm_embedding=None, acm_per_class=2, log_acm=False, ft_epochs=1)
    result = st_fast.train(cfg, st, defence=name, progress=False, data=(train, test, None))
    for field, value in resolve(name).train_overrides.items():   # the defence's training defaults applied
        assert getattr(result.trainer.cfg, field) == value
    return result.trainer, result.history


def test_every_defence_is_registered():
    assert EXPECTED <= set(DEFENCES)
    for d in DEFENCES.values():
        assert d.summary and (d.prepare or d.batch_transform or d.train_overrides or d.select_on_val)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_defence_trains_end_to_end(name):
    trainer, hist = run_with_defence(name)
    assert len(hist) == 1 and 0 <= hist[0]["train_acc"] <= 1 and hist[0]["train_loss"] == hist[0]["train_loss"]
    assert 0 <= hist[0]["test_acc"] <= 1
    if name == "dropout":
        assert trainer.model.head.dropout.p == 0.5
    if name == "weight-decay":
        assert trainer.opt.optimizer.param_groups[0]["weight_decay"] == 5e-3


def test_defence_with_st_full_method():
    trainer, hist = run_with_defence("ueraser", method="st-full", channels=1)
    assert [r["phase"] for r in hist] == ["train", "finetune"]
