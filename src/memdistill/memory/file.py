"""The memory file: one ``.safetensors`` file holding a learned memory and what is
needed to use it (normalisation, ZCA, class names, budget figures, provenance).

Layout (format ``memdistill-memory``, version 2):

- tensors ``memory.<name>``: the memory's tensors, float32; learned labels are the
  logits ``memory.label_logits``, recalled as ``softmax(logits / label_temperature)``
  (``options.label_temperature``), so a recalled target is always a distribution;
- tensors ``zca.<name>``: :meth:`ZCAWhitening.state_dict` when the data was whitened;
- metadata key ``memdistill``: one JSON document (kind, options, shapes, tensor
  manifest, dataset, class names, mean/std, budget figures, config, metrics, date).
  A ragged ``bases`` memory (a continual run's shared memory, classes with their own
  slot and basis counts) records them as ``options.class_slots`` and
  ``options.class_bases``; its ``slots`` is the most a class holds, and the addressing's
  zero padding is checked on load.

The container (format header, JSON and finiteness checks, atomic write, header-only
reading: nothing in a file is ever executed or unpickled) is shared with derived
training sets, see :mod:`memdistill._container`. Pictures of a memory are drawn by
:mod:`memdistill.viz`.

Versions: version 1 stored learned labels as raw values (``memory.labels``) used
directly as soft targets; an outer optimiser moves them off the simplex (negative
entries, sums above one) and the soft cross-entropy on them has no lower bound. Version
2 stores logits instead. A version-1 file without learned labels means the same in both
and loads; one with raw labels is refused (:data:`RAW_LABELS_REFUSED`), as no reading of
its labels is both faithful and sound.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .._container import FileFormat, TensorSpec, check_tensors, jsonable, read_container, write_container
from ..data.zca import ZCAWhitening
from ..errors import ConfigError, IntegrityError, UnknownNameError
from ._base import MEMORIES, Memory

__all__ = ["FORMAT", "FORMAT_VERSION", "MemoryFile", "load_memory", "save_memory"]

FORMAT = "memdistill-memory"
FORMAT_VERSION = 2  # 2: learned labels stored as logits (``label_logits``); 1: raw values (``labels``)
RAW_LABELS_REFUSED = (
    "holds learned labels in the version-1 form (raw values used directly as soft targets, tensor "
    "'memory.labels'): they need not be distributions, and the soft cross-entropy on them has no lower "
    "bound, so this memdistill does not read them. Distill the memory again (learned labels are now "
    "stored as logits and recalled as distributions), or without --learned-labels"
)
MEMORY_FORMAT = FileFormat(FORMAT, FORMAT_VERSION, "memory file")
_MEMORY_PREFIX = "memory."
_ZCA_PREFIX = "zca."


# ----------------------------------------------------------------------------- saving
def save_memory(
    path: str | Path,
    memory: Memory,
    *,
    dataset: str,
    classes: list[str],
    mean,
    std,
    zca: ZCAWhitening | None = None,
    config: dict | None = None,
    metrics: dict | None = None,
    train_size: int | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``memory`` to ``path`` (a ``.safetensors`` file) atomically.

    Args:
        memory: a memory from the registry (``memory.tensors`` are stored as float32).
        dataset: name of the dataset the memory was distilled from.
        classes: class names, one per class of the label space.
        mean, std: per-channel normalisation (``C`` values each, pixel units in ``[0, 1]``).
        zca: the whitening applied after mean/std, if any (stored with the memory so
            :meth:`MemoryFile.to_pixels` can undo it).
        config: the resolved run configuration (JSON-compatible values).
        metrics: final metrics of the run.
        train_size: number of real training images, for the compression ratio.
        extra: anything else JSON-compatible.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: the memory holds NaN/Inf, or an argument is inconsistent with the
            memory. Nothing is written then and any file already at ``path`` is kept.
    """
    path = Path(path)
    if not isinstance(memory, Memory) or not memory.kind:
        raise ConfigError(f"save_memory needs a registered Memory, got {type(memory).__name__}")
    c = memory.image_shape[0]
    classes = [str(name) for name in classes]
    if len(classes) != memory.num_classes:
        raise ConfigError(
            f"the memory has {memory.num_classes} classes but {len(classes)} class names were given"
        )
    mean_l, std_l = _channel_stats(mean, "mean", c), _channel_stats(std, "std", c)
    if any(s <= 0 for s in std_l):
        raise ConfigError(f"std must be > 0 for every channel, got {std_l}")
    if train_size is not None and (isinstance(train_size, bool) or int(train_size) != train_size or train_size < 1):
        raise ConfigError(f"train_size must be a positive integer, got {train_size!r}")
    tensors = _stored_tensors(memory, zca, path)
    report = memory.report(train_size).as_dict()
    meta: dict[str, Any] = {
        "kind": memory.kind,
        "options": memory.options(),
        "image_shape": list(memory.image_shape),
        "num_classes": memory.num_classes,
        "slots": memory.slots,
        "tensors": {name: list(memory.tensors[name].shape) for name in memory.names},
        "dataset": str(dataset),
        "classes": classes,
        "mean": mean_l,
        "std": std_l,
        "zca": {"present": zca is not None, "regularization": None if zca is None else zca.regularization},
        # compression_ratio counts the memory's float32 payload (floats_stored * 4), the
        # equal-storage accounting; bytes_on_disk is the whole file (header, ZCA included).
        "budget": {**report, "train_size": None if train_size is None else int(train_size)},
        "config": config,
        "metrics": metrics,
        "extra": extra,
    }
    return write_container(path, tensors, meta, MEMORY_FORMAT, size_field=("budget", "bytes_on_disk"))


