"""The memory types: per-class ``images`` (the BPTT baseline) and shared ``bases``
with learned ``addressing`` (the paper's method)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ._base import MEMORIES, Memory, initial_label_logits, solve_slots, stored_float_budget

__all__ = ["ImagesMemory", "BasesMemory", "create_memory", "list_memories", "principal_bases", "solve_addressing",
           "real_per_class"]


def list_memories() -> list[str]:
    return MEMORIES.names()


def real_per_class(real, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """``(L, per_class, C, H, W)`` normalised real images, sampled with replacement only
    when a class has fewer images than asked for."""
    out = []
    for c in range(real.num_classes):
        idx = real.indices_of_class(c)
        if len(idx) == 0:
            raise ConfigError(f"class {real.classes[c]!r} has no real images to initialise from")
        if len(idx) >= per_class:
            pick = idx[torch.randperm(len(idx), generator=generator)[:per_class]]
        else:
            pick = idx[torch.randint(len(idx), (per_class,), generator=generator)]
        out.append(real.batch(pick)[0])
    return torch.stack(out)


def _check_init(init: str, real) -> None:
    if init not in ("real", "random"):
        raise ConfigError(f"unknown init {init!r}; valid: real, random")
    if init == "real" and real is None:
        raise ConfigError("init='real' needs the real training data")


def _assemble(cls, tensors, label_logits, temperature, image_shape, num_classes, slots, init, real, generator):
    """A ``cls`` memory of ``tensors`` (and ``label_logits`` when learned), filled from
    ``real`` for ``init='real'``."""
    if label_logits is not None:
        tensors["label_logits"] = label_logits
    memory = cls(tensors, image_shape, num_classes, slots, label_temperature=temperature)
    if init == "real":
        memory.init_from_real(real, generator)
    return memory


@MEMORIES.register("images")
class ImagesMemory(Memory):
    """``r`` learnable images per class, nothing shared.

    Tensors: ``images`` ``(L, r, C, H, W)``; with learned labels ``label_logits``
    ``(L, r, L)`` (slot ``i`` of class ``c`` is trained towards
    ``softmax(label_logits[c, i] / label_temperature)``).
    A query ``q`` recalls ``sum_c q_c images[c]`` (linear in ``q``, like the bases type).
    """

    kind = "images"

    def options(self) -> dict[str, Any]:
        return self.label_options()

    @classmethod
    def create(cls, image_shape, num_classes, budget_ipc, *, generator, real=None, init="real",
               learned_labels=False, label_temperature=1.0) -> "ImagesMemory":
        c, h, w = image_shape
        budget = stored_float_budget(budget_ipc, image_shape, num_classes)
        per_class = c * h * w + (num_classes if learned_labels else 0)
        r = budget // (num_classes * per_class)
        if r < 1:
            need = num_classes * per_class
            raise ConfigError(
                f"a budget of {budget_ipc} images per class ({budget} floats) cannot hold one image per "
                f"class{' with learned labels' if learned_labels else ''}; the minimum is {need} floats "
                f"(--budget-ipc {need / (c * h * w * num_classes):.3g})"
            )
        _check_init(init, real)
        if init == "real":
            images = torch.zeros((num_classes, r, c, h, w))  # filled by init_from_real
        else:
            images = torch.randn((num_classes, r, c, h, w), generator=generator)
        logits = initial_label_logits(num_classes, r, False, label_temperature) if learned_labels else None
        return _assemble(cls, {"images": images}, logits, label_temperature, image_shape, num_classes, r, init,
                         real, generator)

    def init_from_real(self, real, generator, mix=None):
        """``r`` real images of each class (see :meth:`Memory.init_from_real`)."""
        content = real_per_class(real, self.slots, generator)  # (C, r, ...)
        if mix is not None:
            content = torch.einsum("lc,c...->l...", mix, content.double()).float()
        self.tensors["images"] = content

    def recall_from(self, tensors, classes, slots):
        x = tensors["images"][classes, slots]
        y = self.label_targets(tensors["label_logits"][classes, slots]) if "label_logits" in tensors else classes
        return x, y

    def query_from(self, tensors, q):
        return torch.einsum("ql,lrchw->qrchw", q, tensors["images"])


@MEMORIES.register("bases")
class BasesMemory(Memory):
    """``K`` shared bases at ``H/ds x W/ds`` and ``r`` addressing matrices ``L x K``.

    Tensors: ``bases`` ``(K, C, h, w)``, ``addressing`` ``(r, L, K)``; with learned
    labels ``label_logits`` ``(r, L, L)``. The ``i``-th example for query ``q`` is
    ``up(q^T A_i B)`` (bilinear upsampling to ``H x W``); with learned labels the
    ``i``-th example of class ``c`` is trained towards
    ``softmax(label_logits[i, c] / label_temperature)``.

    **Ragged** (``class_slots`` and ``class_bases``, one integer per class; the shared
    memory of a continual run, where a class addresses the bases that existed when it
    arrived): class ``c`` holds its first ``class_slots[c]`` slots, each addressing its
    first ``class_bases[c]`` bases; ``addressing`` is padded with zeros to ``(r, L, K)``
    (``r`` = the most slots a class holds, checked to be zero outside each class's
    block) and the padding is not stored in the budget: :meth:`floats_stored` is
    ``K*C*h*w + sum_c class_slots[c] * class_bases[c]``. :meth:`recall` gives each class
    its own slots; a query recalls the slots every class holds (:attr:`query_slots`).
    Without learned labels only, and not distilled further (the outer loop would move
    the padding).
    """

    kind = "bases"
    layout_options = ("class_slots", "class_bases")

    def __init__(self, tensors, image_shape, num_classes: int, slots: int, label_temperature: float = 1.0, *,
                 class_slots=None, class_bases=None):
        super().__init__(tensors, image_shape, num_classes, slots, label_temperature=label_temperature)
        self.class_slots, self.class_bases = self._check_layout(class_slots, class_bases)

    def _check_layout(self, class_slots, class_bases) -> tuple[list[int] | None, list[int] | None]:
        """The ragged layout as two lists, or ``(None, None)`` when every class holds every
        slot and basis (a ragged layout that is not ragged is the plain one)."""
        if class_slots is None and class_bases is None:
            return None, None
        if class_slots is None or class_bases is None:
            raise ConfigError("a ragged bases memory needs both class_slots and class_bases (one integer per class)")
        k = int(self.tensors["bases"].shape[0])
        out = []
        for name, values, top in (("class_slots", class_slots, self.slots), ("class_bases", class_bases, k)):
            vals = values.tolist() if isinstance(values, torch.Tensor) else list(values)
            if (len(vals) != self.num_classes or
                    not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= top for v in vals)):
                raise ConfigError(f"{name} must be {self.num_classes} integers in [1, {top}] (one per class), "
                                  f"got {values!r}")
            out.append(list(vals))
        slots_c, bases_c = out
        if all(v == self.slots for v in slots_c) and all(v == k for v in bases_c):
            return None, None
        if self.learned_labels:
            raise ConfigError("a ragged bases memory cannot have learned labels")
        a = self.tensors["addressing"]
        if tuple(a.shape[:2]) != (self.slots, self.num_classes) or max(slots_c) != self.slots:
            raise ConfigError(f"a ragged bases memory's addressing is (r, L, K) with r = the most slots a class "
                              f"holds ({max(slots_c)}) and L = {self.num_classes}; got {tuple(a.shape)} and "
                              f"slots={self.slots}")
        outside = torch.ones(a.shape, dtype=torch.bool)
        for c, (r_c, k_c) in enumerate(zip(slots_c, bases_c)):
            outside[:r_c, c, :k_c] = False
        if bool((a.detach()[outside] != 0).any()):
            raise ConfigError("a ragged bases memory's addressing must be zero outside each class's first "
                              "class_slots slots and class_bases bases")
        return slots_c, bases_c

    @property
    def ragged(self) -> bool:
        return self.class_slots is not None

    def class_slot_counts(self) -> list[int]:
        return list(self.class_slots) if self.ragged else super().class_slot_counts()

    @property
    def query_slots(self) -> int:
        return min(self.class_slots) if self.ragged else self.slots

    def floats_stored(self) -> int:
        if not self.ragged:
            return super().floats_stored()
        return int(self.tensors["bases"].numel() + sum(r * k for r, k in zip(self.class_slots, self.class_bases)))

    def options(self) -> dict[str, Any]:
        layout = {} if not self.ragged else {"class_slots": list(self.class_slots),
                                             "class_bases": list(self.class_bases)}
        return {**self.label_options(), "num_bases": int(self.tensors["bases"].shape[0]),
                "downsample": self.downsample, **layout}

    def _refuse_ragged(self, what: str) -> None:
        if self.ragged:
            raise ConfigError(f"{what} is not defined for a ragged bases memory (classes with their own slot "
                              "counts); it is recalled and evaluated as it is")

    @property
    def downsample(self) -> int:
        return int(round(self.image_shape[1] / self.tensors["bases"].shape[2]))

    @classmethod
    def create(cls, image_shape, num_classes, budget_ipc, *, generator, real=None, init="real",
               learned_labels=False, label_temperature=1.0, num_bases=16, downsample=2) -> "BasesMemory":
        c, h, w = image_shape
        r = solve_slots(budget_ipc, image_shape, num_classes, num_bases, downsample, learned_labels)
        hl, wl = h // downsample, w // downsample
        _check_init(init, real)
        if init == "random":
            bases = torch.randn((num_bases, c, hl, wl), generator=generator)
            bound = math.sqrt(6.0 / (num_bases + num_classes))  # Xavier uniform
            addressing = (torch.rand((r, num_classes, num_bases), generator=generator) * 2 - 1) * bound
        else:  # filled by init_from_real
            bases, addressing = torch.zeros((num_bases, c, hl, wl)), torch.zeros((r, num_classes, num_bases))
        logits = initial_label_logits(num_classes, r, True, label_temperature) if learned_labels else None
        return _assemble(cls, {"bases": bases.float(), "addressing": addressing.float()}, logits, label_temperature,
                         image_shape, num_classes, r, init, real, generator)

    def init_from_real(self, real, generator, mix=None):
        """Bases from the principal directions of real images, addressing from the
        least-squares coefficients of ``r`` real images per class (see
        :meth:`Memory.init_from_real`)."""
        self._refuse_ragged("init_from_real")
        bases = self.tensors["bases"]
        bases, coeff = _pca_init(real, self.slots, bases.shape[0], tuple(bases.shape[2:]), generator)  # (r, C, K)
        if mix is not None:
            coeff = torch.einsum("lc,rck->rlk", mix, coeff)
        self.tensors["bases"] = bases.float()
        self.tensors["addressing"] = coeff.float()

    def refit_addressing(self, real, generator: torch.Generator) -> torch.Tensor:
        """Re-solve the addressing in place against the memory's current bases: the
        least-squares coefficients (:func:`solve_addressing`, as in :meth:`init_from_real`)
        of ``slots`` real images per class of ``real`` (drawn with ``generator``).

        Returns:
            the target images ``(L, r, C, H, W)`` the addressing was fitted to.
        """
        self._refuse_ragged("refit_addressing")
        if real.num_classes != self.num_classes:
            raise ConfigError(f"refit_addressing needs real data of the memory's {self.num_classes} classes, "
                              f"got {real.num_classes}")
        targets = real_per_class(real, self.slots, generator)
        old = self.tensors["addressing"]
        coeff = solve_addressing(self.tensors["bases"].detach().cpu(), targets)
        self.tensors["addressing"] = coeff.to(dtype=old.dtype, device=old.device)
        return targets

    def _up(self, low: torch.Tensor) -> torch.Tensor:
        if tuple(low.shape[-2:]) == tuple(self.image_shape[1:]):
            return low
        return F.interpolate(low, size=self.image_shape[1:], mode="bilinear", align_corners=False)

    def recall_from(self, tensors, classes, slots):
        bases = tensors["bases"]
        coeff = tensors["addressing"][slots, classes]  # (N, K)
        low = (coeff @ bases.flatten(1)).view(-1, *bases.shape[1:])
        y = self.label_targets(tensors["label_logits"][slots, classes]) if "label_logits" in tensors else classes
        return self._up(low), y

    def query_from(self, tensors, q):
        bases = tensors["bases"]
        addressing = tensors["addressing"][: self.query_slots] if self.ragged else tensors["addressing"]
        coeff = torch.einsum("ql,rlk->qrk", q, addressing)
        low = (coeff.flatten(0, 1) @ bases.flatten(1)).view(-1, *bases.shape[1:])
        return self._up(low).view(q.shape[0], -1, *self.image_shape)


def principal_bases(images: torch.Tensor, num_bases: int, low_size) -> torch.Tensor:
    """``(num_bases, C, h, w)`` float64: the top principal directions (uncentred) of
    ``images`` ``(N, C, H, W)`` brought to ``low_size`` ``(h, w)``, scaled to unit-variance
    pixels; rows beyond the rank of the images are zero."""
    low = F.interpolate(images.double(), size=tuple(low_size), mode="area").flatten(1)
    _, _, vh = torch.linalg.svd(low, full_matrices=False)
    k = min(num_bases, vh.shape[0])
    bases = torch.zeros(num_bases, low.shape[1], dtype=torch.float64)
    bases[:k] = vh[:k] * math.sqrt(low.shape[1])  # unit-variance pixels
    return bases.view(num_bases, images.shape[1], *low_size)


def solve_addressing(bases: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Least-squares addressing of ``targets`` against ``bases``: the coefficients whose
    recall ``up(a^T B)`` is closest (in squared pixel error) to each target image.

    Args:
        bases: ``(K, C, h, w)`` (upsampled bilinearly to the targets' ``H x W``).
        targets: ``(L, r, C, H, W)`` normalised images, ``r`` per class.

    Returns:
        ``(r, L, K)`` float64 (the ``addressing`` layout of :class:`BasesMemory`).
    """
    L, r = targets.shape[:2]
    K = bases.shape[0]
    up = F.interpolate(bases.double(), size=tuple(targets.shape[-2:]), mode="bilinear",
                       align_corners=False).flatten(1)  # (K, D)
    flat = targets.double().flatten(2).transpose(0, 1).reshape(r * L, -1)  # slot-major
    coeff = torch.linalg.lstsq(up.T, flat.T).solution.T  # (r*L, K)
    return coeff.reshape(r, L, K)


