"""The container every memdistill ``.safetensors`` output shares: tensors plus one JSON
document under the metadata key ``memdistill``.

The document starts with ``format`` (what the file holds), ``format_version``,
``library_version`` and ``created``; the rest belongs to the format. Writing checks
that every value is JSON-compatible and every float tensor finite, then replaces the
file atomically (temporary file, then rename), so a refused or interrupted write keeps
the previous file. Reading parses only the safetensors header (JSON) and raw tensor
bytes: nothing in a file is ever executed or unpickled.

Used by the memory file (:mod:`memdistill.memory.file`) and derived training sets
(:mod:`memdistill.derive`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ._io import atomic_write_bytes
from ._version import __version__
from .errors import ConfigError, IntegrityError

__all__ = ["META_KEY", "FileFormat", "StoredFile", "TensorSpec", "check_tensors", "jsonable",
           "read_container", "write_container"]

META_KEY = "memdistill"
_MAX_HEADER = 100 * 1024 * 1024  # the limit safetensors itself enforces


@dataclass(frozen=True)
class FileFormat:
    """One kind of file in the container.

    Attributes:
        tag: the ``format`` value (``"memdistill-memory"``).
        version: the newest ``format_version`` this code writes and reads.
        noun: what the file is called in messages (``"memory file"``).
    """

    tag: str
    version: int
    noun: str


@dataclass(frozen=True)
class TensorSpec:
    """What a stored tensor must be: its ``dtype``, its ``shape`` (``None``: any) and
    ``role``, the plural naming it in messages (``"memory tensors"``)."""

    dtype: torch.dtype
    shape: tuple[int, ...] | None = None
    role: str = "tensors"


# ----------------------------------------------------------------------------- writing
_HEADER_KEYS = ("format", "format_version", "library_version", "created")


def write_container(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    fmt: FileFormat,
    *,
    size_field: tuple[str, ...] | None = None,
) -> Path:
    """Write ``tensors`` and the document ``meta`` (after the format header) to ``path``
    atomically.

    Args:
        tensors: name -> tensor (any device; stored on the CPU, contiguous).
        meta: the format's own JSON-compatible entries (see :func:`jsonable`).
        size_field: key path into ``meta`` of an integer that must hold the size of the
            whole file in bytes (its value is the first guess); settled by re-encoding.

    Raises:
        ConfigError: a float tensor holds NaN or Inf, or a value is not JSON-compatible.
            Nothing is written then and any file already at ``path`` is kept.
    """
    path = Path(path)
    stored = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ConfigError(f"tensor {name!r} contains NaN or Inf; refusing to write {path}")
        stored[name] = t.contiguous()
    doc = jsonable({
        "format": fmt.tag,
        "format_version": fmt.version,
        "library_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # the header is this write's own: a re-saved document cannot carry an old one over
        **{k: v for k, v in meta.items() if k not in _HEADER_KEYS},
    }, "")
    return atomic_write_bytes(path, _encode(stored, doc, size_field))


def _encode(tensors: dict[str, torch.Tensor], doc: dict, size_field: tuple[str, ...] | None) -> bytes:
    from safetensors.torch import save as serialize

    def encode() -> bytes:
        return serialize(tensors, metadata={META_KEY: json.dumps(doc, allow_nan=False)})

    if size_field is None:
        return encode()
    *parents, key = size_field
    holder = doc
    for k in parents:
        holder = holder[k]
    # The size is part of the header it measures: iterate to the fixed point. The
    # length depends only on the number of digits, which can only grow, so this ends.
    data = b""
    for _ in range(8):
        holder[key] = len(data) or int(holder[key])
        data = encode()
        if len(data) == holder[key]:
            return data
    raise ConfigError("could not settle the file size recorded in the header")  # pragma: no cover


def jsonable(obj: Any, where: str) -> Any:
    """A JSON-compatible copy of ``obj``; non-finite floats become ``null``.

    Raises:
        ConfigError: a value has no JSON form (``where`` names it, e.g. ``config.fn``).
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return [jsonable(v, where) for v in sorted(obj, key=str)]
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj), where)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return jsonable(obj.item(), where)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:  # numpy scalars
        return jsonable(obj.item(), where)
    raise ConfigError(f"{where or 'the value'} holds a {type(obj).__name__}, which cannot be stored as JSON")


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class StoredFile:
    """A container whose header passed :func:`read_container`; the tensors are decoded
    only when asked for (:meth:`tensors`), after the format has checked the document."""

    path: Path
    meta: dict
    data: bytes = dataclasses.field(repr=False)

    def tensors(self) -> dict[str, torch.Tensor]:
        """All stored tensors by name (CPU).

        Raises:
            IntegrityError: the tensor bytes are corrupt.
        """
        from safetensors.torch import load as deserialize

        try:
            return deserialize(self.data)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise IntegrityError(f"{self.path} is corrupt: {err}") from None


