"""Label spaces: what the coordinates of a query (and of a network's output) mean.

A memory's addressing is ``(r, L, K)``: one row per coordinate of the *label space*. With
the default ``onehot`` space the coordinates are the classes (``L = C``). Other spaces
give every class a richer target vector, e.g. ``parity`` on digits: ``L = 12``, the ten
digits followed by ``even`` and ``odd``; class 3 has the target ``e_3 + e_odd``.

A label space holds:

- ``coordinates``: the ``L`` names of the label-space coordinates;
- ``table``: ``(R, L)`` target vectors of the *training rows*. Rows ``0..C-1`` are the
  original classes; further rows are coarse-only queries (e.g. ``e_even`` with a target
  only in the parity group), so a coarse query recalls examples of the superclass
  directly;
- ``groups``: slices of ``L``; the loss is the sum over groups of a softmax
  cross-entropy with (soft) targets. The first group holds the original classes and the
  evaluation on them takes the argmax over that group.

Distillation with a label space (``memory.label_space``): the recalled example of row
``j`` at slot ``i`` is ``x_i(table[j])`` (the memory's generalised query), its target is
``table[j]``; inner and outer networks output ``L`` logits. The distillation asks the
space for everything that depends on it (:meth:`LabelSpace.new_memory`,
:meth:`~LabelSpace.wrap_forward`, :meth:`~LabelSpace.recall_rows`,
:meth:`~LabelSpace.class_loss`, :meth:`~LabelSpace.class_examples`); ``onehot``
(:class:`OneHotSpace`) keeps the paper's plain path: class-index targets, plain logits,
the memory's own recall, and the memory types' own real-data initialisation.

A new label space: a factory registered in :data:`LABEL_SPACES` returning a
:class:`LabelSpace`; ``tests/test_queries.py`` and ``tests/test_derive.py`` show the checks.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ._registry import Registry
from .engine.plan import memory_recall
from .errors import ConfigError
from .memory import Memory, create_memory

__all__ = ["LABEL_SPACES", "LabelSpace", "OneHotSpace", "create_label_space", "list_label_spaces", "label_space_of",
           "equal_storage_ipc"]

LABEL_SPACES: Registry[Callable[..., "LabelSpace"]] = Registry("label space")


def list_label_spaces() -> list[str]:
    return LABEL_SPACES.names()


@dataclass(frozen=True, eq=False)
class LabelSpace:
    """A label space (see the module docstring).

    Attributes:
        name: registry name (``onehot``, ``parity``, ``coarse``, ``smooth``).
        class_names: the ``C`` original classes (rows ``0..C-1`` of ``table``).
        coordinates: the ``L`` coordinate names.
        table: ``(R, L)`` float target vectors of the training rows, ``R >= C``.
        row_names: ``R`` names of the training rows.
        groups: ``(start, stop)`` slices of ``L``; the first is the class group.
    """

    name: str
    class_names: tuple[str, ...]
    coordinates: tuple[str, ...]
    table: torch.Tensor
    row_names: tuple[str, ...]
    groups: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        R, L = self.table.shape
        if len(self.coordinates) != L or len(self.row_names) != R or R < len(self.class_names):
            raise ConfigError(f"label space {self.name!r}: table {tuple(self.table.shape)} does not match "
                              f"{len(self.coordinates)} coordinates, {len(self.row_names)} rows and "
                              f"{len(self.class_names)} classes")
        covered = sorted(i for a, b in self.groups for i in range(a, b))
        if covered != list(range(L)):
            raise ConfigError(f"label space {self.name!r}: the loss groups {self.groups} must tile 0..{L - 1}")

    @property
    def width(self) -> int:
        """``L``, the number of coordinates (network outputs, addressing rows)."""
        return int(self.table.shape[1])

    @property
    def rows(self) -> int:
        return int(self.table.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_onehot(self) -> bool:
        return self.name == "onehot"

    # ---------------------------------------------------------------- losses
    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` logits -> per-group log-softmax, concatenated ``(N, L)``."""
        return torch.cat([torch.log_softmax(logits[:, a:b], dim=1) for a, b in self.groups], dim=1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over groups of soft cross-entropy, averaged over the batch.

        ``logits`` ``(N, L)``, ``target`` ``(N, L)`` (rows of ``table`` or any soft
        targets whose group parts are distributions or zero)."""
        return -(target * self.log_probs(logits)).sum(1).mean()

    def wrap_forward(self, forward: Callable) -> Callable:
        """A forward function returning :meth:`log_probs`.

        The engine's inner loss is a single-softmax soft cross-entropy; on group
        log-probabilities it equals :meth:`loss` plus ``sum(target) * log(G)`` (``G``
        groups; each group's probabilities sum to one), a constant: the meta-gradient is
        exactly that of the group loss, only the logged inner loss is shifted."""

        def wrapped(params, x):
            return self.log_probs(forward(params, x))

        return wrapped

    def class_loss(self, outputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The outer loss: ``outputs`` ``(N, L)`` of a :meth:`wrap_forward` forward
        (group log-probabilities) on images of original classes ``classes`` ``(N,)``;
        the cross-entropy against their target rows, averaged over the batch."""
        return -(self.table.to(outputs)[classes] * outputs).sum(1).mean()

    def class_predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N,)`` original-class predictions: argmax over the class group."""
        a, b = self.groups[0]
        return logits[:, a:b].argmax(1) + a

    # ------------------------------------------------------- queries & recall
    def query_of(self, name: str) -> torch.Tensor:
        """``(L,)`` query of a class name (its target row), a training-row name or a
        coordinate name (its unit vector)."""
        if name in self.class_names:
            return self.table[self.class_names.index(name)].clone()
        if name in self.row_names:
            return self.table[self.row_names.index(name)].clone()
        if name in self.coordinates:
            return torch.eye(self.width)[self.coordinates.index(name)]
        raise ConfigError(f"label space {self.name!r} has no class or coordinate {name!r}; valid: "
                          f"{', '.join(dict.fromkeys(self.class_names + self.row_names + self.coordinates))}")

    def recall_rows(self, memory, augmentation=None):
        """``recall(values, plan) -> (x, target)`` for the engine: plan ``classes`` index
        training rows; pure in the memory tensors (ordered as ``memory.names``)."""
        table = self.table

        def recall(values, plan):
            tensors = memory.as_dict(values)
            q = table.to(values[0].device, values[0].dtype)[plan["classes"]]
            x = _query_slots(memory, tensors, q, plan["slots"])
            if augmentation is not None:
                x = augmentation.apply(x, plan["aug"])
            return x, q

        return recall

    def class_examples(self, memory) -> tuple[torch.Tensor, torch.Tensor]:
        """Every slot of every original class, detached: ``(C*r, C, H, W)`` images and
        ``(C*r,)`` class indices (for evaluation on the original classes); a ragged memory
        gives each class its own slots (:meth:`~memdistill.memory.Memory.recall`)."""
        if memory.ragged:
            if not self.is_onehot or self.width != memory.num_classes:
                raise ConfigError("a ragged memory is one-hot over its classes; this label space is not")
            return memory.recall()
        C, r = self.num_classes, memory.slots
        with torch.no_grad():
            x = memory.query_from(memory.tensors, self.table[:C].to(memory.parameters()[0]))
        return x.flatten(0, 1).detach(), torch.arange(C).repeat_interleave(r)

    # ---------------------------------------------------------------- memory
    def new_memory(self, kind: str, real, budget_ipc: float, init: str, generator: torch.Generator,
                   **options: Any) -> Memory:
        """A new memory of ``kind`` with :attr:`width` rows at the float budget of
        ``budget_ipc`` images for each original class (:func:`equal_storage_ipc`).

        With ``init="real"`` the class rows' queries recall what a one-hot memory
        initialised from real data would: the class content is solved for with the
        minimum-norm solution ``pinv(T_C) @ content`` (:meth:`Memory.init_from_real`).

        Args:
            real: the real training split (an :class:`~memdistill.ImageDataset`).
            options: memory-type options (``num_bases``, ``downsample``, ``learned_labels``).
        """
        mem = create_memory(kind, real.image_shape, self.width, equal_storage_ipc(budget_ipc, self),
                            generator=generator, init="random", **options)
        if init == "real":
            mem.init_from_real(real, generator, mix=torch.linalg.pinv(self.table[: self.num_classes].double()))
        return mem

    # ---------------------------------------------------------------- storage
    def file_extra(self) -> dict[str, Any] | None:
        """What a memory file distilled with this space records under ``extra``
        (``None`` for one-hot: a file without a record is one-hot over its classes)."""
        return {"label_space": self.to_record()}

    def to_record(self) -> dict[str, Any]:
        """JSON-compatible description (stored in memory files under ``extra``)."""
        return {"name": self.name, "class_names": list(self.class_names), "coordinates": list(self.coordinates),
                "row_names": list(self.row_names), "groups": [list(g) for g in self.groups],
                "table": [[float(v) for v in row] for row in self.table.tolist()]}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "LabelSpace":
        if cls is LabelSpace and rec.get("name") == "onehot":
            cls = OneHotSpace
        try:
            return cls(name=str(rec["name"]), class_names=tuple(map(str, rec["class_names"])),
                       coordinates=tuple(map(str, rec["coordinates"])), row_names=tuple(map(str, rec["row_names"])),
                       groups=tuple((int(a), int(b)) for a, b in rec["groups"]),
                       table=torch.tensor(rec["table"], dtype=torch.float32))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid label-space record ({exc!r})") from None


@dataclass(frozen=True, eq=False)
class OneHotSpace(LabelSpace):
    """One coordinate per class (the paper's setting): rows are the classes, targets
    are class indices, the networks output plain logits and the memory recalls and
    initialises itself (``memory.learned_labels`` and ``inner.classes_per_step`` work
    with this space only)."""

    def wrap_forward(self, forward: Callable) -> Callable:
        """``forward`` itself: plain logits."""
        return forward

    def class_loss(self, outputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of logits ``(N, C)`` against class indices ``(N,)``."""
        return F.cross_entropy(outputs, classes)

    def recall_rows(self, memory, augmentation=None):
        """The memory's own recall (its learned labels, when it has them)."""
        return memory_recall(memory, augmentation)

    def class_examples(self, memory) -> tuple[torch.Tensor, torch.Tensor]:
        """``memory.recall()``: every slot of every class and its targets."""
        return memory.recall()

    def new_memory(self, kind: str, real, budget_ipc: float, init: str, generator: torch.Generator,
                   **options: Any) -> Memory:
        """``create_memory`` over the ``C`` classes at ``budget_ipc``."""
        return create_memory(kind, real.image_shape, self.num_classes, budget_ipc, generator=generator, real=real,
                             init=init, **options)

    def file_extra(self) -> None:
        return None


def _query_slots(memory, tensors, q: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``x_{slots[n]}(q[n])`` for each ``n``: ``(N, C, H, W)``, linear in ``q``."""
    if memory.kind == "bases":
        bases = tensors["bases"]
        coeff = torch.einsum("nl,nlk->nk", q, tensors["addressing"][slots])
        low = (coeff @ bases.flatten(1)).view(-1, *bases.shape[1:])
        return memory._up(low)
    x = memory.query_from(tensors, q)  # (N, r, C, H, W)
    return x[torch.arange(len(q), device=x.device), slots]


# ------------------------------------------------------------------ the spaces
def _onehot_rows(n: int) -> torch.Tensor:
    return torch.eye(n)


@LABEL_SPACES.register("onehot")
def _onehot(classes: Sequence[str], **_: Any) -> LabelSpace:
    """One coordinate per class (the paper's setting)."""
    C = len(classes)
    return OneHotSpace("onehot", tuple(classes), tuple(classes), _onehot_rows(C), tuple(classes), ((0, C),))


@LABEL_SPACES.register("smooth")
def _smooth(classes: Sequence[str], smoothing: float = 0.1, **_: Any) -> LabelSpace:
    """Soft targets: ``(1 - eps) e_c + eps / C`` (label smoothing, eps = 0.1)."""
    C = len(classes)
    table = (1 - smoothing) * torch.eye(C) + smoothing / C
    return LabelSpace("smooth", tuple(classes), tuple(classes), table, tuple(classes), ((0, C),))


def _with_coarse(name: str, classes: Sequence[str], coarse_of: Sequence[int], coarse_names: Sequence[str]) -> LabelSpace:
    """Fine one-hot concatenated with coarse one-hot; plus one coarse-only row per
    superclass (target only in the coarse group)."""
    C, S = len(classes), len(coarse_names)
    L = C + S
    table = torch.zeros(C + S, L)
    for c, s in enumerate(coarse_of):
        table[c, c] = 1.0
        table[c, C + int(s)] = 1.0
    for s in range(S):
        table[C + s, C + s] = 1.0
    coords = tuple(classes) + tuple(coarse_names)
    return LabelSpace(name, tuple(classes), coords, table, coords, ((0, C), (C, L)))


@LABEL_SPACES.register("parity")
def _parity(classes: Sequence[str], **_: Any) -> LabelSpace:
    """Digits: the digit one-hot followed by a parity one-hot (``even``, ``odd``), L = 12."""
    if sorted(classes) != [str(d) for d in range(10)]:
        raise ConfigError(f"label space 'parity' is for the digits 0..9 (mnist, svhn); this dataset's classes "
                          f"are {list(classes)[:5]}...; use onehot, smooth or coarse")
    return _with_coarse("parity", classes, [int(c) % 2 for c in classes], ["even", "odd"])


@LABEL_SPACES.register("coarse")
def _coarse(classes: Sequence[str], dataset=None, **_: Any) -> LabelSpace:
    """Fine one-hot followed by the dataset's ``coarse`` labelling (CIFAR-100: L = 120)."""
    if dataset is None or "coarse" not in getattr(dataset, "extra_labels", {}):
        have = sorted(getattr(dataset, "extra_labels", {}) or []) if dataset is not None else []
        raise ConfigError(f"label space 'coarse' needs a dataset with a 'coarse' labelling (cifar100); this one "
                          f"has {', '.join(have) or 'none'}; use onehot, smooth or parity")
    fine, coarse = dataset.labels, dataset.extra_labels["coarse"]
    coarse_of = []
    for c in range(len(classes)):
        values = torch.unique(coarse[fine == c])
        if len(values) != 1:
            raise ConfigError(f"class {classes[c]!r} maps to {len(values)} coarse labels; the coarse labelling "
                              f"must be a function of the class")
        coarse_of.append(int(values[0]))
    return _with_coarse("coarse", classes, coarse_of, dataset.extra_classes["coarse"])


def create_label_space(name: str, classes: Sequence[str], dataset=None) -> LabelSpace:
    """The label space ``name`` for a dataset with class names ``classes``.

    Args:
        name: a registered label space (``onehot``, ``smooth``, ``parity``, ``coarse``).
        dataset: the :class:`~memdistill.ImageDataset` (needed by ``coarse``).
    """
    return LABEL_SPACES.get(name)(tuple(str(c) for c in classes), dataset=dataset)


def label_space_of(mem_file) -> LabelSpace:
    """The label space a :class:`~memdistill.MemoryFile` was distilled with (``onehot``
    over its classes when the file records none)."""
    rec = (mem_file.meta.get("extra") or {}).get("label_space")
    if rec is None:
        return create_label_space("onehot", mem_file.classes)
    space = LabelSpace.from_record(rec)
    if space.width != mem_file.num_classes:
        raise ConfigError(f"{mem_file.path}: the label space has {space.width} coordinates but the memory "
                          f"{mem_file.num_classes}")
    return space


def reference_ipc(mem_file) -> int:
    """Real images per original class of the "random real at equal storage" reference
    for a memory file: the storage budget its run was distilled under (``budget_ipc``,
    whole images, at least one), which the memory's stored floats may fall just short of
    (at budget 10 a ``bases`` memory stores slightly under 10 images' floats, and a floor
    of its floats would give the reference only 9). A continual run's shared memory
    records its budget under ``extra.continual`` (images per class, unless the total was
    given in floats). A file that records neither falls back to the whole images its
    floats hold."""
    budget = ((mem_file.meta.get("config") or {}).get("memory") or {}).get("budget_ipc")
    continual = (mem_file.meta.get("extra") or {}).get("continual") or {}
    if budget is None and continual.get("budget_total") is None:
        budget = continual.get("budget_ipc")
    if budget is not None:
        return max(1, int(math.floor(float(budget) + 1e-9)))
    c, h, w = mem_file.image_shape
    return max(1, mem_file.memory.floats_stored() // (c * h * w * label_space_of(mem_file).num_classes))


def equal_storage_ipc(budget_ipc: float, space: LabelSpace) -> float:
    """The ``budget_ipc`` to pass for ``space.width`` rows so the float budget stays that
    of ``budget_ipc`` images for each of the ``C`` original classes."""
    return budget_ipc * space.num_classes / space.width
