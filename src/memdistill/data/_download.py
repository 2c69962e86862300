"""Fetching and unpacking dataset files, verified before they are put in place.

Every file is streamed into a temporary file in its destination folder and renamed onto
its final name only after its checksum passes, so an interrupted or corrupted download
never leaves a file that looks complete. Archives are unpacked member by member into a
temporary folder (tar members through ``filter="data"``, zip member names checked
against path traversal), verified, then moved into place.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

from ..errors import ConfigError, IntegrityError

__all__ = [
    "Attempt",
    "DownloadFailed",
    "check_mirrors",
    "mirror_url",
    "fetch_verified",
    "extract_tar_members",
    "extract_zip_tree",
]

logger = logging.getLogger(__name__)

_SCHEMES = ("http", "https", "file")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Attempt:
    """One failed try: the URL and why it failed."""

    url: str
    error: str


@dataclass(eq=False)
class DownloadFailed(Exception):
    """Internal: some files could not be fetched from any mirror."""

    files: list[str]
    attempts: list[Attempt] = field(default_factory=list)
    integrity: list[IntegrityError] = field(default_factory=list)

    def __str__(self) -> str:
        return f"could not download {', '.join(self.files)}"


def check_mirrors(mirrors: object) -> tuple[str, ...]:
    """Validate a ``mirrors=`` option: a non-empty sequence of http(s)/file base URLs."""
    if isinstance(mirrors, str):
        mirrors = [mirrors]
    if not isinstance(mirrors, Sequence) or not mirrors:
        raise ConfigError(f"mirrors must be a non-empty list of base URLs, got {mirrors!r}")
    out = []
    for m in mirrors:
        scheme = urllib.parse.urlparse(str(m)).scheme
        if scheme not in _SCHEMES:
            raise ConfigError(
                f"mirror {m!r} has scheme {scheme!r}; valid schemes: {', '.join(_SCHEMES)}"
            )
        out.append(str(m))
    return tuple(out)


def mirror_url(mirror: str, filename: str) -> str:
    return mirror.rstrip("/") + "/" + urllib.parse.quote(filename)


def _retryable(err: BaseException) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return err.code >= 500 or err.code in (408, 429)
    return not isinstance(err, ValueError)


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return f"{type(err.reason).__name__}: {err.reason}"
    return f"{type(err).__name__}: {err}"


def _stream(url: str, tmp: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "memdistill"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
        announced = response.headers.get("Content-Length")
        received = 0
        for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)
            received += len(chunk)
    if announced is not None and announced.isdigit() and received != int(announced):
        raise http.client.IncompleteRead(b"", int(announced) - received)


def fetch_verified(
    filename: str,
    mirrors: Sequence[str],
    dest: Path,
    verify: Callable[[Path], None],
    *,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 0.5,
) -> None:
    """Download ``filename`` from the first mirror that serves a verified copy.

    Each mirror is tried up to ``retries`` times for transient errors (connection
    problems, HTTP 5xx); a 4xx or a copy that fails ``verify`` moves on to the next
    mirror. The copy lands as ``dest`` only after ``verify(tmp_path)`` returns.

    Raises:
        DownloadFailed: no mirror served a verified copy (holds every attempt).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failure = DownloadFailed([filename])
    for mirror in mirrors:
        url = mirror_url(mirror, filename)
        for attempt in range(max(1, retries)):
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                logger.info("downloading %s", url)
                _stream(url, tmp, timeout)
                verify(tmp)
                os.replace(tmp, dest)
                logger.info("saved %s", dest)
                return
            except IntegrityError as err:
                # Name the download, not the scratch file that is about to be removed.
                err = IntegrityError(str(err).replace(str(tmp), f"{dest.name} (from {url})"))
                failure.integrity.append(err)
                failure.attempts.append(Attempt(url, str(err).splitlines()[0]))
                break
            except (OSError, http.client.HTTPException, ValueError) as err:
                failure.attempts.append(Attempt(url, _describe(err)))
                if not _retryable(err) or attempt + 1 >= retries:
                    break
                time.sleep(backoff * 2**attempt)
            finally:
                tmp.unlink(missing_ok=True)
    raise failure


def _scratch(dest_root: Path) -> Path:
    dest_root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=dest_root, prefix=".extract-"))


def extract_tar_members(
    archive: Path,
    dest_root: Path,
    members: Sequence[str],
    verify: Callable[[str, Path], None],
) -> None:
    """Extract only ``members`` (regular files) of a tar archive under ``dest_root``.

    Members go through ``tarfile``'s ``"data"`` filter into a scratch folder, are checked
    by ``verify(name, path)`` and only then renamed to ``dest_root / name``.

    Raises:
        IntegrityError: unreadable archive, a member missing or not a regular file, or a
            member failing ``verify``.
    """
    wanted = set(members)
    scratch = _scratch(dest_root)
    try:
        seen: set[str] = set()
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    name = member.name.removeprefix("./")
                    if name not in wanted:
                        continue
                    if not member.isfile():
                        raise IntegrityError(f"{archive}: member {name} is not a regular file")
                    member.name = name
                    tar.extract(member, scratch, filter="data")
                    seen.add(name)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise IntegrityError(f"{archive} could not be unpacked: {err}") from None
        missing = sorted(wanted - seen)
        if missing:
            raise IntegrityError(f"{archive} lacks {', '.join(missing)}; it is not the official archive")
        for name in members:
            verify(name, scratch / name)
        for name in members:
            target = dest_root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(scratch / name, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _safe_zip_parts(name: str, top: str, archive: Path) -> tuple[str, ...]:
    pure = PurePosixPath(name)
    parts = pure.parts
    if (
        "\\" in name
        or pure.is_absolute()
        or not parts
        or parts[0] != top
        or any(p in ("..", ".", "") or ":" in p for p in parts)
    ):
        raise IntegrityError(
            f"{archive}: refusing member {name!r} (outside {top}/ or an unsafe path)"
        )
    return parts


def extract_zip_tree(
    archive: Path, dest_root: Path, top: str, verify: Callable[[Path], None]
) -> Path:
    """Extract a zip whose members all live under ``top/`` to ``dest_root / top``.

    Member names are checked (no absolute paths, ``..``, drive letters or symlinks);
    the tree is unpacked into a scratch folder, checked by ``verify(tree)`` and renamed
    into place only then.

    Raises:
        IntegrityError: unsafe member, unreadable archive, ``verify`` failure, or
            ``dest_root / top`` already existing (it is never overwritten).
    """
    final = dest_root / top
    if final.exists():
        raise IntegrityError(
            f"{final} already exists but did not verify; delete it and try again"
        )
    scratch = _scratch(dest_root)
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    parts = _safe_zip_parts(info.filename, top, archive)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise IntegrityError(f"{archive}: refusing symbolic link {info.filename!r}")
                    target = scratch.joinpath(*parts)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
            raise IntegrityError(f"{archive} could not be unpacked: {err}") from None
        tree = scratch / top
        if not tree.is_dir():
            raise IntegrityError(f"{archive} holds no {top}/ folder; it is not the official archive")
        verify(tree)
        os.replace(tree, final)
        return final
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
