"""Every loader on small files written in its canonical format (tests/_fixtures.py).

The fixtures cannot match the official checksums, so they are loaded with
``checksums=`` overrides; the parsing code is the same that reads the real files.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import _fixtures as fx
from memdistill.data import (
    DATASETS,
    DatasetInfo,
    FileChecksum,
    dataset_info,
    list_datasets,
    load_dataset,
    locate_dataset,
)
from memdistill.data.cifar import CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES
from memdistill.data.mnist import parse_idx
from memdistill.errors import ConfigError, IntegrityError, UnknownNameError

NAMES = ["cifar10", "cifar100", "fashion-mnist", "mnist", "svhn", "tiny-imagenet"]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _assert_same(ds, images, labels):
    assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
    assert torch.equal(ds.images, torch.from_numpy(np.asarray(images)))
    assert ds.labels.tolist() == np.asarray(labels).tolist()


# ------------------------------------------------------------------------- registry
def test_registry_lists_every_dataset():
    assert list_datasets() == NAMES
    assert sorted(DATASETS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_dataset_info(name):
    info = dataset_info(name.upper())
    assert isinstance(info, DatasetInfo) and info.name == name
    c, h, w = info.image_shape
    assert len(info.mean) == len(info.std) == c
    assert all(0 < s < 1 for s in info.std)
    assert info.files and info.mirrors
    if name != "tiny-imagenet":  # its names come from the files
        assert len(info.classes) == info.num_classes == len(set(info.classes))


def test_info_constants():
    assert dataset_info("cifar10").mean == (0.4914, 0.4822, 0.4465)
    assert dataset_info("cifar100").std == (0.2673, 0.2564, 0.2762)
    assert dataset_info("svhn").classes == tuple("0123456789")
    assert dataset_info("tiny-imagenet").image_shape == (3, 64, 64)
    assert dataset_info("fashion-mnist").classes[:2] == ("T-shirt/top", "Trouser")
    assert len(CIFAR100_FINE_CLASSES) == 100 and len(CIFAR100_COARSE_CLASSES) == 20


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UnknownNameError) as err:
        load_dataset("cifar-10")
    for name in NAMES:
        assert name in str(err.value)


def test_bad_split_and_options(tmp_path):
    with pytest.raises(ConfigError, match="train, test"):
        load_dataset("mnist", split="val", root=tmp_path)
    with pytest.raises(ConfigError, match="valid options: checksums"):
        load_dataset("mnist", root=tmp_path, labels="fine")
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", root=tmp_path, checksums={"nope.gz": "0" * 32})
    with pytest.raises(ConfigError, match="32 hex"):
        load_dataset("mnist", root=tmp_path, checksums={"t10k-labels-idx1-ubyte": "abc"})
    with pytest.raises(ConfigError, match="fine"):
        load_dataset("cifar100", root=tmp_path, labels="medium")
    with pytest.raises(ConfigError, match="scheme"):
        load_dataset("mnist", root=tmp_path, mirrors=["ftp://example.org/"])


# ---------------------------------------------------------------------------- MNIST
@pytest.mark.parametrize("compressed", [True, False])
def test_mnist_format_round_trip(tmp_path, rng, compressed):
    w = fx.write_mnist(tmp_path, rng, compressed=compressed)
    for split in ("train", "test"):
        ds = load_dataset("mnist", split, root=tmp_path, checksums=w.checksums)
        _assert_same(ds, w.images[split], w.labels[split])
        assert ds.image_shape == (1, 28, 28)
    assert locate_dataset("mnist", root=tmp_path, checksums=w.checksums).found


def test_checksum_override_accepts_gz_names_and_objects(tmp_path, rng):
    w = fx.write_mnist(tmp_path, rng, folder="FashionMNIST/raw", sizes={"test": 10})
    sums = {f"{k}.gz": FileChecksum(md5=v) for k, v in w.checksums.items()}
    ds = load_dataset("fashion-mnist", "test", root=tmp_path, checksums=sums)
    _assert_same(ds, w.images["test"], w.labels["test"])


# ---------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("legacy_numpy", [True, False])
def test_cifar10_round_trip(tmp_path, rng, legacy_numpy):
    w = fx.write_cifar10(tmp_path, rng, legacy_numpy=legacy_numpy)
    for split in ("train", "test"):
        ds = load_dataset("cifar10", split, root=tmp_path, checksums=w.checksums)
        _assert_same(ds, w.images[split], w.labels[split])
        assert ds.classes == tuple(fx.CIFAR10_NAMES)
    assert len(ds) == 4 and ds.image_shape == (3, 32, 32)
    assert locate_dataset("cifar10", root=tmp_path, checksums=w.checksums).found


def test_cifar_row_layout_is_channel_major(tmp_path, rng):
    """A data row is the R plane, then G, then B, each 32x32 row-major."""
    w = fx.write_cifar10(tmp_path, rng, per_batch=1, n_test=2)
    rows = w.images["test"].reshape(2, 3072)
    ds = load_dataset("cifar10", "test", root=tmp_path, checksums=w.checksums)
    for c, r, col in [(0, 0, 0), (0, 5, 7), (1, 5, 7), (2, 31, 30), (1, 0, 31)]:
        assert int(ds.images[1, c, r, col]) == int(rows[1, c * 1024 + r * 32 + col])


def test_cifar100_fine_and_coarse(tmp_path, rng):
    # Names differ from the built-in list, proving they are read from the meta file.
    fine = [n.upper() for n in CIFAR100_FINE_CLASSES]
    coarse = [n.upper() for n in CIFAR100_COARSE_CLASSES]
    w = fx.write_cifar100(tmp_path, rng, fine, coarse)
    ds = load_dataset("cifar100", "train", root=tmp_path, checksums=w.checksums)
    _assert_same(ds, w.images["train"], w.labels["train"])
    assert ds.classes == tuple(fine)
    assert ds.extra_labels["fine"].tolist() == w.labels["train"].tolist()
    assert ds.extra_labels["coarse"].tolist() == w.extra["train_coarse"].tolist()
    assert ds.extra_classes == {"fine": tuple(fine), "coarse": tuple(coarse)}
    coarse_ds = load_dataset("cifar100", "test", root=tmp_path, checksums=w.checksums, labels="coarse")
    _assert_same(coarse_ds, w.images["test"], w.extra["test_coarse"])
    assert coarse_ds.classes == tuple(coarse) and coarse_ds.num_classes == 20
    assert torch.equal(coarse_ds.with_labels("fine").labels, torch.from_numpy(w.labels["test"]))


# ----------------------------------------------------------------------------- SVHN
@pytest.mark.parametrize("folder", ["SVHN", ""])
def test_svhn_round_trip_maps_ten_to_zero(tmp_path, rng, folder):
    w = fx.write_svhn(tmp_path, rng, folder=folder)
    for split in ("train", "test"):
        ds = load_dataset("svhn", split, root=tmp_path, checksums=w.checksums)
        _assert_same(ds, w.images[split], w.labels[split])
    assert 0 in ds.labels.tolist() and 10 not in ds.labels.tolist()
    status = locate_dataset("svhn", root=tmp_path, checksums=w.checksums)
    assert status.found and status.path == (tmp_path / folder if folder else tmp_path)


def test_svhn_axis_order(tmp_path, rng):
    w = fx.write_svhn(tmp_path, rng, sizes={"test": 3})
    x = w.images["test"].transpose(2, 3, 1, 0)  # back to the file's (H, W, C, N)
    ds = load_dataset("svhn", "test", root=tmp_path, checksums=w.checksums)
    assert int(ds.images[2, 1, 4, 9]) == int(x[4, 9, 1, 2])


# -------------------------------------------------------------------- Tiny ImageNet
def test_tiny_imagenet_round_trip(tmp_path, rng):
    w = fx.write_tiny_imagenet(tmp_path, rng)
    opts = w.extra["options"]
    for split in ("train", "test"):
        ds = load_dataset("tiny-imagenet", split, root=tmp_path, **opts)
        _assert_same(ds, w.images[split], w.labels[split])
        assert ds.image_shape == (3, 64, 64)
        assert ds.classes == tuple(w.extra["names"])
        assert ds.extra_classes["wnid"] == tuple(w.extra["wnids"])
    # the grayscale JPEGs come out as RGB with equal channels
    train = load_dataset("tiny-imagenet", "train", root=tmp_path, **opts)
    gray = train.images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert locate_dataset("tiny-imagenet", root=tmp_path, **opts).found


def test_tiny_imagenet_without_words_uses_wnids(tmp_path, rng):
    w = fx.write_tiny_imagenet(tmp_path, rng, gray_first=False)
    (tmp_path / "tiny-imagenet-200" / "words.txt").unlink()
    ds = load_dataset("tiny-imagenet", "test", root=tmp_path, **w.extra["options"])
    assert ds.classes == tuple(w.extra["wnids"])


def test_tiny_imagenet_defaults_demand_the_real_sizes(tmp_path, rng):
    fx.write_tiny_imagenet(tmp_path, rng)
    with pytest.raises(IntegrityError, match="3 classes, expected 200"):
        load_dataset("tiny-imagenet", "train", root=tmp_path)
    status = locate_dataset("tiny-imagenet", root=tmp_path)
    assert not status.found and "expected 200" in status.problem


# ------------------------------------------------------------------ idx, property-based
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 5), seed=st.integers(0, 2**32 - 1), cut=st.integers(1, 50))
def test_parse_idx_round_trips_and_rejects_any_truncation(tmp_path_factory, n, seed, cut):
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    payload = fx.idx_bytes(images)
    path = tmp_path_factory.getbasetemp() / "x.idx"
    assert np.array_equal(parse_idx(payload, path, 3, (28, 28)), images)
    with pytest.raises(IntegrityError, match="x.idx"):
        parse_idx(payload[: max(0, len(payload) - cut)], path, 3, (28, 28))
    with pytest.raises(IntegrityError, match="x.idx"):
        parse_idx(payload + bytes(cut), path, 3, (28, 28))
