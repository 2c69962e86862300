"""Manifests and decoded-image caches of user datasets (``folder:`` and ``npz:``).

A user's data has no published checksums, so on first use a *manifest* is written: one
entry per file (path relative to the dataset, size, sha256, label). Every later load
hashes the files again and refuses a dataset that no longer matches its manifest. The
manifest's *digest* (a sha256 over its entries) names the exact data a memory was
distilled from; decoded images are cached under a key made of that digest and the
decoding rule, so a second load decodes nothing.

Both files go beside the data (``<folder>/.memdistill-manifest.json``,
``<file>.memdistill-manifest.json``); where that is not writable, into the cache folder
(``$MEMDISTILL_CACHE``, else ``$XDG_CACHE_HOME/memdistill``, else ``~/.cache/memdistill``)
under a sub-folder named after the dataset's absolute path.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .._io import atomic_write_bytes
from ..errors import IntegrityError

__all__ = ["ManifestEntry", "Manifest", "Store", "CACHE_ENV_VAR", "manifest_digest", "compare_manifests"]

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "MEMDISTILL_CACHE"
FORMAT = "memdistill-manifest"
FORMAT_VERSION = 1
_MANIFEST_NAME = ".memdistill-manifest.json"


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a dataset.

    Attributes:
        path: POSIX path relative to the dataset (folder root, or the array file's folder).
        size: bytes.
        sha256: of the file's bytes.
        label: class name (image folders); ``None`` for array files.
        bad: the file is not a readable image (kept, and skipped, only with
            ``skip_bad_images``).
    """

    path: str
    size: int
    sha256: str
    label: str | None = None
    bad: bool = False


def file_entry(path: str | Path, relative: str, label: str | None = None) -> tuple[ManifestEntry, bytes]:
    """The entry of ``path`` and its bytes (read once: hashed here, decoded by the caller)."""
    with open(path, "rb") as fh:
        data = fh.read()
    return ManifestEntry(relative, len(data), hashlib.sha256(data).hexdigest(), label), data


def manifest_digest(entries: Iterable[ManifestEntry]) -> str:
    """sha256 over the entries' ``path, size, sha256, label``, one line each (what the
    data is; whether a file decodes is a property of that data, not part of it)."""
    h = hashlib.sha256()
    for e in entries:
        h.update(f"{e.path}\t{e.size}\t{e.sha256}\t{e.label}\n".encode("utf-8"))
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """The manifest of one dataset: its entries, sorted by path, and their digest."""

    kind: str
    entries: tuple[ManifestEntry, ...]

    @functools.cached_property
    def digest(self) -> str:
        return manifest_digest(self.entries)

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "digest": self.digest,
                "files": [asdict(e) for e in self.entries]}

    @classmethod
    def from_json(cls, doc: object, where: Path) -> "Manifest":
        try:
            if doc.get("format") != FORMAT or int(doc.get("version", 0)) > FORMAT_VERSION:  # type: ignore[union-attr]
                raise ValueError(f"not a {FORMAT} of version <= {FORMAT_VERSION}")
            entries = tuple(ManifestEntry(str(f["path"]), int(f["size"]), str(f["sha256"]),
                                          None if f.get("label") is None else str(f["label"]), bool(f.get("bad")))
                            for f in doc["files"])  # type: ignore[index]
            manifest = cls(str(doc["kind"]), entries)  # type: ignore[index]
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise IntegrityError(f"{where} is not a valid manifest ({err}); delete it, or pass --rebuild-manifest "
                                 "(rebuild_manifest=True) to write a new one") from None
        if manifest.digest != doc.get("digest"):  # type: ignore[union-attr]
            raise IntegrityError(f"{where} was edited (its digest does not match its entries); pass --rebuild-manifest "
                                 "(rebuild_manifest=True) to write a new one")
        return manifest


