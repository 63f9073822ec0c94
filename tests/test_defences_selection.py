"""ortho-proj (orthogonal projection) and val-es / cg-val-es (early stopping on clean images)."""

from __future__ import annotations

import pytest
import torch

import st_fast
from st_fast.config import STConfig, TrainConfig
from st_fast.data import ImageDataset
from st_fast.defences import DEFENCES
from st_fast.defences.ortho_proj import DEFAULTS, fit_linear, orthogonal_projection, project_out
from st_fast.errors import UserError

from .helpers import toy_dataset


def planted(n=400, classes=4, size=8, seed=0) -> ImageDataset:
    """Label-independent noise images plus one strong additive pattern per class: a class-wise
    linear shortcut, as class-wise EM or SP plant."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    patterns = (torch.rand(classes, 1, size, size, generator=g) * 2 - 1) * 60
    noise = torch.rand(n, 1, size, size, generator=g) * 120 + 60
    images = (noise + patterns[labels]).clamp(0, 255).to(torch.uint8)
    return ImageDataset(images, labels, [f"c{i}" for i in range(classes)], (0.5,), (0.25,), name="toy")


def nearest_class_mean_accuracy(ds: ImageDataset) -> float:
    x = ds.images.flatten(1).float()
    means = torch.stack([x[ds.labels == k].mean(0) for k in range(ds.num_classes)])
    return float(((x[:, None] - means[None]).norm(dim=2).argmin(1) == ds.labels).float().mean())


def test_published_defaults_pinned():
    assert DEFAULTS == {"epochs": 20, "lr": 0.1, "batch_size": 1024}
    assert {"ortho-proj", "val-es", "cg-val-es"} <= set(DEFENCES)
    assert DEFENCES["val-es"].method == "nt" and DEFENCES["cg-val-es"].method == "nt-cg"


def test_projection_is_orthogonal_to_the_weights():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(50, 64, generator=g), torch.randn(5, 64, generator=g)
    out = project_out(x, w)
    assert (out @ w.t()).abs().max() < 1e-4
    assert torch.allclose(project_out(out, w), out, atol=1e-5)   # a projection: idempotent


def test_ortho_proj_removes_a_planted_class_pattern():
    ds = planted()
    assert nearest_class_mean_accuracy(ds) > 0.95            # the shortcut is there
    out = orthogonal_projection()(ds, seed=0)
    assert out.images.dtype == torch.uint8 and out.images.shape == ds.images.shape
    assert torch.equal(out.labels, ds.labels)
    assert nearest_class_mean_accuracy(out) < 0.45           # ... and gone (chance: 0.25)
    assert torch.equal(orthogonal_projection()(ds, seed=0).images, out.images)   # deterministic


def test_ortho_proj_linear_model_learns_the_pattern_and_refuses_one_class():
    ds = planted()
    w = fit_linear(ds.images, ds.labels, ds.num_classes, epochs=5)
    logits = ds.images.flatten(1).float().div(255) @ w.t()
    assert float((logits.argmax(1) == ds.labels).float().mean()) > 0.9
    with pytest.raises(UserError, match="at least 2 classes"):
        fit_linear(ds.images[:5], torch.zeros(5, dtype=torch.long), 4)


CFG = TrainConfig(arch="small-resnet", epochs=4, batch_size=32, lr=0.05, device="cpu", optimizer="torch",
                  crop_padding=2)
ST = STConfig(acm_embedding=None, acm_per_class=4, log_acm=False)


def test_val_es_keeps_the_epoch_the_validation_images_pick():
    train, val = toy_dataset(128), toy_dataset(20, seed=3)
    # no test set at all: the choice cannot depend on it
    r = st_fast.train(CFG, ST, defence="val-es", progress=False, data=(train, None, val))
    vals = [row["val_acc"] for row in r.history]
    first_best = vals.index(max(vals)) + 1
    assert r.summary["selected_epoch"] == first_best and r.summary["selected_val_acc"] == max(vals)
    assert r.val_acc == max(vals)                           # the run ends with that epoch's weights
    with_test = st_fast.train(CFG, ST, defence="val-es", progress=False,
                              data=(train, toy_dataset(32, seed=1), val))
    assert with_test.summary["selected_epoch"] == first_best
    assert with_test.final_test_acc == with_test.history[first_best - 1]["test_acc"]


def test_val_es_ties_go_to_the_earliest_epoch():
    train = toy_dataset(128)
    one = toy_dataset(4, classes=4, seed=9)    # 4 images: accuracies in steps of 0.25, ties likely
    r = st_fast.train(CFG, ST, defence="val-es", progress=False, data=(train, None, one))
    vals = [row["val_acc"] for row in r.history]
    assert r.summary["selected_epoch"] == vals.index(max(vals)) + 1


def test_cg_val_es_trains_nt_cg_and_val_es_needs_validation_images():
    train, val = toy_dataset(64), toy_dataset(8, seed=3)
    r = st_fast.train(TrainConfig(**{**CFG.to_dict(), "epochs": 1}), ST, defence="cg-val-es",
                      progress=False, data=(train, None, val))
    assert r.trainer.method == "nt-cg" and r.trainer.cfg.cg
    with pytest.raises(UserError, match="val_size"):
        st_fast.train(CFG, ST, defence="val-es", progress=False, data=(train, None, None))
