"""MNIST and Fashion-MNIST from the real files: shapes, counts, lookup, splits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from memdistill.data import (
    ImageDataset,
    dataset_info,
    load_dataset,
    locate_dataset,
    resolve_roots,
    train_val_split,
)
from memdistill.data import _root
from memdistill.errors import ConfigError, DataNotFoundError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FASHION_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def fashion_test(fashion_root):
    return load_dataset("fashion-mnist", split="test", root=fashion_root)


def test_mnist_train(mnist_train):
    assert mnist_train.images.shape == (60000, 1, 28, 28)
    assert mnist_train.images.dtype == torch.uint8
    assert mnist_train.labels.dtype == torch.int64
    assert mnist_train.class_counts().tolist() == MNIST_TRAIN_COUNTS
    assert mnist_train.classes == tuple("0123456789")
    assert (mnist_train.mean, mnist_train.std) == ((0.1307,), (0.3081,))
    assert mnist_train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first digits
    assert int(mnist_train.images.max()) == 255 and int(mnist_train.images.min()) == 0


def test_mnist_test(mnist_test):
    assert mnist_test.images.shape == (10000, 1, 28, 28)
    assert mnist_test.split == "test" and mnist_test.name == "mnist"
    assert mnist_test.class_counts().tolist() == MNIST_TEST_COUNTS
    assert mnist_test.labels[:3].tolist() == [7, 2, 1]


def test_mnist_statistics_match_declared(mnist_train):
    x = mnist_train.normalize(mnist_train.images, dtype=torch.float64)
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.std()) - 1.0) < 1e-3


def test_fashion_mnist(fashion_root, fashion_test):
    train = load_dataset("FASHION-MNIST", split="train", root=fashion_root)  # names ignore case
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.class_counts().tolist() == [6000] * 10
    assert fashion_test.images.shape == (10000, 1, 28, 28)
    assert fashion_test.class_counts().tolist() == [1000] * 10
    assert fashion_test.classes[0] == "T-shirt/top" and fashion_test.classes[9] == "Ankle boot"
    assert (fashion_test.mean, fashion_test.std) == ((0.2861,), (0.3530,))


def test_locate_reports_found_and_verified(data_root, fashion_root):
    status = locate_dataset("mnist", root=data_root)
    assert status.found and status.problem is None
    assert status.path == data_root / "MNIST" / "raw"
    # The shared Fashion-MNIST .gz files are Debian's re-compressed copies: they only pass
    # through the payload sha256, so this exercises the fallback.
    status = locate_dataset("fashion-mnist", root=fashion_root)
    assert status.found, status.problem
    assert status.path == fashion_root / "FashionMNIST" / "raw"


def test_locate_reports_missing(tmp_path):
    status = locate_dataset("mnist", root=tmp_path)
    assert not status.found and status.path is None
    assert "train-images-idx3-ubyte.gz" in status.problem
    assert tmp_path / "MNIST" / "raw" in status.searched
    assert "\n" not in status.problem


# ----------------------------------------------------------------------- root lookup
def test_root_order_explicit_then_env_then_cwd(data_root, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEMDISTILL_DATA", str(elsewhere))
    assert resolve_roots(data_root) == [data_root]
    assert resolve_roots() == [elsewhere]
    monkeypatch.delenv("MEMDISTILL_DATA")
    assert resolve_roots() == [tmp_path / "data"]
    assert resolve_roots(dataset="mnist") == [tmp_path / "data"]


def test_loading_follows_the_lookup_order(data_root, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(tmp_path)
    # env points at the real data: found without an argument
    monkeypatch.setenv("MEMDISTILL_DATA", str(data_root))
    assert locate_dataset("mnist", split="test").path == data_root / "MNIST" / "raw"
    # an explicit root wins over the env var
    with pytest.raises(DataNotFoundError):
        load_dataset("mnist", split="test", root=empty)
    # env wins over ./data
    (tmp_path / "data").symlink_to(data_root, target_is_directory=True)
    monkeypatch.setenv("MEMDISTILL_DATA", str(empty))
    assert not locate_dataset("mnist", split="test").found
    # without env, ./data is used
    monkeypatch.delenv("MEMDISTILL_DATA")
    ds = load_dataset("mnist", split="test")
    assert len(ds) == 10000


def _flat_copy(fashion_root: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in FASHION_TEST:
        (folder / name).symlink_to(fashion_root / "FashionMNIST" / "raw" / name)
    return folder


@pytest.mark.parametrize("sub", ["", "raw"])
def test_debian_flat_layout_as_explicit_root(fashion_root, fashion_test, tmp_path, sub):
    debian = tmp_path / "fashion-mnist"
    _flat_copy(fashion_root, debian / sub if sub else debian)
    ds = load_dataset("fashion-mnist", split="test", root=debian)
    assert torch.equal(ds.images, fashion_test.images)
    assert torch.equal(ds.labels, fashion_test.labels)


def test_debian_system_folder_is_searched_last(fashion_root, fashion_test, tmp_path, monkeypatch):
    debian = _flat_copy(fashion_root, tmp_path / "usr-share-datasets" / "fashion-mnist")
    monkeypatch.setattr(_root, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.delenv("MEMDISTILL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_roots(dataset="fashion-mnist") == [tmp_path / "data", debian]
    assert resolve_roots(dataset="mnist") == [tmp_path / "data"]
    assert resolve_roots(tmp_path, dataset="fashion-mnist") == [tmp_path]
    status = locate_dataset("fashion-mnist", split="test")
    assert status.found and status.path == debian
    ds = load_dataset("fashion-mnist", split="test")
    assert torch.equal(ds.labels, fashion_test.labels)


def test_debian_folder_ignored_when_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(_root, "DEBIAN_FASHION_MNIST", tmp_path / "nope")
    monkeypatch.delenv("MEMDISTILL_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_roots(dataset="fashion-mnist") == [tmp_path / "data"]


def test_env_var_may_list_several_folders(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMDISTILL_DATA", os.pathsep.join([str(tmp_path), str(data_root)]))
    assert resolve_roots() == [tmp_path, data_root]
    assert locate_dataset("mnist", split="test").path == data_root / "MNIST" / "raw"


# --------------------------------------------------------------------- validation split
def _indexed(train: ImageDataset) -> ImageDataset:
    """The real labels, with each image's index written into its first two pixels."""
    images = train.images.clone()
    idx = torch.arange(len(train))
    images[:, 0, 0, 0] = (idx // 256).to(torch.uint8)
    images[:, 0, 0, 1] = (idx % 256).to(torch.uint8)
    return ImageDataset(train.name, "train", images, train.labels, train.classes, train.mean, train.std)


def _indices(ds: ImageDataset) -> torch.Tensor:
    return ds.images[:, 0, 0, 0].long() * 256 + ds.images[:, 0, 0, 1].long()


def test_train_val_split_is_deterministic_disjoint_stratified(mnist_train):
    train = _indexed(mnist_train)
    part, val = train_val_split(train, val_fraction=0.1, seed=3)
    part2, val2 = train_val_split(train, val_fraction=0.1, seed=3)
    _, val_other = train_val_split(train, val_fraction=0.1, seed=4)
    tr_idx, va_idx = _indices(part), _indices(val)
    assert torch.equal(va_idx, _indices(val2)) and torch.equal(tr_idx, _indices(part2))
    assert not torch.equal(va_idx, _indices(val_other))
    assert val.split == "val" and part.split == "train"
    assert len(set(tr_idx.tolist()) & set(va_idx.tolist())) == 0
    assert sorted(tr_idx.tolist() + va_idx.tolist()) == list(range(len(train)))
    # labels follow their images
    assert torch.equal(val.labels, train.labels[va_idx])
    # stratified: each class gives round(10 %) of its images
    expected = [round(c * 0.1) for c in MNIST_TRAIN_COUNTS]
    assert val.class_counts().tolist() == expected


def test_train_val_split_refuses_test_split(mnist_test):
    with pytest.raises(ConfigError, match="train"):
        train_val_split(mnist_test)


def test_normalize_denormalize_round_trip(mnist_test):
    images = mnist_test.images[:256]
    x = mnist_test.normalize(images)
    assert x.dtype == torch.float32 and x.shape == images.shape
    back = (mnist_test.denormalize(x) * 255).round().to(torch.uint8)
    assert torch.equal(back, images)


def test_info_matches_loaded(mnist_test):
    info = dataset_info("mnist")
    assert info.image_shape == mnist_test.image_shape
    assert info.classes == mnist_test.classes and info.num_classes == 10
    assert "MNIST/raw/t10k-images-idx3-ubyte.gz" in info.files
