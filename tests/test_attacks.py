"""Model-free attacks (SP, OPS, AR), protection ratio, the poisoned-set file and imports."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from st_fast import attacks
from st_fast.attacks.autoregressive import (
    ar_generate,
    ar_generate_reference,
    random_ar_coefficients,
)
from st_fast.attacks.base import quantize, realised_norms, select_ratio, subset_indices
from st_fast.data import ImageDataset
from st_fast.errors import UserError


def toy(n=120, classes=4, channels=1, size=12, seed=0, name="toy") -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return ImageDataset(images, labels, [f"c{i}" for i in range(classes)], (0.5,) * channels,
                        (0.25,) * channels, name=name)


def change(ps, ds):
    return ps.perturbation(ds.images)


@pytest.fixture(scope="module")
def gray():
    return toy()


@pytest.fixture(scope="module")
def rgb():
    return toy(channels=3, seed=1)


# ---------------------------------------------------------------- norm bounds

@pytest.mark.parametrize("name", ["sp", "ar"])
@pytest.mark.parametrize("which", ["gray", "rgb"])
def test_l2_attacks_respect_bound(name, which, request):
    ds = request.getfixturevalue(which)
    ps = attacks.generate(name, ds, seed=3)
    d = change(ps, ds)
    assert ps.meta["norm"] == "l2"
    assert float(realised_norms(d, "l2").max()) <= ps.meta["eps"] + 1e-6
    assert (d != 0).any()


def test_sp_bound_is_linf_equivalent(gray):
    ps = attacks.generate("sp", gray, eps=6 / 255)
    assert ps.meta["eps"] == pytest.approx(6 / 255 * math.sqrt(12 * 12))


def test_sp_points_are_class_separable():
    from st_fast.attacks.synthetic import synthetic_noise

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 5
    noise = synthetic_noise(labels, 5, (1, 16, 16), 6 / 255, 8, 10.0, g)
    # blocks of 8x8 are constant, and a nearest-class-mean classifier on the noise is perfect
    assert torch.allclose(noise[:, :, :8, :8], noise[:, :, :1, :1].expand(-1, -1, 8, 8))
    flat = noise.flatten(1)
    means = torch.stack([flat[labels == k].mean(0) for k in range(5)])
    assert (torch.cdist(flat, means).argmin(1) == labels).all()


@pytest.mark.parametrize("which", ["gray", "rgb"])
def test_ops_changes_one_pixel_per_image_same_within_class(which, request):
    ds = request.getfixturevalue(which)
    ps = attacks.generate("ops", ds, seed=0)
    d = change(ps, ds)
    changed = (d != 0).any(1)                              # (n, H, W) pixel locations
    assert int(changed.flatten(1).sum(1).max()) <= 1
    assert changed.flatten(1).sum(1).float().mean() > 0.9  # random images: nearly always exactly one
    picks = ps.meta["info"]["pixels"]
    assert len({tuple(p[0]) for p in picks}) == ds.num_classes   # distinct (row, col, colour)
    for k, ((r, c, _),) in enumerate(picks):
        members = ds.labels == k
        col = ps.images[members][:, :, r, c]
        assert (col == col[0]).all() and set(col.unique().tolist()) <= {0, 255}
        others = changed[members].clone()
        others[:, r, c] = False
        assert not others.any()


def test_ops_search_prefers_consistent_change():
    from st_fast.attacks.ops import ops_search

    images = torch.randint(60, 200, (20, 1, 5, 5), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    images[:, :, 2, 3] = 0          # always black there: setting it white moves it by 1, std 0
    images[:10, :, 1, 1] = 0
    labels = torch.zeros(20, dtype=torch.long)
    picks = ops_search(images, labels, 1, torch.Generator().manual_seed(0))
    assert picks == [[(2, 3, 1)]]


def test_ar_recursion_matches_reference():
    g = torch.Generator().manual_seed(0)
    coef = random_ar_coefficients(3, 2, 3, g)
    start = torch.randn(3, 2, 9, 7, generator=g, dtype=torch.float64)
    assert torch.allclose(ar_generate(coef, start), ar_generate_reference(coef, start))


def test_ar_noise_is_predictable_by_its_class_filter():
    # the defining property: a class's own AR filter annihilates its noise (up to the start)
    g = torch.Generator().manual_seed(1)
    coef = random_ar_coefficients(2, 1, 3, g)
    start = torch.randn(2, 1, 10, 10, generator=g, dtype=torch.float64)
    out = ar_generate(coef, start)
    filt = coef.clone()
    filt[..., -1, -1] = -1
    own = torch.nn.functional.conv2d(out[:1], filt[:1])
    other = torch.nn.functional.conv2d(out[:1], filt[1:2])
    assert own.abs().max() < 1e-9 < other.abs().max()


# ---------------------------------------------------------------- determinism, ratio, subset

@pytest.mark.parametrize("name", ["sp", "ops", "ar"])
def test_seeded_determinism(name, gray):
    a = attacks.generate(name, gray, seed=5, ratio=0.5)
    b = attacks.generate(name, gray, seed=5, ratio=0.5)
    c = attacks.generate(name, gray, seed=6, ratio=0.5)
    assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_ratio_poisons_exactly_that_many(ratio, gray):
    ps = attacks.generate("sp", gray, ratio=ratio, seed=2)
    assert len(ps.indices) == round(ratio * len(gray))
    touched = (ps.images != gray.images).flatten(1).any(1).nonzero().flatten()
    assert set(touched.tolist()) <= set(ps.indices.tolist())
    assert abs(ps.ratio - ratio) < 1 / len(gray) + 1e-9


def test_ratio_validation(gray):
    with pytest.raises(UserError, match="ratio"):
        attacks.generate("sp", gray, ratio=1.5)
    assert len(select_ratio(1000, 0.3, 0)) == 300


def test_subset_matches_trainer_rule_and_rest_is_clean(gray):
    ps = attacks.generate("ar", gray, subset=40, seed=4)
    expected = torch.randperm(len(gray), generator=torch.Generator().manual_seed(4))[:40]
    assert sorted(ps.meta["subset"]) == sorted(expected.tolist()) == ps.indices.tolist()
    outside = torch.ones(len(gray), dtype=torch.bool)
    outside[expected] = False
    assert torch.equal(ps.images[outside], gray.images[outside])
    assert torch.equal(subset_indices(len(gray), 40, 4), expected)


def test_unknown_attack_and_param(gray):
    with pytest.raises(UserError, match="unknown attack"):
        attacks.generate("nope", gray)
    with pytest.raises(UserError, match="no parameter"):
        attacks.generate("sp", gray, stepz=3)


def test_quantize_never_exceeds_bound():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8)
    delta = torch.randn(50, 3, 8, 8, generator=g)
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 0.5
    out = quantize(clean, delta, "l2", 0.5)
    assert float(realised_norms((out.float() - clean.float()) / 255, "l2").max()) <= 0.5 + 1e-6
    dl = (torch.rand(50, 3, 8, 8, generator=g) * 2 - 1) * 6.5 / 255
    out = quantize(clean, dl, "linf", 6.5 / 255)
    assert float(((out.float() - clean.float()) / 255).abs().max()) <= 6.5 / 255 + 1e-6


# ---------------------------------------------------------------- file format

def test_round_trip(tmp_path, gray):
    ps = attacks.generate("ops", gray, ratio=0.5, seed=1)
    path = ps.save(tmp_path / "p.pt")
    back = attacks.load(path, dataset=gray)
    assert torch.equal(back.images, ps.images) and torch.equal(back.indices, ps.indices)
    assert torch.equal(back.labels, gray.labels)
    assert back.meta["attack"] == "ops" and back.meta["format_version"] == 1
    assert back.meta["dataset"] == "toy" and back.meta["seed"] == 1 and back.meta["ratio"] == 0.5
    assert attacks.load(path).images.dtype == torch.uint8      # loads without the dataset too


def test_truncated_and_foreign_files_refused(tmp_path, gray):
    path = attacks.generate("sp", gray).save(tmp_path / "p.pt")
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a valid poisoned-set file"):
        attacks.load(tmp_path / "trunc.pt")
    torch.save({"model": torch.zeros(3)}, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match="not an st_fast poisoned-set"):
        attacks.load(tmp_path / "ckpt.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError):
        attacks.load(tmp_path / "text.pt")
    with pytest.raises(UserError, match="no such"):
        attacks.load(tmp_path / "missing.pt")


def test_tampered_file_fails_checksum(tmp_path, gray):
    ps = attacks.generate("sp", gray)
    path = ps.save(tmp_path / "p.pt")
    blob = torch.load(path, weights_only=True)
    blob["images"][0, 0, 0, 0] ^= 1
    torch.save(blob, path)
    with pytest.raises(UserError, match="checksum"):
        attacks.load(path)
    blob["format_version"] = 99
    torch.save(blob, path)
    with pytest.raises(UserError, match="version"):
        attacks.load(path)


def test_dataset_mismatches_refused(tmp_path, gray, rgb):
    ps = attacks.generate("sp", gray, ratio=0.5)
    path = ps.save(tmp_path / "p.pt")
    with pytest.raises(UserError, match="shape"):
        attacks.load(path, dataset=toy(channels=1, size=10))
    with pytest.raises(UserError, match="dataset"):
        attacks.load(path, dataset=toy(name="other"))
    relabeled = toy()
    relabeled.labels = relabeled.labels.roll(1)
    with pytest.raises(UserError, match="labels"):
        attacks.load(path, dataset=relabeled)
    with pytest.raises(UserError, match="outside"):
        attacks.load(path, dataset=toy(seed=9))   # other clean images


def test_norm_bound_checked_on_load(tmp_path, gray):
    ps = attacks.generate("sp", gray)
    ps.meta["eps"] = ps.meta["eps"] / 4              # claims a tighter bound than it has
    path = ps.save(tmp_path / "p.pt")
    with pytest.raises(UserError, match="exceeds the recorded bound"):
        attacks.load(path, dataset=gray)


# ---------------------------------------------------------------- imports

def test_import_raw_perturbation_tensor_and_numpy(tmp_path, rgb):
    g = torch.Generator().manual_seed(0)
    delta = (torch.rand(len(rgb), 3, 12, 12, generator=g) * 2 - 1) * 8 / 255
    ps = attacks.from_perturbation(delta, rgb, label="theirs", norm="linf", eps=8 / 255)
    assert float(change(ps, rgb).abs().max()) <= 8 / 255 + 1e-6
    torch.save(delta, tmp_path / "d.pt")
    np.save(tmp_path / "d.npy", delta.permute(0, 2, 3, 1).numpy())      # channels-last
    for f in ("d.pt", "d.npy"):
        other = attacks.import_any(tmp_path / f, rgb, label="theirs", norm="linf", eps=8 / 255, kind="delta")
        assert torch.equal(other.images, ps.images)
    with pytest.raises(UserError, match="the bound"):
        attacks.from_perturbation(delta * 2, rgb, label="theirs", norm="linf", eps=8 / 255)
    with pytest.raises(UserError, match="expected shape"):
        attacks.from_perturbation(delta[:, :2], rgb, label="theirs", norm="linf", eps=8 / 255)
    bad = delta.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        attacks.from_perturbation(bad, rgb, label="theirs", norm="linf", eps=8 / 255)


def test_import_partial_with_indices(gray):
    idx = [7, 3, 50]
    delta = torch.full((3, 1, 12, 12), 4 / 255)
    ps = attacks.from_perturbation(delta, gray, label="theirs", norm="linf", eps=4 / 255, indices=idx)
    assert ps.indices.tolist() == [3, 7, 50]
    untouched = torch.ones(len(gray), dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(ps.images[untouched], gray.images[untouched])


def test_import_png_folder(tmp_path, rgb):
    from PIL import Image

    ps = attacks.generate("ops", rgb, ratio=0.25, seed=0)
    for i in ps.indices.tolist():
        Image.fromarray(ps.images[i].permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    back = attacks.import_any(tmp_path, rgb, attack="ops", allow_missing=True)
    assert torch.equal(back.images, ps.images) and torch.equal(back.indices, ps.indices)
    Image.fromarray(ps.images[0].permute(1, 2, 0).numpy()).save(tmp_path / f"{len(rgb) + 5}.png")
    with pytest.raises(UserError, match="past the end"):
        attacks.import_any(tmp_path, rgb, attack="ops", allow_missing=True)


# ---------------------------------------------------------------- CLI

def _cli(argv):
    from st_fast.commands import poison

    p = argparse.ArgumentParser()
    poison.add_parser(p.add_subparsers())
    args = p.parse_args(["poison", *argv])
    return args.func(args)


def test_cli_generate_and_import(tmp_path, monkeypatch, gray):
    import st_fast.data

    monkeypatch.setattr(st_fast.data, "load_dataset", lambda *a, **k: gray)
    out = tmp_path / "sp.pt"
    assert _cli(["--attack", "sp", "--dataset", "toy", "--out", str(out), "--eps", "4/255",
                 "--ratio", "0.5", "--param", "patch_size=4"]) == 0
    ps = attacks.load(out, dataset=gray)
    assert ps.meta["params"]["patch_size"] == 4 and len(ps.indices) == 60
    np.save(tmp_path / "d.npy", np.full((len(gray), 1, 12, 12), 2 / 255, dtype=np.float32))
    assert _cli(["--label", "mine", "--norm", "linf", "--kind", "delta", "--from", str(tmp_path / "d.npy"),
                 "--out", str(tmp_path / "i.pt"), "--eps", "2/255"]) == 0
    assert attacks.load(tmp_path / "i.pt").meta["attack"] == "mine"
    with pytest.raises(UserError, match="no --steps"):
        _cli(["--attack", "sp", "--out", str(out), "--steps", "3"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        _cli(["--attack", "sp", "--out", str(out), "--param", "oops"])


def test_import_any_reads_an_st_fast_file(tmp_path, gray):
    path = attacks.generate("sp", gray, ratio=0.5).save(tmp_path / "p.pt")
    back = attacks.import_any(path, gray)
    assert back.meta["attack"] == "sp" and len(back.indices) == 60
