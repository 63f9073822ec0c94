"""d-vae: the two-stage rate-constrained VAE purification (st_fast/defences/dvae.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import st_fast
from st_fast.config import STConfig, TrainConfig
from st_fast.data import ImageDataset
from st_fast.defences import DEFENCES
from st_fast.defences.dvae import (
    DEFAULTS,
    PUBLISHED,
    DVAESettings,
    dvae_purification,
    purify,
    train_dvae,
)
from st_fast.errors import UserError

from .helpers import toy_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py

# few, small steps: a test's D-VAE trains in about a second per stage on 64 images of 16x16
FAST = DVAESettings(epochs=2, batch_size=16)


def with_images(images: torch.Tensor, classes=4) -> ImageDataset:
    labels = torch.arange(len(images)) % classes
    return ImageDataset(images, labels, [f"c{i}" for i in range(classes)], (0.5,), (0.25,), name="toy")


def smooth_images(n=64, classes=4, size=16, seed=0) -> torch.Tensor:
    """One bright Gaussian blob per image, its row set by the class: low-frequency content."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    r = torch.arange(size).float()
    cy = (labels.float() * 3 + 3).view(-1, 1, 1) + torch.rand(n, 1, 1, generator=g) * 2
    cx = torch.rand(n, 1, 1, generator=g) * 6 + 5
    blob = torch.exp(-((r.view(1, -1, 1) - cy) ** 2 + (r.view(1, 1, -1) - cx) ** 2) / 18)
    return (40 + 170 * blob).unsqueeze(1)           # float, 40..210: no clipping at +-24


def test_published_and_cpu_defaults_pinned():
    assert dataclasses.asdict(PUBLISHED) == {
        "width": 64, "epochs": 60, "latent": 256, "lr": 5e-3, "batch_size": 128, "grad_clip": 5.0,
        "kl_targets": (1.0, 3.0), "kl_weight": 0.01, "perturbation_floor": 0.002,
        "perturbation_penalty_from": 11 / 60}
    # only the width and the epochs are scaled down for the CPU
    assert DEFAULTS == dataclasses.replace(PUBLISHED, width=8, epochs=5)
    assert DEFENCES["d-vae"].method == "nt" and DEFENCES["d-vae"].prepare is not None


def test_runs_changes_the_images_and_is_deterministic_by_seed():
    ds = toy_dataset(n=32, classes=4, size=16)
    before = torch.get_rng_state()
    out = dvae_purification(FAST)(ds, seed=0)
    assert torch.equal(torch.get_rng_state(), before)            # the global RNG is left as it was
    assert out.images.dtype == torch.uint8 and out.images.shape == ds.images.shape
    assert torch.equal(out.labels, ds.labels)
    assert (out.images != ds.images).float().mean() > 0.5        # most pixels replaced
    assert torch.equal(dvae_purification(FAST)(ds, seed=0).images, out.images)
    assert not torch.equal(dvae_purification(FAST)(ds, seed=1).images, out.images)
    stages = out.meta["dvae"]["stages"]
    assert [s["kl_target"] for s in stages] == [1.0, 3.0] and len(stages[0]["train_history"]) == 2


def test_rate_constraint_holds_the_kl_near_its_target():
    ds = toy_dataset(n=64, classes=4, size=16)
    x, y = ds.images.float() / 255, ds.labels
    settings = DVAESettings(epochs=10, batch_size=16)
    measured = {}
    for weight in (settings.kl_weight, 1e-6):        # the published weight, and (nearly) none
        s = dataclasses.replace(settings, kl_weight=weight)
        model, history = train_dvae(x, y, 4, 3.0, s, seed=0)
        measured[weight] = purify(model, x, y, reconstruct=True, seed=0)[1]
        assert history[0]["kl"] > 4.5                 # it starts well above the target ...
    # ... and ends near it: the constraint max(KL, target) only pulls down, so KL settles at or
    # a little below the target (2.61 here; 2.24-2.61 over seeds 0-2, measured); the same training
    # without the constraint ends near 150
    assert 0.7 * 3.0 < measured[settings.kl_weight] < 1.1 * 3.0
    assert measured[1e-6] > 30.0


def test_planted_high_frequency_perturbation_is_attenuated_more_than_the_content():
    clean = smooth_images()
    g = torch.Generator().manual_seed(1)
    delta = (torch.randint(0, 2, clean.shape, generator=g).float() * 2 - 1) * 24   # +-24/255 per pixel
    poisoned = (clean + delta).round().to(torch.uint8)
    out = dvae_purification(DVAESettings(epochs=8, batch_size=16))(with_images(poisoned), seed=0)
    out = out.images.float()

    def kept(part: torch.Tensor, of: torch.Tensor) -> float:
        """Least-squares coefficient of ``of`` in ``part``: 1 = kept whole, 0 = removed."""
        return float((part * of).sum() / (of * of).sum())

    perturbation_kept = kept(out - clean, delta)
    content_kept = kept(out - out.mean(), clean - clean.mean())
    assert perturbation_kept < 0.25 and content_kept > 0.5, (perturbation_kept, content_kept)
    assert kept(poisoned.float() - clean, delta) > 0.95         # the measure sees the planted noise


def test_bad_input_is_one_clear_user_error():
    empty = with_images(torch.zeros(0, 1, 16, 16, dtype=torch.uint8))
    with pytest.raises(UserError, match="at least 2 classes"):
        dvae_purification(FAST)(empty, seed=0)
    one_class = toy_dataset(n=32, classes=4, size=16)
    one_class = ImageDataset(one_class.images, torch.zeros(32, dtype=torch.int64), one_class.classes,
                             (0.5,), (0.25,), name="toy")
    with pytest.raises(UserError, match=r"at least 2 classes \(got 32 images, 1 classes\)"):
        dvae_purification(FAST)(one_class, seed=0)
    with pytest.raises(UserError, match="width"):
        DVAESettings(width=7)
    with pytest.raises(UserError, match="kl_targets"):
        DVAESettings(kl_targets=(1.0, -3.0))
    with pytest.raises(UserError, match="lr"):
        DVAESettings(lr=float("nan"))


def test_d_vae_trains_end_to_end_through_the_entry_point():
    cfg = TrainConfig(arch="small-resnet", epochs=1, batch_size=8, lr=0.05, device="cpu", optimizer="torch",
                      crop_padding=2)
    train, test = toy_dataset(32, size=8), toy_dataset(8, size=8, seed=1)
    st = STConfig(method="nt", acm_embedding=None, acm_per_class=2, log_acm=False)
    result = st_fast.train(cfg, st, defence="d-vae", progress=False, data=(train, test, None))
    trained_on = result.trainer.train_set
    assert trained_on.images.shape == train.images.shape and not torch.equal(trained_on.images, train.images)
    assert "dvae" in trained_on.meta and len(result.history) == 1
