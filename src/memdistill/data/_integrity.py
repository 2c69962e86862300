"""Checksums, verified reads and a restricted unpickler.

The rule this module enforces: no byte of a dataset file is parsed (decoded as idx,
unpickled, read as a ``.mat``) before the file has passed its declared checksum. A file's
checksum entry holds the *official* md5 of the file as distributed and, for ``.gz`` files,
the sha256 of the decompressed payload, so a re-compressed copy of the same data (Debian
re-gzips Fashion-MNIST) is still accepted while any change to the data is not.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import pickle
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..errors import ConfigError, IntegrityError

__all__ = [
    "FileChecksum",
    "as_checksum",
    "read_verified",
    "verify_file",
    "safe_unpickle",
    "RestrictedUnpickler",
]

_MD5 = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
# Ceiling on what a .gz may decompress to when its declared size is unknown, so a
# corrupt or hostile file cannot exhaust memory before its checksum is known to fail.
_MAX_PAYLOAD = 1 << 30


@dataclass(frozen=True)
class FileChecksum:
    """What a file must hash to.

    Attributes:
        md5: md5 of the file exactly as stored (for official files: the published md5).
        payload_sha256: sha256 of the file's content after gzip decompression (for
            ``.gz`` files), or of the file itself when it is stored uncompressed.
        payload_size: size in bytes of that payload, when known (caps decompression).

    A file passes when its md5 matches, otherwise when its payload sha256 matches.
    """

    md5: str | None = None
    payload_sha256: str | None = None
    payload_size: int | None = None

    def __post_init__(self) -> None:
        if self.md5 is None and self.payload_sha256 is None:
            raise ConfigError("a checksum needs an md5 or a payload_sha256")
        if self.md5 is not None and not _MD5.match(self.md5):
            raise ConfigError(f"md5 must be 32 lowercase hex digits, got {self.md5!r}")
        if self.payload_sha256 is not None and not _SHA256.match(self.payload_sha256):
            raise ConfigError(
                f"sha256 must be 64 lowercase hex digits, got {self.payload_sha256!r}"
            )

    def describe(self) -> str:
        parts = []
        if self.md5:
            parts.append(f"md5 {self.md5}")
        if self.payload_sha256:
            parts.append(f"sha256 {self.payload_sha256} of the (decompressed) data")
        return " or ".join(parts)


def as_checksum(value: Any, *, file: str) -> FileChecksum:
    """Coerce a user-supplied checksum for ``file``.

    Accepts a :class:`FileChecksum`, a hex string (32 digits: md5 of the file; 64 digits:
    sha256 of its decompressed payload, i.e. of the file itself when not compressed), or
    a mapping with keys ``md5`` / ``payload_sha256`` (alias ``sha256``) / ``payload_size``.
    """
    if isinstance(value, FileChecksum):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if _MD5.match(v):
            return FileChecksum(md5=v)
        if _SHA256.match(v):
            return FileChecksum(payload_sha256=v)
        raise ConfigError(
            f"checksum for {file!r} must be an md5 (32 hex digits) or a sha256 (64 hex "
            f"digits), got {value!r}"
        )
    if isinstance(value, Mapping):
        unknown = set(value) - {"md5", "payload_sha256", "sha256", "payload_size"}
        if unknown:
            raise ConfigError(
                f"checksum for {file!r} has unknown keys {sorted(unknown)}; "
                "valid keys: md5, payload_sha256 (or sha256), payload_size"
            )
        sha = value.get("payload_sha256", value.get("sha256"))
        return FileChecksum(
            md5=value["md5"].lower() if value.get("md5") else None,
            payload_sha256=sha.lower() if sha else None,
            payload_size=value.get("payload_size"),
        )
    raise ConfigError(
        f"checksum for {file!r} must be a hex string, a mapping or a FileChecksum, "
        f"got {type(value).__name__}"
    )


def _mismatch(path: Path, checksum: FileChecksum, actual: str, hint: str) -> IntegrityError:
    return IntegrityError(
        f"checksum mismatch for {path}: expected {checksum.describe()}, got {actual}. "
        f"The file is corrupt, truncated or not the official one.\n{hint}"
    )


def _corrupt_gzip(
    path: Path, err: BaseException, checksum: FileChecksum, md5: str, hint: str
) -> IntegrityError:
    return IntegrityError(
        f"{path} is not a valid gzip file (truncated or corrupt: {err}); expected "
        f"{checksum.describe()}, got md5 {md5}.\n{hint}"
    )


def _gunzip(raw: bytes, path: Path, checksum: FileChecksum, md5: str, hint: str) -> bytes:
    limit = checksum.payload_size if checksum.payload_size is not None else _MAX_PAYLOAD
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
            payload = gz.read(limit + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise _corrupt_gzip(path, err, checksum, md5, hint) from None
    if len(payload) > limit:
        raise IntegrityError(
            f"{path} decompresses to more than {limit} bytes, more than the data it should "
            f"hold; expected {checksum.describe()}.\n{hint}"
        )
    return payload


def _is_gz(path: Path, compressed: bool | None) -> bool:
    return path.name.endswith(".gz") if compressed is None else compressed


def _read_bytes(path: Path, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise IntegrityError(f"cannot read {path}: {err}.\n{hint}") from None


def read_verified(
    path: Path, checksum: FileChecksum, *, hint: str = "", compressed: bool | None = None
) -> bytes:
    """Read ``path``, check it against ``checksum`` and return its payload.

    For a gzip file (``compressed``, by default: the name ends in ``.gz``) the payload is
    the decompressed content; otherwise the file's bytes. The bytes returned are exactly
    the bytes that were verified.

    Raises:
        IntegrityError: mismatch, unreadable or undecompressable file; the message names
            the file, the expected and actual hashes, and ``hint`` (how to fix).
    """
    path = Path(path)
    raw = _read_bytes(path, hint)
    md5 = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if _is_gz(path, compressed):
        payload = _gunzip(raw, path, checksum, md5, hint)
        if checksum.md5 == md5:
            return payload
        sha = hashlib.sha256(payload).hexdigest()
        if checksum.payload_sha256 == sha:
            return payload
        raise _mismatch(path, checksum, f"md5 {md5} (sha256 {sha} decompressed)", hint)
    if checksum.md5 == md5:
        return raw
    if checksum.payload_sha256 is not None:
        sha = hashlib.sha256(raw).hexdigest()
        if checksum.payload_sha256 == sha:
            return raw
        raise _mismatch(path, checksum, f"md5 {md5} (sha256 {sha})", hint)
    raise _mismatch(path, checksum, f"md5 {md5}", hint)


def verify_file(
    path: Path, checksum: FileChecksum, *, hint: str = "", compressed: bool | None = None
) -> None:
    """Like :func:`read_verified` but streams the file (for large archives)."""
    path = Path(path)
    md5 = hashlib.md5(usedforsecurity=False)
    sha = hashlib.sha256()
    gz = _is_gz(path, compressed)
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                md5.update(chunk)
                if not gz and checksum.payload_sha256 is not None:
                    sha.update(chunk)
    except OSError as err:
        raise IntegrityError(f"cannot read {path}: {err}.\n{hint}") from None
    if checksum.md5 == md5.hexdigest():
        return
    if gz:
        read_verified(path, checksum, hint=hint, compressed=True)
        return
    actual = f"md5 {md5.hexdigest()}"
    if checksum.payload_sha256 is not None:
        if checksum.payload_sha256 == sha.hexdigest():
            return
        actual += f" (sha256 {sha.hexdigest()})"
    raise _mismatch(path, checksum, actual, hint)


# --------------------------------------------------------------------------- unpickling
def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


# Exactly what a pickled dict of numpy arrays, ints, lists and strings needs.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _RefusedGlobal(Exception):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals numpy arrays need.

    Any other global (``os.system``, ``builtins.eval``, ...) is refused before it is
    looked up, so a malicious pickle cannot run code; :func:`safe_unpickle` turns the
    refusal into an :class:`IntegrityError`.
    """

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise _RefusedGlobal(module, name)
        return factory()


def safe_unpickle(payload: bytes, path: Path, *, hint: str = "") -> Any:
    """Unpickle already verified bytes with :class:`RestrictedUnpickler` (latin1 strings).

    Raises:
        IntegrityError: the pickle references a forbidden global or is malformed.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except _RefusedGlobal as refused:
        raise IntegrityError(
            f"{path} is not a plain data pickle: it references {refused.qualname}, which "
            "this loader refuses to import (it could run code). Only numpy arrays, lists, "
            f"numbers and strings are allowed. Do not use this file.\n{hint}"
        ) from None
    except Exception as err:  # malformed pickles raise many different types
        raise IntegrityError(
            f"{path} could not be unpickled ({type(err).__name__}: {err}).\n{hint}"
        ) from None