def _stored_tensors(memory: Memory, zca: ZCAWhitening | None, path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors: ``memory.<name>`` as float32 and ``zca.<name>``, all finite."""
    tensors: dict[str, torch.Tensor] = {}
    for name in memory.names:
        t = memory.tensors[name].detach()
        if not t.is_floating_point():
            raise ConfigError(f"memory tensor {name!r} must be floating point, got {t.dtype}")
        t = t.to(device="cpu", dtype=torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(
                f"memory tensor {name!r} contains NaN or Inf; refusing to save it to {path} "
                "(any file already there is left untouched). Lower the outer learning rate or "
                "clip gradients, and save the last finite memory."
            )
        tensors[_MEMORY_PREFIX + name] = t.contiguous().clone()
    if zca is not None:
        if tuple(zca.image_shape) != tuple(memory.image_shape):
            raise ConfigError(
                f"the ZCA is fitted for images {zca.image_shape}, the memory holds {tuple(memory.image_shape)}"
            )
        for name, t in zca.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ConfigError(f"ZCA tensor {name!r} contains NaN or Inf; refusing to save")
            tensors[_ZCA_PREFIX + name] = t.contiguous()
    return tensors


def _channel_stats(values, what: str, channels: int) -> list[float]:
    try:
        out = [float(v) for v in torch.as_tensor(values, dtype=torch.float64).flatten().tolist()]
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{what} must be {channels} numbers, got {values!r}") from None
    if len(out) != channels or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{what} must be {channels} finite numbers (one per channel), got {out}")
    return out


# ---------------------------------------------------------------------------- loading
def load_memory(path: str | Path) -> "MemoryFile":
    """Read a memory file written by :func:`save_memory`.

    Raises:
        ConfigError: the file does not exist or is a directory.
        IntegrityError: not a safetensors file, not a memdistill memory file, written by
            a newer memdistill, tensors missing / of the wrong shape, or learned labels
            in the version-1 raw form (see the module docstring).
        UnknownNameError: the memory kind is not known to this memdistill (lists valid kinds).
    """
    stored = read_container(path, MEMORY_FORMAT)
    path, meta = stored.path, stored.meta
    kind = meta.get("kind")
    try:
        cls = MEMORIES.get(str(kind))
    except UnknownNameError as err:
        raise UnknownNameError(f"{path} holds a memory of an unknown kind: {err}") from None
    image_shape, num_classes, slots = _check_meta(meta, path)
    if "labels" in meta["tensors"]:
        raise IntegrityError(f"{path} {RAW_LABELS_REFUSED}")

    everything = stored.tensors()
    tensors = {k[len(_MEMORY_PREFIX):]: v for k, v in everything.items() if k.startswith(_MEMORY_PREFIX)}
    zca_state = {k[len(_ZCA_PREFIX):]: v for k, v in everything.items() if k.startswith(_ZCA_PREFIX)}
    stray = [k for k in everything if not k.startswith((_MEMORY_PREFIX, _ZCA_PREFIX))]
    expected = {name: TensorSpec(torch.float32, tuple(shape), "memory tensors")
                for name, shape in meta["tensors"].items()}
    check_tensors(path, tensors, expected, unexpected=stray)

    layout = {k: meta["options"][k] for k in getattr(cls, "layout_options", ()) if k in meta["options"]}
    try:
        memory = cls(tensors, image_shape, num_classes, slots, label_temperature=_label_temperature(meta, path),
                     **layout)
    except ConfigError as err:  # a ragged layout that does not fit the tensors
        raise IntegrityError(f"{path}: invalid memory layout: {err}") from None
    _probe(memory, meta, path)
    zca = _load_zca(zca_state, meta, image_shape, path)
    return MemoryFile(memory, meta, zca=zca, path=path)


def _is_int(v: Any, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _check_meta(meta: dict, path: Path) -> tuple[tuple[int, int, int], int, int]:
    def bad(what: str) -> IntegrityError:
        return IntegrityError(f"{path}: invalid memdistill metadata: {what}")

    shape = meta.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) for s in shape)):
        raise bad(f"image_shape must be [C, H, W], got {shape!r}")
    num_classes, slots = meta.get("num_classes"), meta.get("slots")
    if not _is_int(num_classes) or not _is_int(slots):
        raise bad(f"num_classes and slots must be positive integers, got {num_classes!r}, {slots!r}")
    classes = meta.get("classes")
    if not (isinstance(classes, list) and len(classes) == num_classes and all(isinstance(c, str) for c in classes)):
        raise bad(f"classes must be {num_classes} names")
    for key in ("mean", "std"):
        v = meta.get(key)
        if not (isinstance(v, list) and len(v) == shape[0]
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            raise bad(f"{key} must be {shape[0]} numbers")
    if any(s <= 0 for s in meta["std"]):
        raise bad("std must be > 0")
    manifest = meta.get("tensors")
    if not (isinstance(manifest, dict) and manifest
            and all(isinstance(v, list) and all(_is_int(s, 0) for s in v) for v in manifest.values())):
        raise bad("tensors must map names to shapes")
    for key in ("options", "zca", "budget"):
        if not isinstance(meta.get(key), dict):
            raise bad(f"{key} is missing")
    if not isinstance(meta.get("dataset"), str):
        raise bad("dataset is missing")
    return tuple(shape), num_classes, slots  # type: ignore[return-value]


def _label_temperature(meta: dict, path: Path) -> float:
    """``options.label_temperature`` (1 when absent: a file without learned labels)."""
    t = meta["options"].get("label_temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
        raise IntegrityError(f"{path}: invalid memdistill metadata: options.label_temperature must be a "
                             f"number > 0, got {t!r}")
    return float(t)


def _probe(memory: Memory, meta: dict, path: Path) -> None:
    """Check the tensors agree with ``image_shape``, ``num_classes`` and ``slots`` by
    recalling the last class and a one-hot query of it (cheap, works for every type)."""
    L, r, shape = memory.num_classes, memory.slots, memory.image_shape
    r_last, r_query = memory.class_slot_counts()[-1], memory.query_slots
    try:
        x, y = memory.recall(classes=[L - 1])
        xq, _ = memory.recall(query=torch.eye(L)[L - 1])
        options = memory.options()
    except Exception as err:  # noqa: BLE001 - any failure means inconsistent tensors
        raise IntegrityError(
            f"{path}: the tensors do not fit image_shape {shape}, {L} classes and {r} slots ({err})"
        ) from None
    if (tuple(x.shape) != (r_last, *shape) or tuple(xq.shape) != (r_query, *shape)
            or tuple(y.shape) not in ((r_last,), (r_last, L))):
        raise IntegrityError(
            f"{path}: the tensors do not fit image_shape {shape}, {L} classes and {r} slots "
            f"(recall gave {tuple(x.shape)}, a query {tuple(xq.shape)}, targets {tuple(y.shape)})"
        )
    if jsonable(options, "options") != meta["options"]:
        raise IntegrityError(f"{path}: the tensors give options {options}, the metadata says {meta['options']}")


def _load_zca(state: dict[str, torch.Tensor], meta: dict, image_shape, path: Path) -> ZCAWhitening | None:
    present = bool(meta["zca"].get("present"))
    if not present:
        if state:
            raise IntegrityError(f"{path}: ZCA tensors are present but the metadata says there is no ZCA")
        return None
    try:
        zca = ZCAWhitening.from_state_dict(state)
    except ConfigError as err:
        raise IntegrityError(f"{path}: the stored ZCA is unusable: {err}") from None
    if tuple(zca.image_shape) != tuple(image_shape):
        raise IntegrityError(f"{path}: the ZCA is for images {zca.image_shape}, the memory holds {image_shape}")
    return zca


# ------------------------------------------------------------------------ the object
class MemoryFile:
    """A loaded memory with everything needed to use it.

    Attributes:
        memory: the :class:`~memdistill.memory.Memory` (tensors in normalised space).
        meta: the full metadata document.
        dataset, classes: dataset name and class names (``len(classes) == num_classes``).
        image_shape: ``(C, H, W)``; num_classes: ``L``; slots: ``r`` examples per class.
        kind: the memory type (``"bases"``, ``"images"``).
        zca: the :class:`ZCAWhitening` of the data, or ``None``.
        mean, std: per-channel normalisation in pixel units.
        path: the file it was read from (``None`` if built in memory).
    """

    def __init__(self, memory: Memory, meta: dict, zca: ZCAWhitening | None = None,
                 path: str | Path | None = None) -> None:
        self.memory = memory
        self.meta = meta
        self.zca = zca
        self.path = None if path is None else Path(path)
        self.kind = memory.kind
        self.dataset = str(meta.get("dataset", ""))
        self.classes = [str(c) for c in meta.get("classes", [])]
        self.image_shape = tuple(memory.image_shape)
        self.num_classes = memory.num_classes
        self.slots = memory.slots
        self.mean = tuple(float(v) for v in meta["mean"])
        self.std = tuple(float(v) for v in meta["std"])

    def recall(self, classes: list[int] | torch.Tensor | None = None,
               query: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Recalled ``(N, C, H, W)`` images (normalised space) and targets; see
        :meth:`Memory.recall`."""
        return self.memory.recall(classes=classes, query=query)

    def as_dataset(self):
        """Everything the memory recalls as a :class:`~memdistill.evaluate.TrainingSet`
        (``L*r`` examples; hard ``(N,)`` labels, or with learned labels ``(N, L)``
        distributions, trained on with soft cross-entropy)."""
        from ..evaluate import TrainingSet

        x, y = self.recall()
        return TrainingSet(x, y)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., C, H, W)`` images to pixel space in ``[0, 1]``: undoes the
        ZCA (if any), then mean/std. Computed in float64, returned in ``x``'s dtype."""
        if not x.is_floating_point() or x.ndim < 3 or tuple(x.shape[-3:]) != self.image_shape:
            raise ConfigError(f"to_pixels takes float images (..., {self.image_shape}), got {x.dtype} {tuple(x.shape)}")
        z = x.detach().to(torch.float64)
        if self.zca is not None:
            z = self.zca.inverse(z)
        mean = torch.tensor(self.mean, dtype=z.dtype, device=z.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=z.dtype, device=z.device).view(-1, 1, 1)
        return (z * std + mean).clamp(0.0, 1.0).to(x.dtype)

    def report(self) -> dict[str, Any]:
        """Budget figures (floats stored, bytes on disk, examples, compression ratio,
        training-set size) with the kind, options, dataset and metrics."""
        budget = dict(self.meta.get("budget", {}))
        return {
            "kind": self.kind,
            "options": dict(self.meta.get("options", {})),
            "dataset": self.dataset,
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "slots": self.slots,
            "zca": self.zca is not None,
            **budget,
            "metrics": self.meta.get("metrics"),
            "library_version": self.meta.get("library_version"),
            "created": self.meta.get("created"),
        }

    def __repr__(self) -> str:
        return (f"MemoryFile(kind={self.kind!r}, dataset={self.dataset!r}, classes={self.num_classes}, "
                f"slots={self.slots}, image_shape={self.image_shape}, floats={self.memory.floats_stored()}, "
                f"zca={self.zca is not None})")

