"""st_fast.detect and `st-fast detect` on tiny sets (seconds each)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from st_fast import attacks
from st_fast.cli import main
from st_fast.data import ImageDataset
from st_fast.detect import (
    BOUND_THRESHOLD,
    HELD_OUT,
    HELD_OUT_THRESHOLD,
    THRESHOLD,
    bound_test,
    destroy_small_perturbations,
    detect,
    held_out_test,
)
from st_fast.errors import UserError

from .helpers import toy_dataset

FAST = dict(subsample=400, linear_epochs=4, network_epochs=1, acm=False, held_out=False)


def _digits(n=400):
    """scikit-learn's digits (8x8, ships with it), the first ``n``, as uint8 images."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy((d.images[:n] * 255 / 16).round()).to(torch.uint8).unsqueeze(1)
    return ImageDataset(images, torch.from_numpy(d.target[:n]), [str(i) for i in range(10)], (0.3,), (0.3,),
                        name="digits")


@pytest.fixture(scope="module")
def clean():
    return _digits()


def _sp(ds, ratio=1.0):
    # 8x8 images: 4 blocks; at the published 6/255 the linear gap on 400 digits is 1.6 points
    # (below the threshold: missed), so the tiny test uses 16/255
    return attacks.generate("sp", ds, seed=0, ratio=ratio, patch_size=4, eps=16 / 255)


def test_flags_sp_and_passes_clean(clean, one_thread):
    clean_result = detect(clean, **FAST)
    sp_result = detect(_sp(clean), **FAST)
    # the score is each test's in units of its threshold; SP on digits: the fit-speed test
    assert clean_result.verdict == "clean" and clean_result.score <= 1.0 == clean_result.threshold
    assert sp_result.verdict == "poisoned" and sp_result.score > 1.0
    fit = sp_result.evidence["tests"]["fit_speed"]
    assert fit["flagged"] and fit["score"] > THRESHOLD == fit["threshold"]
    assert sp_result.score == pytest.approx(max(fit["score"] / THRESHOLD,
                                                sp_result.evidence["tests"]["bound"]["score"] / BOUND_THRESHOLD))
    assert set(sp_result.per_class) == {str(i) for i in range(10)}   # a PoisonedSet names classes by label


def test_evidence_does_not_depend_on_the_callers_random_state(clean, one_thread):
    first = detect(clean, **FAST)
    torch.rand(7)   # a caller that draws random numbers between two calls
    second = detect(clean, **FAST)
    assert first.evidence["network"] == second.evidence["network"] and first.score == second.score


def test_per_sample_ranks_poisoned_first(clean, one_thread):
    half = _sp(clean, 0.5)
    truth = torch.zeros(len(half))
    truth[half.indices] = 1
    result = detect(half, **FAST)
    assert result.per_sample.shape == (len(half),)
    # measured 0.98 here (the earlier cross-entropy score: 0.79; a random score gives 0.5)
    assert roc_auc_score(truth.numpy(), result.per_sample.numpy()) > 0.9


def _dense_scores(images, labels, k, levels, ridge, diagonal=False):
    """residual_direction_scores written out in one piece, as the docstring says, without chunks;
    ridge None: Ledoit-Wolf's shrinkage, from its published formula on the centred data."""
    x = images.flatten(1).double() / 255
    r = x - destroy_small_perturbations(images, levels).flatten(1).double() / 255
    means = torch.stack([x[labels == c].mean(0) for c in range(k)])
    u = torch.stack([r[labels == c].mean(0) for c in range(k)])
    xc = x - means[labels]
    n, d = xc.shape
    cov = xc.t() @ xc / n
    mu = cov.diagonal().mean()
    if diagonal and ridge is None:   # Ledoit-Wolf toward mu * I, on the diagonal of S alone
        v = cov.diagonal()
        beta = float((xc.pow(4).mean(0) - v.pow(2)).sum()) / n
        shrink = min(1.0, beta / float((v - mu).pow(2).sum()))
        cov = torch.diag(((1 - shrink) * v + shrink * mu).clamp_min(1e-12))
    elif diagonal:
        cov = torch.diag((cov.diagonal() + ridge * mu).clamp_min(1e-12))
    elif ridge is None:
        beta = sum(float(((xi[:, None] * xi[None, :]) - cov).pow(2).sum()) for xi in xc) / n ** 2
        delta = float((cov - mu * torch.eye(d, dtype=torch.float64)).pow(2).sum())
        shrink = min(1.0, beta / delta)
        cov = (1 - shrink) * cov + shrink * mu * torch.eye(d, dtype=torch.float64)
    else:
        cov = cov + ridge * mu * torch.eye(d, dtype=torch.float64)
    return (xc * (torch.linalg.inv(cov) @ u.t()).t()[labels]).sum(1).float()


