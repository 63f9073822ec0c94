"""Import of poisons made elsewhere (issue 18 item 1): round trips and every refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from st_fast import attacks, cli
from st_fast.errors import UserError

from .helpers import toy_dataset


@pytest.fixture(scope="module")
def gray():
    return toy_dataset(n=40, classes=4, channels=1, size=12)


@pytest.fixture(scope="module")
def rgb():
    return toy_dataset(n=24, classes=4, channels=3, size=8, seed=1)


def refused(match: str, fn, *args, **kw) -> str:
    """The call raises one UserError line matching ``match``; returns the message."""
    with pytest.raises(UserError, match=match) as err:
        fn(*args, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def save_pngs(folder, images, indices, as_rgb=False):
    folder.mkdir(exist_ok=True)
    for i in indices:
        arr = images[i].permute(1, 2, 0).numpy()
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, 2) if as_rgb else arr[..., 0]
        Image.fromarray(arr).save(folder / f"{i}.png")


# ---------------------------------------------------------------- round trips

def test_uint8_round_trips_are_byte_identical(tmp_path, gray):
    ps = attacks.generate("sp", gray, seed=0)
    imgs = ps.images.numpy()
    np.save(tmp_path / "nchw.npy", imgs)
    np.save(tmp_path / "nhwc.npy", imgs.transpose(0, 2, 3, 1))
    np.savez(tmp_path / "z.npz", images=imgs, labels=gray.labels.numpy())
    torch.save({"images": ps.images, "targets": gray.labels}, tmp_path / "d.pt")
    for f in ("nchw.npy", "nhwc.npy", "z.npz", "d.pt"):
        back = attacks.import_any(tmp_path / f, gray, attack="sp")
        assert torch.equal(back.images, ps.images), f
        assert back.meta["norm"] == "l2" and back.meta["info"]["kind"] == "images"
        assert back.meta["eps"] == pytest.approx(6 / 255 * math.sqrt(144))   # sp's own bound
        assert len(back.meta["info"]["source_sha256"]) == 64


@pytest.mark.parametrize("as_rgb", [False, True])
def test_png_round_trip_is_byte_identical(tmp_path, gray, as_rgb):
    ps = attacks.generate("ops", gray, seed=0)
    save_pngs(tmp_path / "png", ps.images, range(len(gray)), as_rgb=as_rgb)
    back = attacks.import_any(tmp_path / "png", gray, attack="ops")
    assert torch.equal(back.images, ps.images) and back.meta["norm"] == "l0" and back.meta["eps"] == 1


def test_png_round_trip_rgb(tmp_path, rgb):
    ps = attacks.generate("em-class", rgb, seed=0, arch="small-resnet", steps=1, max_rounds=1, train_steps=1,
                          batch_size=24, device="cpu")
    save_pngs(tmp_path / "png", ps.images, range(len(rgb)))
    back = attacks.import_any(tmp_path / "png", rgb, attack="em-class")
    assert torch.equal(back.images, ps.images) and back.meta["norm"] == "linf"


def _reference(clean: np.ndarray, delta: np.ndarray, rule: str) -> np.ndarray:
    """The authors' float -> uint8 step, written out in numpy."""
    v = np.clip(clean.astype(np.float32) / np.float32(255) + delta, 0, 1) * np.float32(255)
    if rule == "floor":
        out = np.floor(v)
    elif rule == "nearest":
        out = np.round(v)                       # half to even
    else:
        out = np.floor(v + np.float32(0.5))     # torchvision save_image: + 0.5, truncate
    return np.clip(out, 0, 255).astype(np.uint8)


def test_delta_import_with_each_rounding_matches_a_reference(tmp_path, gray):
    g = torch.Generator().manual_seed(3)
    delta = ((torch.rand(len(gray), 1, 12, 12, generator=g) * 2 - 1) * 8 / 255).numpy().astype(np.float32)
    np.save(tmp_path / "d.npy", delta)
    results = {}
    for rule in ("floor", "nearest", "half-up"):
        ps = attacks.import_any(tmp_path / "d.npy", gray, attack="em-sample", kind="delta", rounding=rule)
        ref = _reference(gray.images.numpy(), delta, rule)
        assert np.array_equal(ps.images.numpy(), ref), rule
        assert ps.meta["info"]["rounding"] == rule
        results[rule] = ps.images
    assert not torch.equal(results["floor"], results["nearest"])
    # exact halves (rare in random data) tell nearest (half to even) from half up
    from st_fast.data.perturbation import to_uint8

    halves = torch.tensor([0.5, 1.5, 2.5, 254.5, 255.5])
    assert to_uint8(halves, "floor").tolist() == [0, 1, 2, 254, 255]
    assert to_uint8(halves, "nearest").tolist() == [0, 2, 2, 254, 255]
    assert to_uint8(halves, "half-up").tolist() == [1, 2, 3, 255, 255]
    # the default is the authors' rule: em-sample floors, ar rounds half up
    default = attacks.import_any(tmp_path / "d.npy", gray, attack="em-sample", kind="delta")
    assert torch.equal(default.images, results["floor"])
    assert attacks.importing.claim(attack="ar", shape=(1, 12, 12)).rounding == "half-up"