def read_container(path: str | Path, fmt: FileFormat) -> StoredFile:
    """Read the header of a file written by :func:`write_container` for ``fmt``.

    Raises:
        ConfigError: the file does not exist or is a directory.
        IntegrityError: not a safetensors file, not a ``fmt`` file (another format or
            none), an invalid document, or written by a newer memdistill.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{fmt.noun} not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a {fmt.noun}")
    data = path.read_bytes()
    raw = _read_header(data, path).get("__metadata__") or {}
    if not isinstance(raw, dict) or META_KEY not in raw:
        raise IntegrityError(f"{path} is not a memdistill {fmt.noun} (a safetensors file without our metadata)")
    try:
        meta = json.loads(raw[META_KEY])
    except (TypeError, ValueError) as err:
        raise IntegrityError(f"{path}: the memdistill metadata is not valid JSON ({err})") from None
    tag = meta.get("format") if isinstance(meta, dict) else None
    if tag != fmt.tag:
        raise IntegrityError(f"{path} is not a memdistill {fmt.noun} (format {tag!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise IntegrityError(f"{path}: invalid format_version {version!r}")
    if version > fmt.version:
        raise IntegrityError(
            f"{path} was written by a newer memdistill ({meta.get('library_version', '?')}, format_version "
            f"{version}; this one reads up to {fmt.version}); upgrade memdistill to read it"
        )
    return StoredFile(path, meta, data)


def _read_header(data: bytes, path: Path) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    not_st = f"{path} is not a safetensors file"
    if len(data) < 8:
        raise IntegrityError(f"{not_st} (only {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > min(_MAX_HEADER, len(data) - 8):
        raise IntegrityError(f"{not_st} (bad header length)")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(f"{not_st} (the header is not JSON)") from None
    if not isinstance(header, dict):
        raise IntegrityError(f"{not_st} (the header is not a JSON object)")
    return header


def check_tensors(
    path: Path,
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, TensorSpec],
    unexpected: Iterable[str] = (),
) -> None:
    """Check ``tensors`` are exactly the ``expected`` names (plus none of ``unexpected``,
    names found elsewhere in the file), each of its dtype and shape, floats finite.

    Raises:
        IntegrityError: naming the first tensor that fails.
    """
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected)) + sorted(unexpected)
    if missing or extra:
        raise IntegrityError(
            f"{path}: the tensors do not match the metadata; missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {', '.join(extra) or 'none'}"
        )
    for name, t in tensors.items():
        spec = expected[name]
        if spec.shape is not None and tuple(t.shape) != tuple(spec.shape):
            raise IntegrityError(
                f"{path}: tensor {name!r} has shape {tuple(t.shape)}, the metadata says {tuple(spec.shape)}"
            )
        if t.dtype != spec.dtype:
            raise IntegrityError(
                f"{path}: tensor {name!r} is {t.dtype}, {spec.role} are {str(spec.dtype).removeprefix('torch.')}"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise IntegrityError(f"{path}: tensor {name!r} contains NaN or Inf")