@pytest.mark.parametrize("diagonal, ridge", [(False, None), (False, 1e-3), (True, None), (True, 1e-3)])
def test_per_sample_scores_match_the_unchunked_formula(diagonal, ridge, monkeypatch):
    import st_fast.detect as det

    if diagonal:   # the path images larger than FULL_COVARIANCE_MAX_DIM values take
        monkeypatch.setattr(det, "FULL_COVARIANCE_MAX_DIM", 10)
    ds = toy_dataset(n=90, classes=3, size=16, seed=4)
    images = ds.images.clone()
    images[:, :, :2] = 0   # constant pixels (as Fashion-MNIST's black borders): no variance there
    got = det.residual_direction_scores(images, ds.labels, 3, levels=8, ridge=ridge, chunk=7)
    want = _dense_scores(images, ds.labels, 3, 8, ridge, diagonal=diagonal)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.float(), want, rtol=1e-4, atol=1e-4)


def test_exact_value_scores_match_a_leave_one_out_naive_bayes_by_loops():
    from st_fast.detect import exact_value_scores

    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    images = torch.randint(0, 4, (9, 1, 2, 3), generator=g).to(torch.uint8)   # few values: repeats
    prior, levels = 0.5, 256
    want = []
    for i in range(9):
        x, own_class = images[i].flatten(), labels[i]
        others = [j for j in range(9) if j != i]
        llr = 0.0
        for p in range(x.numel()):
            same = [j for j in others if labels[j] == own_class]
            rest = [j for j in others if labels[j] != own_class]
            hits_same = sum(int(images[j].flatten()[p] == x[p]) for j in same)
            hits_rest = sum(int(images[j].flatten()[p] == x[p]) for j in rest)
            llr += (math.log((hits_same + prior) / (len(same) + prior * levels))
                    - math.log((hits_rest + prior) / (len(rest) + prior * levels)))
        want.append(llr)
    got = exact_value_scores(images, labels, 3, prior=prior, chunk=4)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-9)
    with pytest.raises(ValueError, match="uint8"):
        exact_value_scores(images.float(), labels, 3)


