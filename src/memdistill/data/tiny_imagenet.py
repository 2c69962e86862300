"""Tiny ImageNet (200 classes of 64x64 colour images).

Layout: ``<root>/tiny-imagenet-200/`` with ``wnids.txt`` (one WordNet id per class, in
class-index order), optional ``words.txt`` (``wnid<TAB>names``), ``train/<wnid>/images/*.JPEG``
and ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``
(``file<TAB>wnid<TAB>box...``). The official ``test`` folder has no labels, so this
library's ``"test"`` split is the labelled ``val`` folder.

What is verified, honestly: the official zip has a published md5
(``90528d7ca1a48142e341f4ef8d21d0de``), checked before a download is extracted. The
extracted folder has no official per-file checksums, so for a folder already on disk only
its *structure* is verified: ``wnids.txt`` lists ``expected_classes`` distinct ids, every
class has ``expected_per_class`` images (500 train / 50 val), no unexpected class folders,
``val_annotations.txt`` and ``val/images`` match one-to-one with known wnids, and at load
every JPEG must decode to 64x64 (grayscale is converted to RGB). A file whose pixels were
altered but still decodes cannot be detected. :func:`locate_dataset` checks the structure
only; decoding happens when a split is loaded.

Options: ``expected_classes`` (default 200) and ``expected_per_class`` (default
``{"train": 500, "test": 50}``; a value of ``None`` skips that count), so tests can use a
small fixture folder in the same format.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, IntegrityError
from ._base import ImageDataset
from ._download import DownloadFailed, extract_zip_tree, fetch_verified
from ._integrity import FileChecksum, verify_file
from ._registry import DATASETS, DatasetSpec, LoadOptions, Located

__all__ = ["TINY_IMAGENET"]

logger = logging.getLogger(__name__)

_FOLDER = "tiny-imagenet-200"
_ZIP = "tiny-imagenet-200.zip"
_WNID = re.compile(r"^[A-Za-z0-9_-]+$")
_JPEG_SUFFIXES = (".jpeg", ".jpg")
_SIZE = 64


@dataclass
class _Index:
    wnids: tuple[str, ...]
    names: tuple[str, ...]
    items: list[tuple[Path, int]]


def _is_jpeg(name: str) -> bool:
    return name.lower().endswith(_JPEG_SUFFIXES)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise IntegrityError(f"cannot read {path}: {err}") from None


class _TinyImageNet(DatasetSpec):
    name = "tiny-imagenet"
    title = "Tiny ImageNet"
    num_classes = 200
    image_shape = (3, _SIZE, _SIZE)
    classes = ()  # read from wnids.txt / words.txt when loading
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    mirrors = ("http://cs231n.stanford.edu/",)
    canonical_folder = _FOLDER
    zip_md5 = "90528d7ca1a48142e341f4ef8d21d0de"
    option_defaults = {"expected_classes": 200, "expected_per_class": {"train": 500, "test": 50}}
    option_help = {
        "expected_classes": "number of ids wnids.txt must list (default 200)",
        "expected_per_class": 'images per class per split, default {"train": 500, "test": 50}',
    }

    # ----------------------------------------------------------- declarations
    def checksum_table(self) -> dict[str, FileChecksum]:
        return {_ZIP: FileChecksum(md5=self.zip_md5)}

    def relative_files(self) -> tuple[str, ...]:
        return tuple(f"{_FOLDER}/{p}" for p in self._required(("train", "test")))

    def missing_names(self, splits: Sequence[str]) -> set[str]:
        return {"wnids.txt", "val_annotations.txt", _ZIP}

    def validate_option(self, name: str, value: Any) -> Any:
        if name == "expected_classes":
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"expected_classes must be a positive integer, got {value!r}")
            return value
        if name == "expected_per_class":
            if not isinstance(value, Mapping) or set(value) - {"train", "test"}:
                raise ConfigError(
                    f'expected_per_class must be a mapping with keys "train"/"test", got {value!r}'
                )
            for v in value.values():
                if v is not None and (not isinstance(v, int) or v < 1):
                    raise ConfigError(
                        f"expected_per_class values must be positive integers or None, got {v!r}"
                    )
            return {**self.option_defaults["expected_per_class"], **value}
        return value

    @staticmethod
    def _required(splits: Sequence[str]) -> list[str]:
        need = ["wnids.txt"]
        if "train" in splits:
            need.append("train")
        if "test" in splits:
            need += ["val/images", "val/val_annotations.txt"]
        return need

    # ---------------------------------------------------------------- locating
    def locate(self, roots: Sequence[Path], splits: Sequence[str], opts: LoadOptions) -> Located:
        searched: list[Path] = []
        best: Located | None = None
        for root in roots:
            folder = root / _FOLDER
            searched.append(folder)
            if not folder.is_dir():
                continue
            need = self._required(splits)
            paths = {p: folder / p for p in need if (folder / p).exists()}
            missing = [f"{_FOLDER}/{p}" for p in need if p not in paths]
            if not missing:
                return Located(folder, paths, searched, [])
            if paths and (best is None or len(paths) > len(best.paths)):
                best = Located(folder, paths, [], missing)
        if best is not None:
            return Located(best.folder, best.paths, searched, best.missing)
        return Located(None, {}, searched, [f"{_FOLDER}/{p}" for p in self._required(splits)])

    def _index(self, folder: Path, split: str, opts: LoadOptions) -> _Index:
        try:
            return self._scan(folder, split, opts)
        except OSError as err:
            raise IntegrityError(f"{folder} is incomplete or unreadable: {err}") from None

    def _scan(self, folder: Path, split: str, opts: LoadOptions) -> _Index:
        expected_classes = opts.extra["expected_classes"]
        per_class = opts.extra["expected_per_class"][split]
        wnids_path = folder / "wnids.txt"
        wnids = tuple(line.strip() for line in _read_lines(wnids_path) if line.strip())
        if len(wnids) != expected_classes:
            raise IntegrityError(f"{wnids_path} lists {len(wnids)} classes, expected {expected_classes}")
        if len(set(wnids)) != len(wnids):
            raise IntegrityError(f"{wnids_path} lists a class twice")
        bad = [w for w in wnids if not _WNID.match(w)]
        if bad:
            raise IntegrityError(f"{wnids_path}: {bad[0]!r} is not a valid class id")
        label_of = {w: i for i, w in enumerate(wnids)}

        names = dict.fromkeys(wnids, "")
        words = folder / "words.txt"
        if words.is_file():
            for line in _read_lines(words):
                wnid, _, text = line.partition("\t")
                if wnid in names:
                    names[wnid] = text.strip()
        classes = tuple(names[w] or w for w in wnids)

        items: list[tuple[Path, int]] = []
        if split == "train":
            train = folder / "train"
            extra = sorted(set(os.listdir(train)) - set(wnids))
            extra = [e for e in extra if (train / e).is_dir()]
            if extra:
                raise IntegrityError(f"{train} has class folders not in wnids.txt: {', '.join(extra[:5])}")
            for wnid in wnids:
                images = train / wnid / "images"
                if not images.is_dir():
                    raise IntegrityError(f"{images} is missing; the train split is incomplete")
                files = sorted(n for n in os.listdir(images) if _is_jpeg(n))
                if per_class is not None and len(files) != per_class:
                    raise IntegrityError(f"{images} holds {len(files)} JPEGs, expected {per_class}")
                items += [(images / n, label_of[wnid]) for n in files]
        else:
            annotations = folder / "val" / "val_annotations.txt"
            images = folder / "val" / "images"
            labelled: dict[str, int] = {}
            for lineno, line in enumerate(_read_lines(annotations), 1):
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) < 2 or "/" in fields[0] or "\\" in fields[0] or not _is_jpeg(fields[0]):
                    raise IntegrityError(f"{annotations}:{lineno}: malformed line {line!r}")
                if fields[1] not in label_of:
                    raise IntegrityError(f"{annotations}:{lineno}: unknown class {fields[1]!r}")
                if fields[0] in labelled:
                    raise IntegrityError(f"{annotations}:{lineno}: {fields[0]} is listed twice")
                labelled[fields[0]] = label_of[fields[1]]
            present = {n for n in os.listdir(images) if _is_jpeg(n)}
            if present != set(labelled):
                lacking = sorted(set(labelled) - present)
                unlisted = sorted(present - set(labelled))
                what = (f"{images / lacking[0]} is listed in {annotations.name} but missing"
                        if lacking else f"{images / unlisted[0]} has no entry in {annotations.name}")
                raise IntegrityError(f"{what} ({len(lacking)} missing, {len(unlisted)} unlisted)")
            if per_class is not None:
                counts = np.bincount(list(labelled.values()), minlength=len(wnids))
                off = np.flatnonzero(counts != per_class)
                if off.size:
                    c = int(off[0])
                    raise IntegrityError(
                        f"{annotations}: class {wnids[c]} has {counts[c]} images, expected {per_class}"
                    )
            items = [(images / n, labelled[n]) for n in sorted(labelled)]
        return _Index(wnids, classes, items)

    def verify(self, located: Located, splits: Sequence[str], opts: LoadOptions) -> None:
        assert located.folder is not None
        for split in splits:
            self._index(located.folder, split, opts)

    # ----------------------------------------------------------------- reading
    def read(self, located: Located, split: str, opts: LoadOptions) -> ImageDataset:
        assert located.folder is not None
        index = self._index(located.folder, split, opts)
        pixels = np.empty((len(index.items), _SIZE, _SIZE, 3), dtype=np.uint8)

        def decode(i: int) -> None:
            path = index.items[i][0]
            try:
                with Image.open(path) as img:
                    if img.format != "JPEG":
                        raise IntegrityError(f"{path} is a {img.format} image, not a JPEG")
                    if img.size != (_SIZE, _SIZE):
                        raise IntegrityError(
                            f"{path} is {img.size[0]}x{img.size[1]}, expected {_SIZE}x{_SIZE}"
                        )
                    pixels[i] = np.asarray(img.convert("RGB"))
            except IntegrityError:
                raise
            except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
                raise IntegrityError(
                    f"{path} does not decode as an image ({type(err).__name__}: {err})"
                ) from None

        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(decode, range(len(index.items))):
                pass
        labels = torch.tensor([label for _, label in index.items], dtype=torch.int64)
        return ImageDataset(
            name=self.name,
            split=split,
            images=torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))),
            labels=labels,
            classes=index.names,
            mean=tuple(self.mean),
            std=tuple(self.std),
            extra_labels={"wnid": labels.clone()},
            extra_classes={"wnid": index.wnids},
        )

    # ------------------------------------------------------------- downloading
    def download(self, root: Path, splits: Sequence[str], opts: LoadOptions) -> None:
        hint = self.fix_hint(root)
        archive = root / _ZIP
        checksum = opts.checksums[_ZIP]
        try:
            verify_file(archive, checksum, hint=hint, compressed=False)
        except IntegrityError:
            try:
                fetch_verified(
                    _ZIP, opts.mirrors, archive,
                    lambda p: verify_file(p, checksum, hint=hint, compressed=False),
                    retries=opts.retries, timeout=opts.timeout,
                )
            except DownloadFailed as err:
                err.files = [_ZIP]
                raise

        def check_tree(tree: Path) -> None:
            for split in ("train", "test"):
                self._index(tree, split, opts)

        extract_zip_tree(archive, root, _FOLDER, check_tree)
        logger.info("extracted %s", root / _FOLDER)


TINY_IMAGENET = _TinyImageNet()
DATASETS.register(TINY_IMAGENET.name)(TINY_IMAGENET)
