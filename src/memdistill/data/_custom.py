"""User datasets named ``folder:PATH`` or ``npz:PATH``: names, options, splits, records.

A user dataset is named by its kind and path, optionally followed by options that change
what is loaded: ``folder:~/pets?size=64x64&channels=3&test_fraction=0.2&split_seed=1``.
A relative ``PATH`` is looked up in the working directory, then under the data roots
(``root=``, ``$MEMDISTILL_DATA``). Each kind (:data:`USER_KINDS`) turns its files into a
:class:`Pool` (every image, decoded, with its label and, when the data says so, its
split); this module carves the splits, computes the normalisation on the training split
and records where the data came from (:attr:`ImageDataset.source`), so a memory file can
say exactly which data it was distilled from.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._registry import Registry
from ..errors import ConfigError, DataError, DataNotFoundError
from ._base import ImageDataset
from ._manifest import Manifest, Store, compare_manifests, file_entry
from ._root import resolve_roots

__all__ = [
    "USER_KINDS",
    "UserName",
    "UserKind",
    "Pool",
    "LoadRun",
    "is_user_dataset",
    "canonical_dataset_name",
    "parse_user_name",
    "load_user_dataset",
    "check_dataset_source",
]

USER_KINDS: Registry["UserKind"] = Registry("dataset kind")
SPLIT_OPTIONS = {
    "test_fraction": "for data without its own test split: the fraction of each class held out as the test "
                     "split (default 0.2)",
    "split_seed": "seed of that stratified split (default 0)",
}
RUN_OPTIONS = ("skip_bad_images", "rebuild_manifest", "progress", "cache_dir")


# --------------------------------------------------------------------------- names
@dataclass(frozen=True)
class UserName:
    """A parsed ``KIND:PATH[?key=value&...]`` name; ``str()`` gives its canonical form
    (absolute path, options sorted)."""

    kind: str
    path: Path
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        opts = "&".join(f"{k}={v}" for k, v in self.options)
        return f"{self.kind}:{self.path}" + (f"?{opts}" if opts else "")

    @property
    def option_dict(self) -> dict[str, str]:
        return dict(self.options)


def _kind_prefix(name: object) -> str | None:
    if not isinstance(name, str) or ":" not in name:
        return None
    kind = name.split(":", 1)[0].strip().lower()
    return kind if kind in USER_KINDS else None


def is_user_dataset(name: object) -> bool:
    """``True`` for a ``folder:...`` / ``npz:...`` name, ``False`` for a built-in name."""
    return _kind_prefix(name) is not None


def _option_text(key: str, value: Any) -> str:
    if isinstance(value, (tuple, list)) and key == "size":
        return "x".join(str(int(v)) for v in value)
    return str(value).strip()


def _find(path_text: str, root: str | Path | None) -> Path:
    path = Path(path_text).expanduser()
    if path.is_absolute() or path.exists():
        return path.absolute()
    for base in resolve_roots(root):
        if (base / path).exists():
            return (base / path).absolute()
    return path.absolute()  # missing: the loader says so, naming it


def canonical_dataset_name(name: str, root: str | Path | None = None) -> str:
    """``folder:``/``npz:`` names with their absolute path and sorted options (what a run
    records, valid from any working directory); built-in names as given."""
    return str(parse_user_name(name, root)) if is_user_dataset(name) else name


def parse_user_name(name: str, root: str | Path | None = None, **options: Any) -> UserName:
    """Parse ``KIND:PATH[?key=value&...]``; ``options`` (keyword form of the same keys)
    are merged in, winning over the name's.

    Raises:
        ConfigError: not a user dataset name, an empty path, a malformed or unknown option.
    """
    kind = _kind_prefix(name)
    if kind is None:
        raise ConfigError(f"{name!r} is not a user dataset name; use folder:PATH or npz:PATH")
    rest = name.split(":", 1)[1]
    path_text, _, query = rest.partition("?")
    if not path_text.strip():
        raise ConfigError(f"dataset {name!r} names no path; e.g. {kind}:data/my-images")
    given: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"dataset {name!r}: option {item!r} is not KEY=VALUE (e.g. {kind}:PATH?split_seed=1)")
        given[key.strip()] = value.strip()
    given.update({k: _option_text(k, v) for k, v in options.items() if v is not None})
    spec = USER_KINDS.get(kind)
    helps = {**spec.option_help, **SPLIT_OPTIONS}
    unknown = sorted(set(given) - set(helps))
    if unknown:
        valid = "; ".join(f"{k}: {v}" for k, v in helps.items())
        raise ConfigError(f"dataset {name!r}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    return UserName(kind, _find(path_text.strip(), root), tuple(sorted(given.items())))


# --------------------------------------------------------------------------- kinds
@dataclass
class LoadRun:
    """How one load behaves (not part of what the data is).

    Attributes:
        skip_bad_images: skip (and count) files that are not readable images instead of failing.
        rebuild_manifest: accept the data as it is now, replacing its manifest.
        progress: show a progress display while hashing and decoding.
        cache_dir: where manifests and caches go when not beside the data.
    """

    skip_bad_images: bool = False
    rebuild_manifest: bool = False
    progress: bool = False
    cache_dir: str | Path | None = None


@dataclass
class Pool:
    """Every image of a user dataset, decoded.

    Attributes:
        images: ``uint8 (N, C, H, W)``.
        labels: ``int64 (N,)`` indices into ``classes``.
        splits: ``(N,)`` split name of each image when the data has its own splits, else ``None``.
        classes: class names, in label order.
        digest: the manifest's digest.
        rule: how the files became these arrays (layout, channels, size, skipped files), JSON.
        where: the folder or array holding each split, for messages.
        manifest: the manifest to write once every check passed (first use, rebuild), else ``None``.
        cache: ``(key, rule)`` of decoded images to cache once every check passed, else ``None``.
    """

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray | None
    classes: tuple[str, ...]
    digest: str
    rule: dict[str, Any] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    manifest: Manifest | None = None
    cache: str | None = None


class UserKind(abc.ABC):
    """One kind of user dataset (``folder``, ``npz``).

    Class attributes: ``kind`` (the name prefix), ``option_help`` (one line per option of
    the name besides :data:`SPLIT_OPTIONS`).
    """

    kind: str
    option_help: Mapping[str, str] = {}

    @abc.abstractmethod
    def check_path(self, path: Path) -> str | None:
        """``None`` if ``path`` can be this kind of dataset, else why not (one line)."""

    @abc.abstractmethod
    def load_pool(self, path: Path, options: dict[str, str], run: LoadRun, store: Store) -> Pool:
        """Hash the files, verify them against ``store``'s manifest (:func:`verify_manifest`)
        and decode them (or take them from the cache). Writes nothing: the pool says what
        to write once every check passed."""

    def describe(self, path: Path) -> str:
        """A short description of what is at ``path`` for ``memdistill datasets``."""
        return ""


def verify_manifest(name: str, current: Manifest, store: Store, run: LoadRun) -> Manifest | None:
    """Check ``current`` against the recorded manifest and return the recorded one
    (``None`` on first use or a rebuild: then ``current`` is to be written).

    Raises:
        IntegrityError: the data changed since its manifest was written (one line: what
            changed, the manifest, how to accept the change).
    """
    from ..errors import IntegrityError

    recorded = None if run.rebuild_manifest else store.read_manifest()
    if recorded is None:
        return None
    manifest, where = recorded
    problem = compare_manifests(manifest, current)
    if problem is not None:
        raise IntegrityError(f"{name} changed since its manifest {where} was written: {problem}; restore the "
                             "files, or pass --rebuild-manifest (rebuild_manifest=True) to accept the data as it is now")
    return manifest


def hash_files(files: Sequence[tuple[Path, str, str | None]], run: LoadRun, what: str) -> list:
    """Manifest entries of ``(path, relative path, label)`` files, in order."""
    from .._progress import progress_bar

    entries = []
    with progress_bar(len(files), desc=f"hash {what}", unit="file", enabled=run.progress) as bar:
        for path, rel, label in files:
            try:
                entries.append(file_entry(path, rel, label)[0])
            except OSError as err:
                raise DataError(f"cannot read {path} ({err.strerror or err}); check its permissions") from None
            bar.update(1)
    return entries


# --------------------------------------------------------------------------- splits
def split_by_fraction(labels: np.ndarray, classes: Sequence[str], fraction: float, seed: int,
                      name: str) -> np.ndarray:
    """``(N,)`` split names: per class, a seeded random ``fraction`` (at least one image)
    is ``"test"``, the rest ``"train"``."""
    g = torch.Generator().manual_seed(int(seed))
    out = np.full(len(labels), "train", dtype=object)
    for c, cname in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 2:
            raise DataError(f"{name}: class {cname!r} has {len(idx)} image(s); a split by test_fraction needs at "
                            "least 2 per class (add images, or give the data its own train/ and test/ splits)")
        n_test = min(max(int(round(len(idx) * fraction)), 1), len(idx) - 1)
        perm = torch.randperm(len(idx), generator=g).numpy()
        out[idx[perm[:n_test]]] = "test"
    return out


def _split_rule(pool: Pool, options: dict[str, str], name: str) -> tuple[np.ndarray, dict[str, Any]]:
    if pool.splits is not None:
        if "test_fraction" in options or "split_seed" in options:
            raise ConfigError(f"{name} has its own splits ({', '.join(sorted(set(pool.splits)))}); "
                              "test_fraction and split_seed apply only to data without them: remove them")
        return pool.splits, {"layout": "given", "splits": sorted(set(pool.splits))}
    fraction = _number(options.get("test_fraction", "0.2"), float, "test_fraction", name)
    seed = _number(options.get("split_seed", "0"), int, "split_seed", name)
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"{name}: test_fraction must be in (0, 1), got {fraction}")
    splits = split_by_fraction(pool.labels, pool.classes, fraction, seed, name)
    return splits, {"layout": "fraction", "test_fraction": fraction, "split_seed": seed}


def _number(text: str, kind: type, key: str, name: str):
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name}: {key} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {text!r}") from None


def check_classes(name: str, classes: Sequence[str], labels: np.ndarray, splits: np.ndarray,
                  where: Mapping[str, str] | None = None) -> None:
    """At least two classes, each with training images, and every other split holding
    exactly the training split's classes.

    ``where`` names the folder or array of each split in the messages."""
    where = dict(where or {})
    if len(classes) < 2:
        raise DataError(f"{name}: {len(classes)} class ({', '.join(classes) or 'none'}); a classifier needs at "
                        "least 2 classes: add a folder (or label) per class")
    present = {s: set(np.unique(labels[splits == s]).tolist()) for s in sorted(set(splits.tolist()))}
    train = present.get("train", set())
    for c, cname in enumerate(classes):
        if c not in train:
            raise DataError(f"{where.get('train', name)}: class {cname!r} has no training images; add some, "
                            "or remove the class")
    for split, have in present.items():
        missing = [classes[c] for c in sorted(train - have)]
        if missing:
            raise DataError(f"{where.get(split, name)}: the {split} split has no images of class "
                            f"{missing[0]!r} that the training split has{' (and ' + str(len(missing) - 1) + ' more)' if len(missing) > 1 else ''}; "
                            f"add {split} images of every class")


# ------------------------------------------------------------------------- loading
def _stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = torch.from_numpy(images).to(torch.float64).div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False).clamp_min(1.0 / 255.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _run_options(options: dict[str, Any]) -> tuple[LoadRun, dict[str, Any]]:
    run = LoadRun(**{k: options.pop(k) for k in RUN_OPTIONS if k in options})
    for key in ("download", "checksums", "mirrors", "retries", "timeout"):
        options.pop(key, None)  # built-in datasets' options: nothing to download or check for user data
    return run, options


def load_user_dataset(name: str, split: str = "train", root: str | Path | None = None, **options: Any) -> ImageDataset:
    """One split of a ``folder:`` / ``npz:`` dataset (see :func:`~memdistill.data.load_dataset`).

    The manifest is checked (or written on first use) and the decoded images come from the
    cache when it holds them; nothing is written unless every check passes.
    """
    run, options = _run_options(dict(options))
    user = parse_user_name(name, root, **options)
    spec = USER_KINDS.get(user.kind)
    problem = spec.check_path(user.path)
    if problem is not None:
        raise DataNotFoundError(f"{user.kind}:{user.path}: {problem}")
    canonical = str(user)
    store = Store(user.path, run.cache_dir)
    pool = spec.load_pool(user.path, user.option_dict, run, store)
    splits, split_rule = _split_rule(pool, user.option_dict, canonical)
    check_classes(canonical, pool.classes, pool.labels, splits, pool.where)
    available = sorted(set(splits.tolist()))
    if split not in available:
        raise ConfigError(f"{canonical} has no {split!r} split; valid splits: {', '.join(available)}"
                          + ("" if split != "val" else "; carve one with train_val_split(train)"))
    if pool.manifest is not None:  # every check passed: now the manifest and cache may be written
        store.write_manifest(pool.manifest)
    if pool.cache is not None:
        store.write_images(pool.cache, pool.images, pool.rule)
    mean, std = _stats(pool.images[splits == "train"])
    keep = np.flatnonzero(splits == split)
    source = {"kind": user.kind, "name": canonical, "path": str(user.path), "classes": list(pool.classes),
              "image_shape": list(pool.images.shape[1:]), "manifest_digest": pool.digest,
              "split": split_rule, "decoding": pool.rule}
    return ImageDataset(name=canonical, split=split, images=torch.from_numpy(pool.images[keep]),
                        labels=torch.from_numpy(pool.labels[keep].astype(np.int64)), classes=pool.classes,
                        mean=mean, std=std, source=source)


def locate_user_dataset(name: str, root: str | Path | None = None) -> tuple[str, Path, str | None]:
    """``(canonical name, path, problem)`` without reading any file (``problem`` is
    ``None`` when the path looks like a dataset of its kind)."""
    user = parse_user_name(name, root)
    return str(user), user.path, USER_KINDS.get(user.kind).check_path(user.path)


# ------------------------------------------------------------------------- records
_SAME_KEYS = ("classes", "image_shape", "manifest_digest", "split")


def check_dataset_source(recorded: Mapping[str, Any] | None, dataset: ImageDataset, *, what: str) -> None:
    """Refuse ``dataset`` unless it is the data ``recorded`` (an :attr:`ImageDataset.source`
    kept in a memory file) describes: same classes, image shape, manifest digest and split.

    Args:
        recorded: the record, ``None`` for a built-in dataset (then ``dataset`` must be one too).
        what: names the memory in the message (e.g. the file path).

    Raises:
        ConfigError: one line saying which dataset ``what`` was distilled from and how
            ``dataset`` differs.
    """
    mine = dataset.source
    if recorded is None and mine is None:
        return
    if recorded is None or mine is None:
        origin = recorded.get("name") if recorded else "a built-in dataset"
        raise ConfigError(f"{what} was distilled from {origin}, not {dataset.name}; evaluate it against the "
                          "dataset it was distilled from")
    differ = [k for k in _SAME_KEYS if _jsonish(recorded.get(k)) != _jsonish(mine.get(k))]
    if differ:
        detail = ", ".join(f"{k} {_short(recorded.get(k))} vs {_short(mine.get(k))}" for k in differ)
        raise ConfigError(f"{what} was distilled from {recorded.get('name')}, but {dataset.name} is other data "
                          f"({detail}); evaluate it against the data it was distilled from")


def _jsonish(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonish(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonish(x) for k, x in v.items()}
    return v


def _short(v: Any) -> str:
    if isinstance(v, str) and len(v) == 64:
        return v[:12]
    text = str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def user_datasets_under(roots: Sequence[Path], skip: Sequence[str] = ()) -> list[tuple[str, str | None, str]]:
    """``(name, problem, description)`` of each user dataset directly under ``roots``
    (folders with class sub-folders of images, folders of ``.npy`` arrays, ``.npz``
    files), reading no image; entries named in ``skip`` (the built-in datasets' folders)
    are left out."""
    found = []
    builtin_tops = set(skip)
    for root in roots:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name in builtin_tops:
                continue
            path = Path(entry.path).absolute()
            if entry.is_dir():
                kind = "npz" if USER_KINDS.get("npz").check_path(path) is None else "folder"
            elif entry.name.endswith(".npz"):
                kind = "npz"
            else:
                continue
            spec = USER_KINDS.get(kind)
            problem = spec.check_path(path)
            if kind == "folder" and problem is not None and "no class folders" in problem:
                continue  # a folder of something else
            found.append((f"{kind}:{path}", problem, spec.describe(path) if problem is None else ""))
    return found

