"""Image folders (``folder:PATH``): torchvision's ``ImageFolder`` layout.

``PATH/<class name>/<images>`` (one pool, split into train and test by a seeded,
stratified ``test_fraction``), or ``PATH/train/<class>/...`` and ``PATH/test/<class>/...``
(and optionally ``PATH/val/<class>/...``). Class names are the folder names, sorted;
images are PNG or JPEG files anywhere under a class folder (hidden files and other
extensions are ignored). Each image is converted once to the channel count of the
dataset (``channels=1|3``; by default 3 if any image is in colour, else 1) and resized
(bicubic) to one size (``size=HxW``, ``N``, ``most-common`` (default), ``largest`` or
``smallest``); the rule and what it changed are recorded.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, IntegrityError
from ._custom import USER_KINDS, LoadRun, Pool, UserKind, hash_files, verify_manifest
from ._manifest import Manifest, Store, cache_key

__all__ = ["ImageFolderKind", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLIT_FOLDERS = ("train", "test", "val")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_SKIP_HINT = "remove or replace it, or pass --skip-bad-images (skip_bad_images=True) to skip and count such files"


def _visible_dirs(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _images_under(root: Path, folder: str) -> list[str]:
    """Image files anywhere under ``root/folder`` as POSIX paths relative to ``root``, in
    sorted walk order (plain strings: a folder may hold hundreds of thousands)."""
    found = []
    base = str(root)
    for top, dirs, files in os.walk(os.path.join(base, folder)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(top, base).replace(os.sep, "/")
        found += [f"{rel}/{f}" for f in sorted(files) if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _layout(root: Path) -> dict[str, Path]:
    """Split name -> folder of class folders; ``{"pool": root}`` for one folder to split."""
    tops = _visible_dirs(root)
    if "train" not in tops:
        return {"pool": root}
    extra = [t for t in tops if t not in SPLIT_FOLDERS]
    if extra:
        raise DataError(f"{root}: folder {extra[0]!r} beside train/; with a train/ folder only train/, test/ and "
                        "val/ may be there: move it into a split, or remove train/ to split one folder by fraction")
    if "test" not in tops:
        return {"pool": root / "train"}
    return {s: root / s for s in SPLIT_FOLDERS if s in tops}


class ImageFolderKind(UserKind):
    kind = "folder"
    option_help = {
        "size": "HxW or N (square), or most-common (default), largest, smallest: the size every image is "
                "resized to",
        "channels": "1 (grey) or 3 (RGB); default: 3 if any image is in colour, else 1",
    }

    def check_path(self, path: Path) -> str | None:
        if not path.exists():
            return (f"{path} does not exist; check the path (a relative path is looked up in the working "
                    "directory, then under --root / $MEMDISTILL_DATA)")
        if not path.is_dir():
            return f"{path} is not a folder; an image folder is PATH/<class>/<images> (for array files use npz:PATH)"
        if not _visible_dirs(path):
            return (f"{path} holds no class folders; expected PATH/<class name>/<images>, or PATH/train/<class>/... "
                    "and PATH/test/<class>/...")
        return None

    def describe(self, path: Path) -> str:
        try:
            layout = _layout(path)
        except DataError:
            return ""
        first = next(iter(layout.values()))
        classes = _visible_dirs(first)
        splits = "one folder, split by test_fraction" if "pool" in layout else "/".join(layout)
        return f"{len(classes)} class folders; {splits}"

    # ----------------------------------------------------------------- scanning
    def scan(self, root: Path) -> tuple[tuple[str, ...], list[tuple[str, str, str]], dict[str, str]]:
        """``(classes, [(path, relative path, class)], split folders)`` with every
        layout problem raised as a one-line :class:`DataError`."""
        layout = _layout(root)
        classes_of = {}
        for split, folder in layout.items():
            names = _visible_dirs(folder)
            if not names:
                raise DataError(f"{folder} holds no class folders; add one folder of images per class")
            classes_of[split] = names
        main = "pool" if "pool" in layout else "train"
        classes = tuple(classes_of[main])
        for split, names in classes_of.items():
            if split == main:
                continue
            missing = [c for c in classes if c not in names]
            if missing:
                raise DataError(f"{layout[split]}: the {split} split has no folder for class {missing[0]!r} that "
                                f"{layout[main]} has; add {layout[split] / missing[0]}/ with images of that class")
            stray = [c for c in names if c not in classes]
            if stray:
                raise DataError(f"{layout[split] / stray[0]}: class {stray[0]!r} is not in {layout[main]}; add "
                                f"training images of it there, or remove the folder")
        files = []
        for split, folder in layout.items():
            for cname in classes:
                images = _images_under(root, (folder / cname).relative_to(root).as_posix())
                if not images:
                    raise DataError(f"{folder / cname} holds no PNG or JPEG images; add images of class {cname!r}, "
                                    "or remove the folder")
                files += [(os.path.join(root, rel), rel, cname) for rel in images]
        return classes, files, {s: str(f) for s, f in layout.items()}

    # ------------------------------------------------------------------ loading
    def load_pool(self, path: Path, options: dict[str, str], run: LoadRun, store: Store) -> Pool:
        name = f"folder:{path}"
        classes, files, where = self.scan(path)
        entries = hash_files(files, run, "images")
        current = Manifest("folder", tuple(entries))
        recorded = verify_manifest(name, current, store, run)
        bad_known = {e.path for e in recorded.entries if e.bad} if recorded is not None else set()
        if bad_known and not run.skip_bad_images:
            first = next(p for p, rel, _ in files if rel in bad_known)
            raise IntegrityError(f"{first} is not a readable image (found on an earlier load); {_SKIP_HINT}")
        request = {"size": options.get("size", "most-common"), "channels": options.get("channels", "auto"),
                   "resample": "bicubic", "version": 1}
        _check_request(request, name)
        key = cache_key(current.digest, request)
        good = [i for i, (_, rel, _) in enumerate(files) if rel not in bad_known]
        cached = store.read_images(key, len(good)) if recorded is not None else None
        if cached is not None:
            images, rule = cached
            write_manifest, write_cache = None, None
        else:
            images, rule, bad = _decode(files, request, run, name)
            good = [i for i in range(len(files)) if i not in bad]
            marked = tuple(dataclasses.replace(e, bad=i in bad) for i, e in enumerate(entries))
            write_manifest, write_cache = Manifest("folder", marked), key
            if recorded is not None and not run.rebuild_manifest and {e.path for e in marked if e.bad} == bad_known:
                write_manifest = None  # the manifest on disk already says the same
        labels = np.array([classes.index(files[i][2]) for i in good], dtype=np.int64)
        splits = None if "pool" in where else np.array([files[i][1].split("/", 1)[0] for i in good], dtype=object)
        where = {"train": where["pool"], "test": where["pool"]} if "pool" in where else where
        return Pool(images, labels, splits, classes, current.digest, rule, where, write_manifest, write_cache)


def _check_request(request: dict[str, Any], name: str) -> None:
    size, channels = request["size"], request["channels"]
    if channels not in ("auto", "1", "3"):
        raise ConfigError(f"{name}: channels must be 1, 3 or auto, got {channels!r}")
    if size not in ("most-common", "largest", "smallest"):
        _parse_size(size, name)


def _parse_size(text: str, name: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        if len(parts) > 2 or h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{name}: size must be HxW (e.g. 32x32), N, most-common, largest or smallest, "
                          f"got {text!r}") from None
    return h, w


def _bad(path: Path, err: BaseException) -> IntegrityError:
    why = " ".join(str(err).split()) or type(err).__name__
    return IntegrityError(f"{path} is not a readable image ({why}); {_SKIP_HINT}")


def _headers(files, run: LoadRun) -> tuple[list[tuple[int, int] | None], list[str | None]]:
    """Size ``(H, W)`` and mode of every file from its header (``None`` for unreadable files)."""
    from PIL import Image

    from .._progress import progress_bar

    sizes, modes = [], []
    with progress_bar(len(files), desc="inspect images", unit="img", enabled=run.progress) as bar:
        for path, _, _ in files:
            try:
                with Image.open(path) as im:
                    sizes.append((im.height, im.width))
                    modes.append(im.mode)
            except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
                if not run.skip_bad_images:
                    raise _bad(path, err) from None
                sizes.append(None)
                modes.append(None)
            bar.update(1)
    return sizes, modes


def _target(request: dict[str, Any], sizes, modes, name: str) -> tuple[int, tuple[int, int], dict[str, Any]]:
    """Channels, size and the recorded rule."""
    seen = [s for s in sizes if s is not None]
    colour = sum(1 for m in modes if m is not None and m not in _GREY_MODES)
    if request["channels"] == "auto":
        channels = 3 if colour else 1
        ch_rule = (f"auto: {colour} of {len(seen)} images in colour" if colour
                   else f"auto: all {len(seen)} images greyscale")
    else:
        channels = int(request["channels"])
        ch_rule = f"given: channels={channels}"
    counts = collections.Counter(seen)
    how = request["size"]
    if how == "most-common":  # ties: the larger area, then the larger height
        size = max(counts, key=lambda s: (counts[s], s[0] * s[1], s))
        size_rule = f"most common size ({counts[size]} of {len(seen)} images)"
    elif how in ("largest", "smallest"):
        pick = max if how == "largest" else min
        size = pick(counts, key=lambda s: (s[0] * s[1], s))
        size_rule = f"{how} size"
    else:
        size = _parse_size(how, name)
        size_rule = f"given: size={how}"
    rule = {"format": "image folder", "channels": channels, "channels_rule": ch_rule, "size": list(size),
            "size_rule": size_rule, "sizes_seen": len(counts), "resample": "bicubic"}
    return channels, size, rule


def _pixels(im, channels: int) -> np.ndarray:
    """An opened image as ``uint8 (H, W)`` (grey) or ``(H, W, 3)``."""
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grey: scale to 8 bits
        arr = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        elif im.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return grey if channels == 1 else np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("L" if channels == 1 else "RGB"))


def _decode(files, request: dict[str, Any], run: LoadRun, name: str) -> tuple[np.ndarray, dict[str, Any], set[int]]:
    """Decode every file into ``uint8 (N_good, C, H, W)``; the indices of bad files."""
    from PIL import Image

    from .._progress import progress_bar

    sizes, modes = _headers(files, run)
    bad = {i for i, s in enumerate(sizes) if s is None}
    if len(bad) == len(files):
        raise DataError(f"{name}: none of its {len(files)} image files is readable; check the files")
    channels, (h, w), rule = _target(request, sizes, modes, name)
    out = np.empty((len(files), channels, h, w), dtype=np.uint8)
    resized = 0
    with progress_bar(len(files), desc="decode images", unit="img", enabled=run.progress) as bar:
        for i, (path, _, _) in enumerate(files):
            if i not in bad:
                try:
                    with Image.open(path) as im:
                        arr = _pixels(im, channels)
                    if arr.shape[:2] != (h, w):
                        arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BICUBIC))
                        resized += 1
                except Exception as err:  # noqa: BLE001 - a truncated or corrupt body
                    if not run.skip_bad_images:
                        raise _bad(path, err) from None
                    bad.add(i)
                else:
                    out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            bar.update(1)
    keep = [i for i in range(len(files)) if i not in bad]
    rule.update(resized=resized, skipped=len(bad), skipped_files=[files[i][1] for i in sorted(bad)][:20])
    return out[keep], rule, bad


USER_KINDS.register(ImageFolderKind.kind)(ImageFolderKind())
