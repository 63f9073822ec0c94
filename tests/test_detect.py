"""st_fast.detect and `st-fast detect` on tiny sets (seconds each)."""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import roc_auc_score

from st_fast import attacks
from st_fast.cli import main
from st_fast.data import ImageDataset
from st_fast.detect import THRESHOLD, destroy_small_perturbations, detect
from st_fast.errors import UserError

from .helpers import toy_dataset

FAST = dict(subsample=400, linear_epochs=4, network_epochs=1, acm=False)


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
    assert clean_result.verdict == "clean" and clean_result.score <= THRESHOLD
    assert sp_result.verdict == "poisoned" and sp_result.score > THRESHOLD
    assert set(sp_result.per_class) == {str(i) for i in range(10)}   # a PoisonedSet names classes by label


def test_per_sample_ranks_poisoned_first(clean, one_thread):
    half = _sp(clean, 0.5)
    truth = torch.zeros(len(half))
    truth[half.indices] = 1
    result = detect(half, **FAST)
    assert result.per_sample.shape == (len(half),)
    # measured 0.79 here (a random score gives 0.5); docs/detect.md reports it as a limit
    assert roc_auc_score(truth.numpy(), result.per_sample.numpy()) > 0.75


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
    assert out["verdict"] == "poisoned" and out["score"] > out["threshold"] == THRESHOLD
    assert {"linear", "network", "acm_epoch1"} <= set(out["evidence"])
    wrong = tmp_path / "wrong.pt"
    torch.save({"x": torch.zeros(3)}, wrong)
    assert main(["detect", "--poison", str(wrong)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an st_fast poisoned-set file" in err[0]