def _pca_init(real, slots: int, num_bases: int, low_size, generator):
    """Bases: top principal directions (uncentred) of real images at low resolution;
    addressing: least-squares coefficients of ``slots`` real images per class."""
    sample = real_per_class(real, min(200, max(slots, 50)), generator).flatten(0, 1)
    bases = principal_bases(sample, num_bases, low_size)
    targets = real_per_class(real, slots, generator)  # (L, r, C, H, W)
    return bases, solve_addressing(bases, targets)


def create_memory(kind: str, image_shape, num_classes: int, budget_ipc: float, *,
                  generator: torch.Generator, real=None, init: str = "real", **options) -> Memory:
    """Build a memory of ``kind`` that fits ``budget_ipc`` images per class of floats.

    Args:
        kind: a name from the memory registry (``bases``, ``images``).
        image_shape: ``(C, H, W)`` of the dataset.
        real: the real training split (needed for ``init="real"``).
        options: type-specific (``num_bases``, ``downsample``, ``learned_labels``,
            ``label_temperature``).
    """
    cls = MEMORIES.get(kind)
    try:
        return cls.create(tuple(image_shape), num_classes, budget_ipc, generator=generator, real=real,
                          init=init, **options)
    except TypeError as exc:
        raise ConfigError(f"memory type {kind!r}: {exc}") from None