def test_quantisation_slack_lets_files_at_their_bound_load(tmp_path, gray):
    """A perturbation exactly at the bound, floored as SP's authors do, realises a little more
    than the bound; it loads (bound + quantisation), and the saved file loads back."""
    bound = 6 / 255 * math.sqrt(144)
    g = torch.Generator().manual_seed(0)
    d = -torch.rand(len(gray), 1, 12, 12, generator=g, dtype=torch.float32)
    d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * bound           # L2 exactly the bound, all negative
    ps = attacks.from_perturbation(d, gray, attack="sp")
    realised = ps.perturbation(gray.images).flatten(1).norm(dim=1)
    assert float(realised.max()) > bound                                  # floor pushed it over
    path = ps.save(tmp_path / "sp.pt")
    assert attacks.load(path, dataset=gray).meta["eps"] == pytest.approx(bound)
    # far over the bound is still refused, as "bound + quantisation"
    msg = refused("the bound", attacks.from_perturbation, d, gray, label="x", norm="l2", eps=bound / 2)
    assert "sample 0" in msg
    msg = refused("quantisation", attacks.from_images, ps.images, gray, label="x", norm="l2", eps=bound / 2)
    assert "sample 0" in msg


def test_partial_import_with_an_indices_file(tmp_path, gray, monkeypatch):
    ps = attacks.generate("sp", gray, seed=0, ratio=0.25)
    idx = ps.indices.tolist()[::-1]                                       # rows in any order
    np.save(tmp_path / "part.npy", ps.images[idx].numpy())
    (tmp_path / "idx.txt").write_text(" ".join(map(str, idx)))
    monkeypatch.setattr("st_fast.data.load_dataset", lambda *a, **k: gray)
    assert cli.main(["poison", "--attack", "sp", "--from", str(tmp_path / "part.npy"), "--indices",
                     str(tmp_path / "idx.txt"), "--out", str(tmp_path / "p.pt")]) == 0
    back = attacks.load(tmp_path / "p.pt", dataset=gray)
    assert torch.equal(back.images, ps.images) and torch.equal(back.indices, ps.indices)
    msg = refused("--indices FILE", attacks.import_any, tmp_path / "part.npy", gray, attack="sp")
    assert "part.npy" in msg


def test_png_folder_missing_files(tmp_path, gray):
    ps = attacks.generate("ops", gray, seed=0)
    save_pngs(tmp_path / "png", ps.images, [i for i in range(len(gray)) if i != 7])
    msg = refused("missing", attacks.import_any, tmp_path / "png", gray, attack="ops")
    assert "7.png" in msg and "--allow-missing" in msg
    back = attacks.import_any(tmp_path / "png", gray, attack="ops", allow_missing=True)
    assert back.meta["info"]["missing"] == 1 and 7 not in back.indices.tolist()
    assert torch.equal(back.images[7], gray.images[7])


# ---------------------------------------------------------------- refusals

def test_wrong_data_is_refused_naming_the_file_and_index(tmp_path, gray):
    ps = attacks.generate("sp", gray, seed=0)
    perm = torch.arange(len(gray)).roll(1)
    np.save(tmp_path / "shuffled.npy", ps.images[perm].numpy())
    msg = refused("do not match the clean", attacks.import_any, tmp_path / "shuffled.npy", gray, attack="sp")
    assert "shuffled.npy" in msg and "sample 0" in msg

    floats = (ps.images.float() / 255).numpy()
    np.save(tmp_path / "float_images.npy", floats)
    refused("--kind images or --kind delta", attacks.import_any, tmp_path / "float_images.npy", gray, attack="sp")
    msg = refused("use --kind images", attacks.import_any, tmp_path / "float_images.npy", gray, attack="sp",
                  kind="delta")
    assert "float_images.npy" in msg
    back = attacks.import_any(tmp_path / "float_images.npy", gray, attack="sp", kind="images", rounding="nearest")
    assert torch.equal(back.images, ps.images)

    d255 = ps.perturbation(gray.images).numpy() * 255
    np.save(tmp_path / "d255.npy", d255)
    msg = refused("0..255", attacks.import_any, tmp_path / "d255.npy", gray, label="theirs", norm="l2",
                  eps=1.0, kind="delta")
    assert "d255.npy" in msg

    torch.save({"images": ps.images, "targets": torch.zeros(len(gray), dtype=torch.int64)}, tmp_path / "t.pt")
    msg = refused("stored label", attacks.import_any, tmp_path / "t.pt", gray, attack="sp")
    assert "t.pt" in msg and "sample 1" in msg            # sample 0 has label 0 too

    ops = attacks.generate("ops", gray, seed=0)
    np.save(tmp_path / "ops.npy", ops.images.numpy())
    msg = refused("do not match", attacks.import_any, tmp_path / "ops.npy", gray, attack="hypo")
    assert "ops.npy" in msg
    np.save(tmp_path / "u8.npy", ps.images.numpy())
    refused("cannot be a perturbation", attacks.import_any, tmp_path / "u8.npy", gray, attack="sp", kind="delta")
    refused("rounding does not apply", attacks.import_any, tmp_path / "u8.npy", gray, attack="sp", rounding="floor")