def test_per_sample_score_weighs_both_views_standardised_within_class():
    import st_fast.detect as det

    ds = toy_dataset(n=60, classes=3, size=16, seed=2)
    z = det.standardise_within_class(torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 5.0]),
                                     torch.tensor([0, 0, 0, 1, 1, 2]), 3)
    assert torch.allclose(z, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    parts = [det.standardise_within_class(f(ds.images, ds.labels, 3), ds.labels, 3)
             for f in (det.residual_direction_scores, det.exact_value_scores)]
    odds = []
    for p in parts:
        eta = sum(det.two_group_separation(p[ds.labels == c]) for c in range(3)) / 3
        odds.append((eta / (1 - eta)) ** 2)
    want = (odds[0] * parts[0] + odds[1] * parts[1]).float()
    assert torch.allclose(det.per_sample_scores(ds.images, ds.labels, 3), want)
    # Otsu's share of variance: 1 for two points, 2/pi for a Gaussian, 0 for a constant
    assert det.two_group_separation(torch.tensor([0.0, 0.0, 5.0, 5.0])) == pytest.approx(1.0)
    gauss = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    assert det.two_group_separation(gauss) == pytest.approx(2 / math.pi, abs=0.01)
    assert det.two_group_separation(torch.ones(5)) == 0.0


def test_per_sample_scores_find_a_planted_class_wise_pattern():
    from st_fast.detect import per_sample_scores

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % 3
    # smooth content, as natural images have: random 4x4 grids upsampled, brightness by class
    content = F.interpolate(torch.rand(600, 1, 4, 4, generator=g), size=16, mode="bilinear", align_corners=False)
    content = 60 + 120 * content + 20 * labels.view(-1, 1, 1, 1)
    patterns = (torch.randint(0, 2, (3, 1, 16, 16), generator=g) * 2 - 1) * 8.0   # +-8/255 per class
    poisoned = torch.rand(600, generator=g) < 0.3
    images = (content + patterns[labels] * poisoned[:, None, None, None]).round().clamp(0, 255).to(torch.uint8)
    scores = per_sample_scores(images, labels, 3)
    assert roc_auc_score(poisoned.numpy(), scores.numpy()) > 0.9


def test_per_sample_scores_find_a_coarse_pattern_the_reference_copy_keeps():
    from st_fast.detect import exact_value_scores, per_sample_scores, residual_direction_scores

    # black background and a bright square (as Fashion-MNIST); +-8/255 offsets on 4x4 blocks
    # per class (as SP): the median keeps blocks, so the residual direction alone sees little
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(600) % 3
    content = torch.zeros(600, 1, 16, 16)
    content[:, :, 4:12, 4:12] = 100 + 100 * torch.rand(600, 1, 1, 1, generator=g) + 10 * labels.view(-1, 1, 1, 1)
    content += 3 * torch.rand(600, 1, 16, 16, generator=g) * (content > 0)
    blocks = F.interpolate((torch.rand(3, 1, 4, 4, generator=g) * 2 - 1) * 8.0, size=16, mode="nearest")
    poisoned = torch.rand(600, generator=g) < 0.5
    images = (content + blocks[labels] * poisoned[:, None, None, None]).round().clamp(0, 255).to(torch.uint8)
    def auroc(f):
        return roc_auc_score(poisoned.numpy(), f(images, labels, 3).numpy())

    # exact values see it (1.0), the residual direction does not (0.50); an unweighted sum gave
    # 0.86, the weighted one follows the view whose scores split into two groups
    assert auroc(exact_value_scores) > 0.95 and auroc(residual_direction_scores) < 0.6
    assert auroc(per_sample_scores) > 0.95


def _flat_objects(n=300, size=20, seed=0):
    """Images with flat content: a black background and one flat grey rectangle whose place
    depends on the class (3 classes), as clothes on Fashion-MNIST's black background."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    for i in range(n):
        top = 2 + 5 * int(labels[i])
        images[i, 0, top:top + 6, 3:17] = int(torch.randint(90, 200, (1,), generator=g))
    return ImageDataset(images, labels, ["a", "b", "c"], (0.2,), (0.3,), name="flat-objects")


def _signs(images, eps, share, seed=1):
    """A sample-wise hard-bounded poison like a multi-step sign-gradient attack's: +-eps on a
    random ``share`` of every image's pixels, a uniform -eps..eps on the others (the steps that
    did not reach the bound), clipped to 0..255."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, images.shape, generator=g) * 2 - 1
    inside = torch.randint(-eps, eps + 1, images.shape, generator=g)
    delta = torch.where(torch.rand(images.shape, generator=g) < share, sign * eps, inside)
    return (images.int() + delta).clamp(0, 255).to(torch.uint8)