def _listed(paths: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def compare_manifests(recorded: Manifest, current: Manifest) -> str | None:
    """``None`` when ``current`` matches ``recorded``, else what changed, in one line."""
    if recorded.digest == current.digest:
        return None
    old = {e.path: e for e in recorded.entries}
    new = {e.path: e for e in current.entries}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    both = sorted(set(old) & set(new))
    modified = [p for p in both if (old[p].size, old[p].sha256) != (new[p].size, new[p].sha256)]
    relabelled = [p for p in both if p not in modified and old[p].label != new[p].label]
    parts = [f"{len(v)} {what} ({_listed(v)})" for what, v in
             (("modified", modified), ("added", added), ("removed", removed), ("relabelled", relabelled)) if v]
    return "; ".join(parts) or "entries differ"


def _cache_home() -> Path:
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache").expanduser().absolute() / "memdistill"


class Store:
    """Where one dataset's manifest and caches live: beside the data when writable, else
    in the cache folder (``cache_dir`` when given).

    Args:
        data: the dataset's folder or array file (absolute).
        cache_dir: a folder to use instead of the default cache folder.
    """

    def __init__(self, data: Path, cache_dir: str | Path | None = None) -> None:
        self.data = data
        beside_dir = data if data.is_dir() else data.parent
        prefix = "" if data.is_dir() else f".{data.name}"
        self.beside = (beside_dir, prefix)
        home = Path(cache_dir).expanduser().absolute() if cache_dir is not None else _cache_home()
        key = hashlib.sha256(str(data).encode("utf-8")).hexdigest()[:16]
        self.cached = (home / f"{data.name}-{key}", "")

    def _places(self) -> list[tuple[Path, str]]:
        return [self.beside, self.cached]

    @staticmethod
    def _path(place: tuple[Path, str], name: str) -> Path:
        folder, prefix = place
        return folder / (prefix + name)

    def read_manifest(self) -> tuple[Manifest, Path] | None:
        """The manifest recorded for the dataset and where it is, or ``None`` (first use)."""
        for place in self._places():
            path = self._path(place, _MANIFEST_NAME)
            if path.is_file():
                try:
                    doc = json.loads(path.read_text("utf-8"))
                except (OSError, ValueError) as err:
                    raise IntegrityError(f"{path} cannot be read as a manifest ({err}); delete it, or pass "
                                         "--rebuild-manifest (rebuild_manifest=True)") from None
                return Manifest.from_json(doc, path), path
        return None

    def _write(self, name: str, data: bytes) -> Path:
        """Write beside the data, else in the cache folder (atomic either way)."""
        for place in self._places():
            path = self._path(place, name)
            try:
                return atomic_write_bytes(path, data)
            except OSError as err:
                logger.info("cannot write %s (%s); trying the cache folder", path, err)
                last = err
        raise IntegrityError(f"cannot write {name} beside {self.data} nor in {self.cached[0]} ({last}); set "
                             f"{CACHE_ENV_VAR} to a writable folder")

    def write_manifest(self, manifest: Manifest) -> Path:
        text = json.dumps(manifest.to_json(), indent=1) + "\n"
        for place in self._places():  # a rebuilt manifest replaces every older copy
            old = self._path(place, _MANIFEST_NAME)
            if old.is_file():
                try:
                    old.unlink()
                except OSError:
                    pass
        return self._write(_MANIFEST_NAME, text.encode("utf-8"))

    # ------------------------------------------------------------------ image cache
    def _cache_name(self, key: str) -> str:
        return f".memdistill-cache-{key}.npz"

    def read_images(self, key: str, count: int) -> tuple[np.ndarray, dict] | None:
        """The cached ``uint8 (count, C, H, W)`` images of ``key`` and the decoding rule
        stored with them, or ``None`` when there is no usable cache."""
        for place in self._places():
            path = self._path(place, self._cache_name(key))
            if not path.is_file():
                continue
            try:
                with np.load(path, allow_pickle=False) as z:
                    images, rule = z["images"], json.loads(str(z["rule"]))
            except (OSError, ValueError, KeyError) as err:
                logger.warning("ignoring the unreadable cache %s (%s)", path, err)
                continue
            if images.dtype == np.uint8 and images.ndim == 4 and images.shape[0] == count:
                return images, rule
            logger.warning("ignoring the cache %s: %s images of shape %s", path, count, images.shape)
        return None

    def write_images(self, key: str, images: np.ndarray, rule: dict) -> Path:
        """Cache ``images`` (``uint8 (N, C, H, W)``) with the rule that decoded them."""
        buf = io.BytesIO()
        np.savez(buf, images=np.ascontiguousarray(images, dtype=np.uint8), rule=np.array(json.dumps(rule)))
        return self._write(self._cache_name(key), buf.getvalue())


def cache_key(digest: str, rule: dict) -> str:
    """Key of a decoded-image cache: the manifest digest and the decoding rule."""
    text = json.dumps({"digest": digest, "rule": rule}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]
