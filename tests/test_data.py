import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from st_fast.data import load_dataset
from st_fast.errors import DataNotFoundError, UserError

from .helpers import write_idx as _write_idx


def test_fashion_mnist_idx(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels)
    ds = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs.astype(np.uint8)))
    assert torch.equal(ds.labels, torch.from_numpy(labels))
    assert ds.num_classes == 10 and ds.channels == 1


def test_truncated_idx_is_rejected(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.zeros(5))
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", 5, 28, 28) + b"\x00" * 100)
    with pytest.raises(UserError, match="truncated"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def _cifar_batch(n, rng, key):
    return {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), key: list(rng.integers(0, 10, n))}


def test_cifar10_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    batches = []
    for i in range(1, 6):
        b = _cifar_batch(3, rng, "labels")
        batches.append(b)
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(b))
    (d / "test_batch").write_bytes(pickle.dumps(_cifar_batch(4, rng, "labels")))
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"k{i}" for i in range(10)]}))
    train = load_dataset("cifar10", "train", root=tmp_path)
    assert train.images.shape == (15, 3, 32, 32)
    # CIFAR rows are channel-major 32x32 planes
    assert torch.equal(train.images[0], torch.from_numpy(batches[0]["data"][0].reshape(3, 32, 32)))
    assert train.labels.tolist()[:3] == [int(v) for v in batches[0]["labels"]]
    assert train.classes[0] == "k0"
    assert len(load_dataset("cifar10", "test", root=tmp_path)) == 4


def test_cifar100_pickles(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(2)
    for split, n in (("train", 5), ("test", 2)):
        b = {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
             "fine_labels": list(rng.integers(0, 100, n)), "coarse_labels": [0] * n}
        (d / split).write_bytes(pickle.dumps(b))
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"f{i}" for i in range(100)]}))
    ds = load_dataset("cifar100", "train", root=tmp_path)
    assert ds.images.shape == (5, 3, 32, 32) and ds.num_classes == 100


def test_svhn_mat(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (32, 32, 3, 6)).astype(np.uint8)
    y = np.array([[10], [1], [2], [3], [4], [5]])
    (tmp_path / "svhn").mkdir()
    savemat(str(tmp_path / "svhn" / "test_32x32.mat"), {"X": x, "y": y})
    ds = load_dataset("svhn", "test", root=tmp_path)
    assert ds.images.shape == (6, 3, 32, 32)
    assert ds.labels.tolist() == [0, 1, 2, 3, 4, 5]  # label 10 means digit 0
    assert torch.equal(ds.images[1], torch.from_numpy(x[:, :, :, 1]).permute(2, 0, 1))


def test_imagenet_mini_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(4)
    for c in ("n001", "n002", "n003"):
        (tmp_path / "imagenet-mini" / "val" / c).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imagenet-mini" / "val" / c / f"{i}.png")
    ds = load_dataset("imagenet-mini", "test", root=tmp_path, num_classes=2, image_size=32)
    assert ds.images.shape == (4, 3, 32, 32)
    assert ds.classes == ["n001", "n002"] and ds.labels.tolist() == [0, 0, 1, 1]


def test_missing_dataset_names_places_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("ST_FAST_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path / "root")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "--download" in msg and "--data-root" in msg


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("mnist-but-wrong")


@pytest.mark.parametrize("subset", [None, list(range(0, 120, 2))])
def test_training_indices_are_the_images_prepare_data_trains_on(tiny_fashion, tmp_path, subset):
    from st_fast.attacks import generate
    from st_fast.config import TrainConfig
    from st_fast.data import prepare_data, training_indices

    clean = load_dataset("fashion-mnist", "train", root=tiny_fashion)
    poison = None
    if subset is not None:   # a poison made for a subset: training is drawn from that subset
        ps = generate("sp", clean, subset=len(subset), seed=0)
        subset = ps.meta["subset"]
        poison = str(ps.save(tmp_path / "sp.pt"))
    cfg = TrainConfig(dataset="fashion-mnist", data_root=str(tiny_fashion), train_subset=40, val_size=10,
                      seed=3, poison=poison)
    train, _, val = prepare_data(cfg, with_val=True)
    idx, val_idx = training_indices(cfg, clean, subset)
    assert torch.equal(train.labels, clean.labels[idx]) and torch.equal(val.images, clean.images[val_idx])
    if subset is not None:
        assert torch.equal(train.images, ps.images[idx]) and bool(torch.isin(idx, torch.as_tensor(subset)).all())
    else:
        assert torch.equal(train.images, clean.images[idx])