def test_bound_test_finds_a_hard_bounded_perturbation_and_not_natural_noise():
    ds = _flat_objects()
    assert bound_test(ds.images, ds.labels, 3)["score"] == 0.0
    poisoned = bound_test(_signs(ds.images, 8, 0.5), ds.labels, 3)
    assert poisoned["bound"] == 8 and poisoned["score"] > 10 * BOUND_THRESHOLD
    assert (poisoned["per_class"] > BOUND_THRESHOLD).all()
    assert bound_test(_signs(ds.images, 6, 0.5), ds.labels, 3)["bound"] == 6
    # natural noise, however strong, decays from 0 on: no spike
    g = torch.Generator().manual_seed(2)
    for sigma in (2.0, 5.0):
        noisy = (ds.images.float() + torch.randn(ds.images.shape, generator=g) * sigma).round().clamp(0, 255)
        assert bound_test(noisy.to(torch.uint8), ds.labels, 3)["score"] <= BOUND_THRESHOLD / 10
    # exactly +-eps and nothing between looks like data stored in coarse steps: not flagged
    coarse = (ds.images.int() + (torch.randint(0, 2, ds.images.shape, generator=g) * 2 - 1) * 8).clamp(0, 255)
    assert bound_test(coarse.to(torch.uint8), ds.labels, 3)["score"] == 0.0
    # a few pixels at a deviation are counting noise, not a bound
    few = ds.images.clone()
    few[:5, 0, 0, 0] = 7
    few[5:12, 0, 0, 1] = torch.arange(1, 8, dtype=torch.uint8)
    assert bound_test(few, ds.labels, 3)["score"] == 0.0


def test_detect_flags_a_sample_wise_bounded_poison_and_ranks_its_images(one_thread):
    ds = _flat_objects()
    assert detect(ds, **FAST).verdict == "clean"
    half = torch.arange(len(ds)) % 2 == 1
    images = torch.where(half[:, None, None, None], _signs(ds.images, 8, 0.5), ds.images)
    result = detect(ds.with_images(images), **FAST)
    bound = result.evidence["tests"]["bound"]
    assert result.verdict == "poisoned" and bound["flagged"] and bound["bound"] == 8
    assert result.score == pytest.approx(max(result.evidence["tests"]["fit_speed"]["score"] / THRESHOLD,
                                             bound["score"] / BOUND_THRESHOLD))
    assert roc_auc_score(half.int().numpy(), result.per_sample.numpy()) > 0.95
    with pytest.raises(UserError, match="bound_threshold must be a positive"):
        detect(ds, bound_threshold=0.0)