def test_claims_are_checked(tmp_path, gray):
    np.save(tmp_path / "u8.npy", gray.images.numpy())
    f = tmp_path / "u8.npy"
    refused("unknown attack 'nosuchattack'", attacks.import_any, f, gray, attack="nosuchattack")
    refused("--attack sp", attacks.import_any, f, gray, label="sp", norm="l2", eps=1.0)
    refused("pass --norm and --eps", attacks.import_any, f, gray, label="mine")
    refused("name the attack", attacks.import_any, f, gray)
    refused("ops has no eps", attacks.import_any, f, gray, attack="ops", eps=2.0)
    refused("bounded in l2, not linf", attacks.import_any, f, gray, attack="sp", norm="linf")
    c = attacks.importing.claim(attack="sp", eps=8 / 255, shape=(1, 12, 12))
    assert c.bound == pytest.approx(8 / 255 * 12) and c.norm == "l2" and not c.foreign
    c = attacks.importing.claim(label="mine", norm="linf", eps=4 / 255, shape=(1, 12, 12))
    assert c.foreign and c.bound == pytest.approx(4 / 255) and c.attack == "mine"
    own = attacks.generate("sp", gray).save(tmp_path / "own.pt")
    refused("kind do not apply", attacks.import_any, own, gray, attack="sp", kind="images")
    refused("holds a sp poison, not ops", attacks.import_any, own, gray, attack="ops")
    assert attacks.import_any(own, gray, attack="sp").attack == "sp"


def test_bad_pngs_are_refused_naming_the_file(tmp_path, gray):
    save_pngs(tmp_path / "png", gray.images, range(len(gray)))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "png" / "3.png")
    msg = refused("image is 12x10", attacks.import_any, tmp_path / "png", gray, attack="ops")
    assert "3.png" in msg
    (tmp_path / "png" / "3.png").write_bytes(b"not a png")
    refused("3.png: cannot read PNG", attacks.import_any, tmp_path / "png", gray, attack="ops")
    Image.fromarray(np.zeros((12, 12, 3), np.uint8) + np.array([0, 9, 0], np.uint8)).save(tmp_path / "png" / "3.png")
    refused("3.png: a colour PNG", attacks.import_any, tmp_path / "png", gray, attack="ops")
    (tmp_path / "png" / "3.png").unlink()
    Image.fromarray(gray.images[0, 0].numpy()).save(tmp_path / "png" / f"{len(gray) + 2}.png")
    refused("past the end", attacks.import_any, tmp_path / "png", gray, attack="ops", allow_missing=True)


def test_cli_refuses_flags_that_do_not_apply(tmp_path, gray, monkeypatch, capsys):
    monkeypatch.setattr("st_fast.data.load_dataset", lambda *a, **k: gray)
    np.save(tmp_path / "u8.npy", gray.images.numpy())
    src, out = str(tmp_path / "u8.npy"), str(tmp_path / "o.pt")
    cases = [(["--attack", "sp", "--from", src, "--ratio", "0.5"], "--ratio does not apply with --from"),
             (["--attack", "sp", "--from", src, "--seed", "1", "--subset", "9"], "--seed, --subset do not apply"),
             (["--attack", "sp", "--kind", "delta"], "--kind does not apply without --from"),
             (["--attack", "sp", "--from", str(tmp_path / "none.npy")], "none.npy: no such file"),
             (["--attack", "nosuchattack", "--from", src], "unknown attack"),
             (["--from", src, "--label", "mine", "--norm", "linf"], "pass --norm and --eps")]
    for argv, needle in cases:
        assert cli.main(["poison", *argv, "--out", out]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)
    assert cli.main(["poison", "--from", src, "--label", "clean copy", "--norm", "linf", "--eps", "1/255",
                     "--out", out]) == 0
    meta = attacks.load(out, dataset=gray).meta
    assert meta["attack"] == "clean copy" and meta["info"]["foreign"] is True
