"""Corrupt, truncated, missing, misplaced, mislabelled and malicious inputs."""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import _fixtures as fx
from memdistill.data import load_dataset, locate_dataset
from memdistill.data.cifar import CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES
from memdistill.errors import DataError, DataNotFoundError, IntegrityError

T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def rng():
    return np.random.default_rng(99)


@pytest.fixture
def mnist_copy(data_root, tmp_path) -> Path:
    """A writable copy of the real MNIST test files under tmp_path/MNIST/raw."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in T10K:
        shutil.copyfile(data_root / "MNIST" / "raw" / name, raw / name)
        os.chmod(raw / name, 0o644)
    return raw


# ------------------------------------------------------------------- real files broken
def test_modified_payload_fails_checksum(mnist_copy, tmp_path):
    path = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    payload = bytearray(gzip.decompress(path.read_bytes()))
    payload[100] = (payload[100] + 1) % 10  # a valid gzip of slightly wrong data
    path.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(IntegrityError) as err:
        load_dataset("mnist", "test", root=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and "checksum mismatch" in msg
    assert "ec29112dd5afa0611ce80d1b7f02629c" in msg  # expected md5
    assert "download=True" in msg  # how to fix
    status = locate_dataset("mnist", root=tmp_path, split="test")
    assert not status.found and str(path) in status.problem and "\n" not in status.problem


def test_appended_bytes_fail(mnist_copy, tmp_path):
    path = mnist_copy / "t10k-images-idx3-ubyte.gz"
    with open(path, "ab") as fh:
        fh.write(b"tail")
    with pytest.raises(IntegrityError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", root=tmp_path)


def test_flipped_byte_fails(mnist_copy, tmp_path):
    path = mnist_copy / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", root=tmp_path)


def test_truncated_gzip(mnist_copy, tmp_path):
    path = mnist_copy / "t10k-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError) as err:
        load_dataset("mnist", "test", root=tmp_path)
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_missing_file_names_it_and_where_it_looked(mnist_copy, tmp_path):
    (mnist_copy / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", "test", root=tmp_path)
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "t10k-images-idx3-ubyte.gz" not in msg.splitlines()[0]
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "download=True" in msg and "MEMDISTILL_DATA" in msg
    assert isinstance(err.value, FileNotFoundError)  # callers may catch the builtin


def test_wrong_layout_is_explained(mnist_copy, tmp_path):
    wrong = tmp_path / "downloads" / "mnist"
    wrong.mkdir(parents=True)
    for name in T10K:
        (mnist_copy / name).rename(wrong / name)
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", "test", root=tmp_path)
    msg = str(err.value)
    assert str(wrong / T10K[0]) in msg  # where the files actually are
    assert "<root>/MNIST/raw/" in msg  # where they belong


# ------------------------------------------------------------------ malicious pickles
class _Payload:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "nested"])
def test_code_execution_pickle_is_refused_without_running(tmp_path, rng, kind):
    w = fx.write_cifar10(tmp_path, rng)
    marker = tmp_path / "pwned"
    if kind == "os.system":
        evil = _Payload(os.system, f"touch {marker}")
    elif kind == "builtins.exec":
        evil = _Payload(builtins.exec, f"open({str(marker)!r}, 'w').write('x')")
    else:  # hidden inside an otherwise normal-looking batch
        evil = {"data": np.zeros((1, 3072), np.uint8), "labels": [0],
                "filenames": _Payload(os.system, f"touch {marker}")}
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps(evil, protocol=2))
    sums = {**w.checksums, "data_batch_1": fx.md5(batch)}  # the checksum passes
    with pytest.raises(IntegrityError) as err:
        load_dataset("cifar10", "train", root=tmp_path, checksums=sums)
    assert str(batch) in str(err.value) and "refuses" in str(err.value)
    assert not marker.exists()


def test_official_checksum_stops_a_swapped_pickle_before_unpickling(tmp_path, rng):
    fx.write_cifar10(tmp_path, rng)
    marker = tmp_path / "pwned"
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps(_Payload(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        load_dataset("cifar10", "test", root=tmp_path)  # official table
    assert not marker.exists()


# ------------------------------------------------------------- mislabelled / miscounted
def _idx_fixture(tmp_path, images, labels):
    return fx.write_idx_pair(tmp_path / "MNIST" / "raw", "t10k", images, labels)


def test_label_out_of_range(tmp_path):
    sums = _idx_fixture(tmp_path, np.zeros((4, 28, 28), np.uint8), np.array([1, 2, 10, 3], np.uint8))
    with pytest.raises(IntegrityError, match=r"label 10 at index 2 is outside 0\.\.9") as err:
        load_dataset("mnist", "test", root=tmp_path, checksums=sums)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)


def test_image_and_label_counts_differ(tmp_path):
    sums = _idx_fixture(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(IntegrityError, match="5 images but .* 4 labels"):
        load_dataset("mnist", "test", root=tmp_path, checksums=sums)


def test_header_count_disagrees_with_length(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    sums = _idx_fixture(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8))
    payload = fx.idx_bytes(np.zeros((5, 28, 28), np.uint8))[:-28]  # one row short
    sums["t10k-images-idx3-ubyte"] = fx.md5(fx.write_gz(raw / "t10k-images-idx3-ubyte.gz", payload))
    with pytest.raises(IntegrityError, match="truncated or padded"):
        load_dataset("mnist", "test", root=tmp_path, checksums=sums)


def test_swapped_files_have_bad_magic(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    sums = _idx_fixture(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8))
    images, labels = raw / "t10k-images-idx3-ubyte.gz", raw / "t10k-labels-idx1-ubyte.gz"
    tmp = raw / "swap"
    images.rename(tmp)
    labels.rename(images)
    tmp.rename(labels)
    swapped = {"t10k-images-idx3-ubyte": sums["t10k-labels-idx1-ubyte"],
               "t10k-labels-idx1-ubyte": sums["t10k-images-idx3-ubyte"]}
    with pytest.raises(IntegrityError, match="bad idx magic number 0x00000801, expected 0x00000803"):
        load_dataset("mnist", "test", root=tmp_path, checksums=swapped)


def test_wrong_image_size_in_header(tmp_path):
    sums = _idx_fixture(tmp_path, np.zeros((2, 32, 32), np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(IntegrityError, match=r"\(32, 32\), expected \(28, 28\)"):
        load_dataset("mnist", "test", root=tmp_path, checksums=sums)


def test_cifar_label_out_of_range_and_bad_shape(tmp_path, rng):
    w = fx.write_cifar100(tmp_path, rng, list(CIFAR100_FINE_CLASSES), list(CIFAR100_COARSE_CLASSES))
    path = tmp_path / "cifar-100-python" / "test"
    batch = {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [3, 100], "coarse_labels": [0, 1]}
    path.write_bytes(fx.pickle_bytes(batch))
    sums = {**w.checksums, "test": fx.md5(path)}
    with pytest.raises(IntegrityError, match=r"'fine_labels'\[1\] = 100 is outside 0\.\.99"):
        load_dataset("cifar100", "test", root=tmp_path, checksums=sums)
    batch = {"data": np.zeros((2, 3000), np.uint8), "fine_labels": [3, 1], "coarse_labels": [0, 1]}
    path.write_bytes(fx.pickle_bytes(batch))
    sums["test"] = fx.md5(path)
    with pytest.raises(IntegrityError, match=r"uint8 array \(N, 3072\)"):
        load_dataset("cifar100", "test", root=tmp_path, checksums=sums)
    batch = {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [3], "coarse_labels": [0, 1]}
    path.write_bytes(fx.pickle_bytes(batch))
    sums["test"] = fx.md5(path)
    with pytest.raises(IntegrityError, match="2 images but 1 entries"):
        load_dataset("cifar100", "test", root=tmp_path, checksums=sums)


def test_cifar_truncated_pickle(tmp_path, rng):
    w = fx.write_cifar10(tmp_path, rng)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    sums = {**w.checksums, "test_batch": fx.md5(path)}
    with pytest.raises(IntegrityError, match="could not be unpickled"):
        load_dataset("cifar10", "test", root=tmp_path, checksums=sums)


def test_svhn_label_out_of_range(tmp_path, rng):
    import scipy.io

    folder = tmp_path / "SVHN"
    folder.mkdir()
    path = folder / "test_32x32.mat"
    y = np.array([[1], [11], [10]], np.uint8)
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 3), np.uint8), "y": y})
    with pytest.raises(IntegrityError, match=r"y\[1\] = 11 is outside 1\.\.10"):
        load_dataset("svhn", "test", root=tmp_path, checksums={path.name: fx.md5(path)})
    path.write_bytes(b"MATLAB 5.0 but not really")
    with pytest.raises(IntegrityError, match="not a readable MATLAB file"):
        load_dataset("svhn", "test", root=tmp_path, checksums={path.name: fx.md5(path)})


# -------------------------------------------------------------------- Tiny ImageNet
@pytest.fixture
def tiny(tmp_path, rng):
    w = fx.write_tiny_imagenet(tmp_path, rng, gray_first=False)
    return tmp_path / "tiny-imagenet-200", w.extra["options"]


def test_tiny_corrupt_jpeg(tiny):
    top, opts = tiny
    bad = top / "val" / "images" / "val_3.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(IntegrityError, match="val_3.JPEG"):
        load_dataset("tiny-imagenet", "test", root=top.parent, **opts)


def test_tiny_wrong_image_size(tiny):
    top, opts = tiny
    path = next((top / "train").glob("*/images/*_1.JPEG"))
    Image.new("RGB", (32, 32)).save(path, format="JPEG")
    with pytest.raises(IntegrityError, match=f"{path.name} is 32x32, expected 64x64"):
        load_dataset("tiny-imagenet", "train", root=top.parent, **opts)


def test_tiny_annotation_without_file(tiny):
    top, opts = tiny
    (top / "val" / "images" / "val_0.JPEG").unlink()
    with pytest.raises(IntegrityError, match="val_0.JPEG is listed in val_annotations.txt but missing"):
        load_dataset("tiny-imagenet", "test", root=top.parent, **opts)


def test_tiny_wrong_count_per_class(tiny):
    top, opts = tiny
    next((top / "train").glob("*/images/*_2.JPEG")).unlink()
    with pytest.raises(IntegrityError, match="holds 3 JPEGs, expected 4"):
        load_dataset("tiny-imagenet", "train", root=top.parent, **opts)
    assert not locate_dataset("tiny-imagenet", root=top.parent, **opts).found


def test_tiny_missing_folder(tiny):
    top, opts = tiny
    shutil.rmtree(top / "val")
    with pytest.raises(DataNotFoundError, match="val_annotations.txt"):
        load_dataset("tiny-imagenet", "test", root=top.parent, **opts)
    # the train split does not need val/
    assert len(load_dataset("tiny-imagenet", "train", root=top.parent, **opts)) == 12


def test_every_failure_is_a_data_error():
    assert issubclass(IntegrityError, DataError) and issubclass(DataNotFoundError, DataError)
