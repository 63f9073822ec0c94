"""Poison files in a bench config (issue 18): imported once as `st-fast poison --from` imports
them, trained on like a generated attack, their SHA-256 in every result."""

import hashlib

import numpy as np
import pytest

from st_fast import attacks
from st_fast.bench import parse_config, run_bench
from st_fast.data import load_dataset
from st_fast.errors import UserError


def _raw(root, files, **kw):
    cfg = {"name": "files", "dataset": "fashion-mnist", "attacks": list(files), "defences": ["nt"],
           "seeds": [0], "data_root": str(root), "poison_files": files,
           "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "optimizer": "torch"}}
    return {**cfg, **kw}


@pytest.fixture
def sp_files(tiny_fashion, tmp_path):
    """The same SP poison twice: as an st_fast file and as uint8 images in a .npy."""
    ps = attacks.generate("sp", load_dataset("fashion-mnist", "train", root=tiny_fashion), seed=0)
    ours = ps.save(tmp_path / "sp.pt")
    npy = tmp_path / "sp_images.npy"
    np.save(npy, ps.images.numpy())
    return ours, npy, ps


def test_a_bench_trains_on_poison_files_and_records_their_checksum(tiny_fashion, tmp_path, sp_files, one_thread):
    ours, npy, ps = sp_files
    files = {"sp-ours": {"path": str(ours)},
             "sp-npy": {"path": str(npy), "attack": "sp", "norm": ps.meta["norm"], "eps": ps.meta["eps"]}}
    cfg = parse_config(_raw(tiny_fashion, files))
    results = {r["attack"]: r for r in run_bench(cfg, tmp_path / "b", device="cpu", quiet=True)}
    assert set(results) == {"sp-ours", "sp-npy"}
    for name, path in (("sp-ours", ours), ("sp-npy", npy)):
        assert results[name]["poison_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert results[name]["poison_file"] == str(path.resolve())
    # the same images, however they came in: the same training run
    assert results["sp-ours"]["test_acc_curve"] == results["sp-npy"]["test_acc_curve"]
    assert attacks.load(tmp_path / "b" / "poisons" / "sp-npy.pt").images.equal(ps.images)
    assert "| sp-npy |" in (tmp_path / "b" / "results.md").read_text()
    # the file changes after the study imported it: refused before any work
    np.save(npy, np.flip(ps.images.numpy(), 0).copy())
    with pytest.raises(UserError, match="poison_files.sp-npy: .* is not what this study imported"):
        run_bench(parse_config(_raw(tiny_fashion, files, defences=["nt", "nt-cg"])), tmp_path / "b",
                  device="cpu", quiet=True)


@pytest.mark.parametrize("entry,message", [
    ({"path": "missing.npy"}, "no such file or folder"),
    ({}, "needs a 'path'"),
    ({"path": "SP", "ratio": 2}, "ratio must be a number in"),
])
def test_bad_poison_file_entries_are_refused_at_parse(tiny_fashion, sp_files, entry, message):
    entry = {k: str(sp_files[0]) if v == "SP" else v for k, v in entry.items()}
    with pytest.raises(UserError, match=f"poison_files.x: .*{message}"):
        parse_config(_raw(tiny_fashion, {"x": entry}))


def test_poison_file_names_and_listing(tiny_fashion, sp_files):
    with pytest.raises(UserError, match="poison_files.sp: the name is taken by an attack"):
        parse_config(_raw(tiny_fashion, {"sp": {"path": str(sp_files[0])}}))
    with pytest.raises(UserError, match="poison_files.x: not in 'attacks'"):
        parse_config(_raw(tiny_fashion, {"x": {"path": str(sp_files[0])}}, attacks=["clean"]))
    cfg = parse_config(_raw(tiny_fashion, {"x": {"path": str(sp_files[0]), "ratio": 0.5}},
                            attacks=["clean", "x", "sp"], ratios=[1.0, 0.25]))
    # a file has one ratio (its own); a generated attack one cell per ratio
    assert [c.id for c in cfg.cells()] == ["clean-small-resnet-nt-s0", "x-r0.5-small-resnet-nt-s0", "sp-r1-small-resnet-nt-s0",
                                           "sp-r0.25-small-resnet-nt-s0"]


def test_a_bad_import_option_or_ratio_stops_the_bench_before_training(tiny_fashion, tmp_path, sp_files):
    ours, npy, _ = sp_files
    cfg = parse_config(_raw(tiny_fashion, {"x": {"path": str(npy), "colour": "blue"}}, attacks=["clean", "x"]))
    with pytest.raises(UserError, match="poison_files.x: .*colour.*st-fast poison --from"):
        run_bench(cfg, tmp_path / "b", device="cpu", quiet=True)
    cfg = parse_config(_raw(tiny_fashion, {"x": {"path": str(ours), "ratio": 0.5}}, attacks=["clean", "x"]))
    with pytest.raises(UserError, match="poisons 120/120 samples .* not the declared ratio 0.5"):
        run_bench(cfg, tmp_path / "c", device="cpu", quiet=True)
    assert not list((tmp_path / "b").glob("cells/*")) and not list((tmp_path / "c").glob("cells/*"))
