"""CIFAR-10 and CIFAR-100 (the "python version" pickles).

Files (torchvision layout): ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
and ``<root>/cifar-100-python/{train,test,meta}``. Each batch is a Python 2 pickle of a
dict with ``data`` (``uint8 (N, 3072)``, a row is the red 32x32 plane, then green, then
blue, each row-major) and ``labels`` (CIFAR-100: ``fine_labels`` and ``coarse_labels``).

Every file is checked against its official md5 before it is unpickled, and unpickled with
a restricted unpickler that admits only what numpy arrays need. Downloads fetch the
official archive, verify its md5, and extract just the declared members.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, IntegrityError
from ._base import ImageDataset
from ._download import DownloadFailed, extract_tar_members, fetch_verified
from ._integrity import FileChecksum, safe_unpickle, verify_file
from ._registry import DATASETS, FileSetSpec, LoadOptions

__all__ = ["CIFAR10", "CIFAR100", "CIFAR100_FINE_CLASSES", "CIFAR100_COARSE_CLASSES"]

logger = logging.getLogger(__name__)

_ROW = 3 * 32 * 32

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)

# The order of ``fine_label_names`` / ``coarse_label_names`` in CIFAR-100's meta file;
# loading reads the names from the file, these serve dataset_info() without files.
CIFAR100_FINE_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest",
    "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower",
    "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit",
    "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower",
    "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train",
    "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _unpickle_dict(payload: bytes, path: Path, hint: str) -> dict[str, Any]:
    obj = safe_unpickle(payload, path, hint=hint)
    if not isinstance(obj, dict):
        raise IntegrityError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {_text(k): v for k, v in obj.items()}


def _field(batch: dict[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        raise IntegrityError(
            f"{path}: no {key!r} entry (keys: {', '.join(sorted(batch))}); not a CIFAR file"
        )
    return batch[key]


def _names(meta: dict[str, Any], key: str, count: int, path: Path) -> tuple[str, ...]:
    names = _field(meta, key, path)
    if not isinstance(names, (list, tuple)) or len(names) != count:
        raise IntegrityError(f"{path}: {key!r} must list {count} class names, found {names!r:.80}")
    return tuple(_text(n) for n in names)


def _labels(batch: dict[str, Any], key: str, n: int, num_classes: int, path: Path) -> np.ndarray:
    raw = _field(batch, key, path)
    try:
        labels = np.asarray(raw)
    except Exception:  # noqa: BLE001 - any odd content is an integrity problem
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise IntegrityError(f"{path}: {key!r} must be a list of integers")
    if len(labels) != n:
        raise IntegrityError(f"{path}: {n} images but {len(labels)} entries in {key!r}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(np.argmax((labels < 0) | (labels >= num_classes)))
        raise IntegrityError(
            f"{path}: {key!r}[{bad}] = {int(labels[bad])} is outside 0..{num_classes - 1}; "
            "the file is corrupt or mislabelled"
        )
    return labels.astype(np.int64)


def _images(batch: dict[str, Any], path: Path) -> np.ndarray:
    data = _field(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise IntegrityError(f"{path}: 'data' must be a uint8 array (N, {_ROW}), found {desc}")
    return data


class _CifarSpec(FileSetSpec):
    image_shape = (3, 32, 32)
    archive: str
    archive_md5: str
    mirrors = ("https://www.cs.toronto.edu/~kriz/",)
    meta_file: str
    files_by_split: dict[str, tuple[str, ...]]
    md5s: dict[str, str]

    def checksum_table(self) -> dict[str, FileChecksum]:
        table = {name: FileChecksum(md5=md5) for name, md5 in self.md5s.items()}
        table[self.archive] = FileChecksum(md5=self.archive_md5)
        return table

    def split_files(self, split: str) -> tuple[str, ...]:
        return (*self.files_by_split[split], self.meta_file)

    def missing_names(self, splits: Sequence[str]) -> set[str]:
        return super().missing_names(splits) | {self.archive}

    def download(self, root: Path, splits: Sequence[str], opts: LoadOptions) -> None:
        # The archive is the unit of download: fetch it once, extract every declared file.
        hint = self.fix_hint(root)
        members = [f"{self.layouts[0]}/{n}" for n in self.md5s]
        todo = []
        for name, member in zip(self.md5s, members):
            try:
                verify_file(root / member, opts.checksums[name], hint=hint)
            except IntegrityError:
                todo.append(name)
        if not todo:
            return
        archive = root / self.archive
        checksum = opts.checksums[self.archive]
        try:
            verify_file(archive, checksum, hint=hint, compressed=False)
        except IntegrityError:
            try:
                fetch_verified(
                    self.archive, opts.mirrors, archive,
                    lambda p: verify_file(p, checksum, hint=hint, compressed=False),
                    retries=opts.retries, timeout=opts.timeout,
                )
            except DownloadFailed as err:
                err.files = [self.archive]
                raise
        extract_tar_members(
            archive, root, [f"{self.layouts[0]}/{n}" for n in todo],
            lambda member, path: verify_file(
                path, opts.checksums[member.rsplit("/", 1)[1]], hint=hint, compressed=False
            ),
        )
        logger.info("extracted %s from %s", ", ".join(todo), archive)

    def _dataset(self, split: str, images: list[np.ndarray], labels: np.ndarray, classes: tuple[str, ...],
                 extra_labels: dict[str, np.ndarray] | None = None,
                 extra_classes: dict[str, tuple[str, ...]] | None = None) -> ImageDataset:
        # concatenate always copies: the result is a fresh, writable, contiguous array
        data = np.concatenate(images) if images else np.zeros((0, _ROW), np.uint8)
        return ImageDataset(
            name=self.name,
            split=split,
            images=torch.from_numpy(data.reshape(-1, 3, 32, 32)),
            labels=torch.from_numpy(labels),
            classes=classes,
            mean=tuple(self.mean),
            std=tuple(self.std),
            extra_labels={k: torch.from_numpy(v) for k, v in (extra_labels or {}).items()},
            extra_classes=dict(extra_classes or {}),
        )


class _CIFAR10(_CifarSpec):
    name = "cifar10"
    title = "CIFAR-10"
    num_classes = 10
    classes = CIFAR10_CLASSES
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    archive = "cifar-10-python.tar.gz"
    archive_md5 = "c58f30108f718f92721af3b95e74349a"
    layouts = ("cifar-10-batches-py",)
    meta_file = "batches.meta"
    files_by_split = {
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
    }
    md5s = {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    }

    def parse(self, payloads, paths, split, opts: LoadOptions) -> ImageDataset:
        hint = self.fix_hint()
        meta = _unpickle_dict(payloads[self.meta_file], paths[self.meta_file], hint)
        classes = _names(meta, "label_names", self.num_classes, paths[self.meta_file])
        images, labels = [], []
        for name in self.files_by_split[split]:
            batch = _unpickle_dict(payloads[name], paths[name], hint)
            data = _images(batch, paths[name])
            labels.append(_labels(batch, "labels", len(data), self.num_classes, paths[name]))
            images.append(data)
        return self._dataset(split, images, np.concatenate(labels), classes)


class _CIFAR100(_CifarSpec):
    name = "cifar100"
    title = "CIFAR-100"
    num_classes = 100
    classes = CIFAR100_FINE_CLASSES
    mean, std = (0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)
    archive = "cifar-100-python.tar.gz"
    archive_md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    layouts = ("cifar-100-python",)
    meta_file = "meta"
    files_by_split = {"train": ("train",), "test": ("test",)}
    md5s = {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    }
    option_defaults = {"labels": "fine"}
    option_help = {"labels": '"fine" (100 classes, default) or "coarse" (20 superclasses)'}
    num_coarse = 20

    def validate_option(self, name: str, value: Any) -> Any:
        if name == "labels" and value not in ("fine", "coarse"):
            raise ConfigError(f'CIFAR-100 labels must be "fine" or "coarse", got {value!r}')
        return value

    def parse(self, payloads, paths, split, opts: LoadOptions) -> ImageDataset:
        hint = self.fix_hint()
        meta_path = paths[self.meta_file]
        meta = _unpickle_dict(payloads[self.meta_file], meta_path, hint)
        names = {
            "fine": _names(meta, "fine_label_names", self.num_classes, meta_path),
            "coarse": _names(meta, "coarse_label_names", self.num_coarse, meta_path),
        }
        (name,) = self.files_by_split[split]
        batch = _unpickle_dict(payloads[name], paths[name], hint)
        data = _images(batch, paths[name])
        labels = {
            "fine": _labels(batch, "fine_labels", len(data), self.num_classes, paths[name]),
            "coarse": _labels(batch, "coarse_labels", len(data), self.num_coarse, paths[name]),
        }
        main = opts.extra["labels"]
        return self._dataset(split, [data], labels[main], names[main], labels, names)


CIFAR10 = _CIFAR10()
CIFAR100 = _CIFAR100()
DATASETS.register(CIFAR10.name)(CIFAR10)
DATASETS.register(CIFAR100.name)(CIFAR100)
