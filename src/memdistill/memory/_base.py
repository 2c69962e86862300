"""What every memory type provides, the registry, and the equal-storage budget."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._registry import Registry
from ..errors import ConfigError

__all__ = ["MEMORIES", "MemoryReport", "Memory", "solve_slots", "stored_float_budget", "initial_label_logits",
           "check_label_temperature", "LABEL_INIT_SMOOTHING"]

MEMORIES: Registry[type] = Registry("memory type")

# Learned labels start as the label-smoothed one-hot target ``(1 - eps) e_c + eps / L``
# (0.91 on the class, 0.01 elsewhere at L = 10): close to the fixed one-hot labels of a
# memory without learned labels, yet with a softmax gradient that is not vanishing (an
# exact one-hot needs infinite logits and cannot move), and the same smoothing as the
# ``smooth`` label space.
LABEL_INIT_SMOOTHING = 0.1


def check_label_temperature(temperature: float) -> float:
    """``temperature`` as a float, or :class:`ConfigError` unless it is finite and > 0."""
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(f"memory.label_temperature must be a finite number > 0 (valid range (0, inf)), "
                          f"got {temperature!r}; 1 recalls softmax(logits), the default")
    return t


def initial_label_logits(num_classes: int, slots: int, slot_first: bool, temperature: float = 1.0) -> torch.Tensor:
    """Label logits whose recall ``softmax(logits / temperature)`` is the smoothed one-hot
    target of each slot's class (:data:`LABEL_INIT_SMOOTHING`).

    Returns:
        ``(r, L, L)`` when ``slot_first`` (``bases`` layout), else ``(L, r, L)``
        (``images`` layout); entry ``[..., c, :]`` / ``[c, ..., :]`` belongs to class ``c``.
    """
    eps = LABEL_INIT_SMOOTHING
    target = (1 - eps) * torch.eye(num_classes, dtype=torch.float64) + eps / num_classes
    logits = (check_label_temperature(temperature) * target.log()).float()
    return logits.unsqueeze(0).repeat(slots, 1, 1) if slot_first else logits.unsqueeze(1).repeat(1, slots, 1)


def stored_float_budget(ipc: float, image_shape: tuple[int, int, int], num_classes: int) -> int:
    """Floats that ``ipc`` images per class occupy: ``IPC * C*H*W * classes``."""
    c, h, w = image_shape
    return int(math.floor(ipc * c * h * w * num_classes))


def solve_slots(
    ipc: float,
    image_shape: tuple[int, int, int],
    num_classes: int,
    num_bases: int,
    downsample: int,
    learned_labels: bool = False,
) -> int:
    """Largest ``r`` with ``K*C*h*w + r*(K*L [+ L*L]) <= IPC*C*H*W*L`` (METHOD.md).

    ``h, w = H // ds, W // ds``; with learned labels each slot also stores one vector of
    ``L`` label logits per class (``L*L`` floats). Raises :class:`ConfigError` when not even one
    slot fits, stating the smallest budget that does.
    """
    c, h, w = image_shape
    if downsample < 1 or h // downsample < 1 or w // downsample < 1:
        raise ConfigError(f"downsample must be in [1, {min(h, w)}], got {downsample}")
    if num_bases < 1:
        raise ConfigError(f"the number of bases must be >= 1, got {num_bases}")
    budget = stored_float_budget(ipc, image_shape, num_classes)
    bases = num_bases * c * (h // downsample) * (w // downsample)
    per_slot = num_bases * num_classes + (num_classes * num_classes if learned_labels else 0)
    r = (budget - bases) // per_slot
    if r < 1:
        need = bases + per_slot
        min_ipc = need / (c * h * w * num_classes)
        raise ConfigError(
            f"a budget of {ipc} images per class ({budget} floats) cannot hold {num_bases} bases at "
            f"downsample {downsample} ({bases} floats) plus one addressing slot ({per_slot} floats); "
            f"the minimum is {need} floats, i.e. --budget-ipc {min_ipc:.3g}, or use fewer bases / "
            f"a larger downsample"
        )
    return int(r)


@dataclass(frozen=True)
class MemoryReport:
    """Storage figures of a memory."""

    floats_stored: int
    bytes_on_disk: int
    examples: int
    compression_ratio: float  # uint8 bytes of the full training set / bytes of the memory

    def as_dict(self) -> dict[str, Any]:
        return {
            "floats_stored": self.floats_stored,
            "bytes_on_disk": self.bytes_on_disk,
            "examples": self.examples,
            "compression_ratio": self.compression_ratio,
        }


class Memory:
    """Base class: a memory is a dict of named tensors plus a pure recall function.

    Subclasses set ``kind`` and implement :meth:`recall_from` (pure in ``tensors``),
    :meth:`query_from` and :meth:`options`.

    Learned labels are stored as logits (the tensor ``label_logits``, one vector of
    ``L`` per recalled example); an example's target is the distribution
    ``softmax(logits / label_temperature)`` (:meth:`label_targets`), so it stays a
    valid distribution whatever the outer optimiser does to the logits.

    Attributes:
        tensors: the learned tensors, by name.
        image_shape: ``(C, H, W)`` of recalled images (normalised space).
        num_classes: ``L``, the size of the label space.
        slots: ``r``, examples recalled per class.
        label_temperature: ``> 0``, divides the label logits before the softmax.
    """

    kind: str = ""

    def __init__(self, tensors: dict[str, torch.Tensor], image_shape, num_classes: int, slots: int,
                 label_temperature: float = 1.0):
        self.tensors = dict(tensors)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.slots = int(slots)
        self.label_temperature = check_label_temperature(label_temperature)

    # ---- to be provided by each type
    def options(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def recall_from(
        self, tensors: dict[str, torch.Tensor], classes: torch.Tensor, slots: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """Examples of ``(class, slot)`` pairs: ``(N, C, H, W)`` images and targets
        (``(N,)`` class indices, or with learned labels ``(N, L)`` distributions,
        :meth:`label_targets`)."""
        raise NotImplementedError

    def query_from(self, tensors: dict[str, torch.Tensor], q: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Recalled images for queries ``q`` ``(Q, L)``: ``(Q, r, C, H, W)``."""
        raise NotImplementedError

    def init_from_real(self, real, generator: torch.Generator, mix: torch.Tensor | None = None) -> None:
        """Set the content tensors in place from real images (the ``init="real"`` start).

        Args:
            real: the real training split (an :class:`~memdistill.ImageDataset`) of
                ``C`` classes.
            generator: draws which real images are used.
            mix: ``(L, C)`` float64: row ``l`` of the memory recalls the mixture
                ``sum_c mix[l, c] * content_c`` of the classes' real content (label
                spaces, :mod:`..labels`). ``None``: row ``c`` is class ``c`` (``L = C``).
        """
        raise ConfigError(f"memory type {self.kind!r} cannot be initialised from real data; use init='random'")

    # ---- shared
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.tensors))

    def parameters(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.tensors[n] for n in self.names)

    def as_dict(self, values) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, values))

    @property
    def learned_labels(self) -> bool:
        return "label_logits" in self.tensors

    def label_targets(self, logits: torch.Tensor) -> torch.Tensor:
        """``(..., L)`` label logits -> ``(..., L)`` distributions
        ``softmax(logits / label_temperature)`` (differentiable; non-negative, rows sum to 1)."""
        return torch.softmax(logits / self.label_temperature, dim=-1)

    def label_options(self) -> dict[str, Any]:
        """``learned_labels`` and, with learned labels, ``label_temperature`` (for :meth:`options`)."""
        if not self.learned_labels:
            return {"learned_labels": False}
        return {"learned_labels": True, "label_temperature": self.label_temperature}

    # ---- slots per class: the same ``r`` for every class, unless a type says otherwise
    @property
    def ragged(self) -> bool:
        """Whether classes hold different numbers of slots (:meth:`class_slot_counts`)."""
        return False

    def class_slot_counts(self) -> list[int]:
        """Examples recalled for each class: ``slots`` for every class here; a ragged
        memory (:class:`~memdistill.memory.BasesMemory` with ``class_slots``) holds
        ``slots`` for some classes and fewer for others."""
        return [self.slots] * self.num_classes

    @property
    def query_slots(self) -> int:
        """Examples a query recalls: the slots every class holds (``slots`` unless ragged)."""
        return self.slots

    def floats_stored(self) -> int:
        return int(sum(t.numel() for t in self.tensors.values()))

    def report(self, train_size: int | None = None) -> MemoryReport:
        floats = self.floats_stored()
        nbytes = floats * 4
        c, h, w = self.image_shape
        dataset_bytes = (train_size or 0) * c * h * w
        return MemoryReport(
            floats_stored=floats,
            bytes_on_disk=nbytes,
            examples=sum(self.class_slot_counts()),
            compression_ratio=(dataset_bytes / nbytes) if train_size else float("nan"),
        )

    def recall(
        self, classes: list[int] | torch.Tensor | None = None, query: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recall examples (detached).

        ``recall()``: every slot of every class, ``(L*r, C, H, W)`` and targets:
        ``(L*r,)`` class indices, or with learned labels ``(L*r, L)`` distributions
        (a ragged memory: each class's own slots, :meth:`class_slot_counts`, in class order).
        ``recall(classes=[3, 5])``: those classes only.
        ``recall(query=q)``: ``q`` of shape ``(L,)`` or ``(Q, L)``; returns
        ``(Q*r, C, H, W)`` images and the query repeated per slot as ``(Q*r, L)`` targets
        (``r`` = :attr:`query_slots`).
        """
        with torch.no_grad():
            if query is not None:
                q = torch.as_tensor(query, dtype=self.parameters()[0].dtype)
                if q.ndim == 1:
                    q = q.unsqueeze(0)
                if q.ndim != 2 or q.shape[1] != self.num_classes:
                    raise ConfigError(
                        f"a query must have shape ({self.num_classes},) or (Q, {self.num_classes}) "
                        f"(one weight per class of the label space); got {tuple(q.shape)}"
                    )
                if not torch.isfinite(q).all():
                    raise ConfigError("the query contains NaN or Inf")
                x = self.query_from(self.tensors, q)
                return x.flatten(0, 1), q.repeat_interleave(self.query_slots, dim=0)
            cls = torch.arange(self.num_classes) if classes is None else torch.as_tensor(classes, dtype=torch.long)
            if cls.numel() and (int(cls.min()) < 0 or int(cls.max()) >= self.num_classes):
                raise ConfigError(f"classes must be in [0, {self.num_classes - 1}], got {cls.tolist()}")
            if not self.ragged:
                c = cls.repeat_interleave(self.slots)
                s = torch.arange(self.slots).repeat(len(cls))
            else:
                counts = torch.tensor(self.class_slot_counts(), dtype=torch.long)[cls]
                c = cls.repeat_interleave(counts)
                s = torch.cat([torch.arange(int(n)) for n in counts]) if len(cls) else torch.zeros(0, dtype=torch.long)
            return self.recall_from(self.tensors, c, s)