def test_reference_copy_removes_one_pixel_and_keeps_shape():
    ds = toy_dataset(n=8, size=16)
    x = ds.images.clone()
    x[:, :, 5, 5] = 255
    out = destroy_small_perturbations(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert (out[:, :, 5, 5] < 255).all()        # the median removed the planted pixel
    assert len(torch.unique(out)) <= 8          # 8 grey levels


def test_bad_input_is_one_clear_error():
    ds = toy_dataset(n=16)
    with pytest.raises(UserError, match="empty"):
        detect(ds.subset(torch.arange(0)))
    one = ds.subset(torch.nonzero(ds.labels == 0).flatten())
    with pytest.raises(UserError, match="at least 2 classes"):
        detect(one)
    with pytest.raises(UserError, match="ImageDataset or a PoisonedSet"):
        detect(ds.images)


def test_cli_json_fields_and_exit_codes(clean, tmp_path, capsys, one_thread):
    path = tmp_path / "sp.pt"
    _sp(clean).save(path)
    assert main(["detect", "--poison", str(path), "--json", "--subsample", "400"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "poisoned" and out["score"] > out["threshold"] == 1.0
    assert out["evidence"]["tests"]["fit_speed"]["threshold"] == THRESHOLD
    assert {"linear", "network", "acm_epoch1"} <= set(out["evidence"])
    wrong = tmp_path / "wrong.pt"
    torch.save({"x": torch.zeros(3)}, wrong)
    assert main(["detect", "--poison", str(wrong)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an st_fast poisoned-set file" in err[0]


def _class_stripes(n=1000, size=12, eps=16, periods=(1, 2, 4), seed=0):
    """Content that says nothing about the label (random blocks of two of the reference copy's grey
    levels, so the reference copy of the clean set is the set itself) and a perturbation that points to the
    class and survives crop and flip: +-eps horizontal stripes of a period per class (none for the
    last). eps 16 is under half a grey level (18.2), so the reference copy removes it exactly."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    blocks = torch.randint(3, 5, (n, 1, size // 4, size // 4), generator=g).float()
    images = (F.interpolate(blocks, size=size, mode="nearest") * (255 / 7)).round()
    rows = torch.arange(size)[:, None].expand(size, size)
    stripes = torch.stack([(-1.0) ** (rows // p) for p in periods] + [torch.zeros(size, size)])[:, None]

    def own_statistics(x):   # normalised as detect normalises: by the set's own mean and std
        return ImageDataset(x.to(torch.uint8), labels, list("abcd"), ((x / 255).mean().item(),),
                            ((x / 255).std().item(),), name="blocks")
    return own_statistics(images), own_statistics((images + eps * stripes[labels]).clamp(0, 255))


def test_held_out_test_sees_a_generalising_shortcut_and_not_clean_content(one_thread):
    clean, poisoned = _class_stripes()
    # the documented recipe: the studies' NT (small-resnet, 5 epochs, batch 128) on 3,000 images
    assert HELD_OUT == {"arch": "small-resnet", "train": 3000, "held_out": 2000, "epochs": 5, "batch_size": 128}
    # 600 training images at batch 128 would be 20 steps: the tiny set takes batch 32
    on_clean, on_poison = held_out_test(clean, batch_size=32), held_out_test(poisoned, batch_size=32)
    assert (on_clean["train_images"], on_clean["held_out_images"]) == (600, 400)    # 60% / 40% of a small set
    # the clean set is its own reference copy: the same training twice, the same accuracy
    assert on_clean["score"] == 0.0 and on_clean["raw_accuracy"] == on_clean["reference_accuracy"]
    # the raw copy's model reads the stripes on images it never saw; the reference copy has none
    assert on_poison["score"] > 3 * HELD_OUT_THRESHOLD and on_poison["raw_accuracy"] > 0.8
    assert abs(on_poison["reference_accuracy"] - 0.25) < 0.06 and abs(on_clean["reference_accuracy"] - 0.25) < 0.06
    assert on_poison["per_class"].shape == (4,) and on_poison["per_class"].max() > 50
    assert held_out_test(poisoned, batch_size=32)["score"] == on_poison["score"]   # seeded
    result = detect(poisoned, **{**FAST, "held_out": True})   # detect runs the documented recipe
    tests = result.evidence["tests"]
    recipe = held_out_test(poisoned)
    assert tests["held_out"]["score"] == recipe["score"] and tests["held_out"]["threshold"] == HELD_OUT_THRESHOLD
    assert tests["held_out"]["flagged"] == (recipe["score"] > HELD_OUT_THRESHOLD) and result.verdict == "poisoned"
    assert result.score == pytest.approx(max(tests["fit_speed"]["score"] / THRESHOLD, tests["bound"]["score"] / BOUND_THRESHOLD,
                                             tests["held_out"]["score"] / HELD_OUT_THRESHOLD))
    with pytest.raises(UserError, match="held_out_threshold must be a positive"):
        detect(clean, held_out_threshold=float("nan"))


def test_a_poisoned_set_file_reports_its_datasets_class_names():
    from st_fast.data import PoisonedSet
    from st_fast.detect import _as_dataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=g)
    ps = PoisonedSet(images, torch.arange(40) % 10, torch.arange(40), {"dataset": "fashion-mnist"})
    assert _as_dataset(ps).classes[:2] == ["T-shirt/top", "Trouser"]
    unknown = PoisonedSet(images, torch.arange(40) % 10, torch.arange(40), {"dataset": "my-set"})
    assert _as_dataset(unknown).classes[:2] == ["0", "1"]
