"""MNIST and Fashion-MNIST: 28x28 grayscale digits / clothes in the idx format.

Files (torchvision layout): ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
and the same names under ``<root>/FashionMNIST/raw/``; uncompressed copies (no ``.gz``)
are accepted too. Fashion-MNIST is also found flat in a folder (``<root>/*.gz`` or
``<root>/raw/*.gz``), as Debian's ``dataset-fashion-mnist`` package installs it.

The idx format: two zero bytes, a type byte (``0x08`` = unsigned byte), the number of
dimensions, each dimension as a big-endian uint32, then the values row-major.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import IntegrityError
from ._base import ImageDataset
from ._integrity import FileChecksum
from ._registry import DATASETS, FileSetSpec, LoadOptions

__all__ = ["MNIST", "FASHION_MNIST", "IdxSpec", "parse_idx"]

_IMAGE_BYTES = 28 * 28
_UBYTE = 0x08


def parse_idx(payload: bytes, path: Path, ndim: int, item_shape: tuple[int, ...] = ()) -> np.ndarray:
    """Decode an idx payload of unsigned bytes with ``ndim`` dimensions.

    Checks the magic number, the dimension count, the per-item shape and that the payload
    length equals header plus data exactly.

    Returns:
        ``uint8`` array of the shape in the header (read-only view on ``payload``).

    Raises:
        IntegrityError: any mismatch; the message names ``path``.
    """
    magic = 0x0800 | ndim
    header = 4 + 4 * ndim
    if len(payload) < 4:
        raise IntegrityError(f"{path}: {len(payload)} bytes, too short for an idx file")
    if payload[0] != 0 or payload[1] != 0 or payload[2] != _UBYTE or payload[3] != ndim:
        found = struct.unpack(">I", payload[:4])[0]
        raise IntegrityError(
            f"{path}: bad idx magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}); wrong or corrupt file"
        )
    if len(payload) < header:
        raise IntegrityError(f"{path}: {len(payload)} bytes, too short for an idx header ({header} bytes)")
    dims = struct.unpack(f">{ndim}I", payload[4:header])
    if tuple(dims[1:]) != tuple(item_shape):
        raise IntegrityError(f"{path}: items of shape {tuple(dims[1:])}, expected {tuple(item_shape)}")
    expected = header + math.prod(dims)
    if len(payload) != expected:
        raise IntegrityError(
            f"{path}: header announces {dims[0]} items ({expected} bytes) but the data holds "
            f"{len(payload)} bytes; the file is truncated or padded"
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims)


class IdxSpec(FileSetSpec):
    """An MNIST-like dataset: one idx image file and one idx label file per split."""

    image_shape = (1, 28, 28)
    num_classes = 10
    prefixes = {"train": "train", "test": "t10k"}

    def __init__(self, checksums: dict[str, FileChecksum]) -> None:
        self._checksums = dict(checksums)

    def checksum_table(self) -> dict[str, FileChecksum]:
        return dict(self._checksums)

    def checksum_key(self, key: str) -> str:
        return key.removesuffix(".gz")

    def split_files(self, split: str) -> tuple[str, ...]:
        p = self.prefixes[split]
        return (f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte")

    def candidates(self, logical: str) -> tuple[str, ...]:
        return (f"{logical}.gz", logical)

    def parse(self, payloads, paths, split, opts: LoadOptions) -> ImageDataset:
        image_name, label_name = self.split_files(split)
        images = parse_idx(payloads[image_name], paths[image_name], 3, (28, 28))
        labels = parse_idx(payloads[label_name], paths[label_name], 1)
        if len(images) != len(labels):
            raise IntegrityError(
                f"{paths[image_name]} holds {len(images)} images but {paths[label_name]} holds "
                f"{len(labels)} labels; the two files do not belong together"
            )
        if labels.size and int(labels.max()) >= self.num_classes:
            bad = int(np.argmax(labels >= self.num_classes))
            raise IntegrityError(
                f"{paths[label_name]}: label {int(labels[bad])} at index {bad} is outside "
                f"0..{self.num_classes - 1}; the file is corrupt or mislabelled"
            )
        return ImageDataset(
            name=self.name,
            split=split,
            images=torch.from_numpy(images.reshape(-1, *self.image_shape).copy()),
            labels=torch.from_numpy(labels.astype(np.int64)),
            classes=tuple(self.classes),
            mean=tuple(self.mean),
            std=tuple(self.std),
        )


def _gz(md5: str, sha256: str, size: int) -> FileChecksum:
    return FileChecksum(md5=md5, payload_sha256=sha256, payload_size=size)


_IMAGES_TRAIN, _LABELS_TRAIN = 60000 * _IMAGE_BYTES + 16, 60000 + 8
_IMAGES_TEST, _LABELS_TEST = 10000 * _IMAGE_BYTES + 16, 10000 + 8


class _MNIST(IdxSpec):
    name = "mnist"
    title = "MNIST"
    classes = tuple(str(d) for d in range(10))
    mean, std = (0.1307,), (0.3081,)
    mirrors = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
    layouts = ("MNIST/raw", "MNIST")


class _FashionMNIST(IdxSpec):
    name = "fashion-mnist"
    title = "Fashion-MNIST"
    classes = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )
    mean, std = (0.2861,), (0.3530,)
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    # Flat layouts last: Debian's /usr/share/datasets/fashion-mnist holds the .gz files directly.
    layouts = ("FashionMNIST/raw", "FashionMNIST", "raw", "")


# md5: the official .gz files; sha256: the decompressed idx payload (any gzip of it passes).
MNIST = _MNIST({
    "train-images-idx3-ubyte": _gz(
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", _IMAGES_TRAIN),
    "train-labels-idx1-ubyte": _gz(
        "d53e105ee54ea40749a09fcbcd1e9432",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", _LABELS_TRAIN),
    "t10k-images-idx3-ubyte": _gz(
        "9fb629c4189551a2d022fa330f9573f3",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", _IMAGES_TEST),
    "t10k-labels-idx1-ubyte": _gz(
        "ec29112dd5afa0611ce80d1b7f02629c",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", _LABELS_TEST),
})

FASHION_MNIST = _FashionMNIST({
    "train-images-idx3-ubyte": _gz(
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", _IMAGES_TRAIN),
    "train-labels-idx1-ubyte": _gz(
        "25c81989df183df01b3e8a0aad5dffbe",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", _LABELS_TRAIN),
    "t10k-images-idx3-ubyte": _gz(
        "bef4ecab320f06d8554ea6380940ec79",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", _IMAGES_TEST),
    "t10k-labels-idx1-ubyte": _gz(
        "bb300cfdad3c16e7a12a480ee83cd310",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", _LABELS_TEST),
})

DATASETS.register(MNIST.name)(MNIST)
DATASETS.register(FASHION_MNIST.name)(FASHION_MNIST)
