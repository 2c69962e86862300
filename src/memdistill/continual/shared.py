"""The ``shared`` strategy: one ``bases`` memory for the whole stream.

Its bases are shared by every class seen so far; each task adds addressing rows for its
classes (least squares of real images against the current bases) and, when the budget
allows, new bases (principal directions of the task's images outside the span of the
existing ones). Two layouts (``StrategyOptions.shared_layout``):

``ragged`` (the default): a class addresses the bases that existed when it arrived. A
task's classes address the earlier bases and the task's new ones; earlier classes keep
their addressing, on fewer bases, so their slots cost them fewer floats and their
recalls never change. While task ``t`` is current only its block is distilled: its
classes' addressing and its new bases, on the task's real data; the earlier bases get
no update (:class:`RaggedDistiller`). Sizes: :func:`ragged_sizes`.

``dense``: every class addresses every basis. While task ``t`` is current the whole
memory is distilled with an outer loss on

- the task's real images for its new classes, and
- for the earlier classes, examples recalled from a frozen copy of the memory as it
  stood before task ``t``: the frozen copy stands in for their data, which is gone.

The two terms are weighted by ``replay_weight`` (default: by number of classes, every
class alike). Storage after every task is the live memory only, within the budget of
either mode (:func:`shared_sizes`): per class seen (``K`` and ``r`` grow with the
classes) or a fixed total (``K`` fixed before the first task, the slots per class
re-divided as classes arrive, :func:`resize_slots`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..config import DistillConfig, resolve
from ..data import ImageDataset
from ..distill import Distiller
from ..errors import ConfigError
from ..evaluate import TrainingSet, herding_order
from ..memory import BasesMemory, principal_bases, save_memory, solve_addressing, solve_slots
from ..memory.types import real_per_class
from .benchmarks import Benchmark
from .strategies import STRATEGIES, Strategy, StrategyOptions, auto_num_bases, local_view, task_schedule

# the filled copies' draws (fill_later): seeded from this, the run's seed and the task
FILL_SEED = 1234

__all__ = ["SharedStrategy", "SharedDistiller", "RaggedDistiller", "RaggedBlock", "ReplaySource", "shared_sizes",
           "context_addressing", "ragged_sizes", "extend_bases", "evict_slots", "project_onto_bases", "grow_memory",
           "resize_slots", "replay_class_weight", "save_shared_memory", "check_memory_export"]


# ------------------------------------------------------------------ sizes
def shared_sizes(options: StrategyOptions, image_shape: tuple[int, int, int], seen: int, final_classes: int,
                 previous_bases: int = 0) -> tuple[int, int]:
    """``(K, r)``: bases and slots per class of the shared memory with ``seen`` classes.

    Per-class mode: ``K`` = ``num_bases`` or :func:`auto_num_bases` for ``seen`` classes
    (never fewer than ``previous_bases``), ``r`` by :func:`~memdistill.memory.solve_slots`.
    Fixed-total mode: the stream's final ``K`` is ``num_bases`` or the most (at most 16)
    whose floats take at most half of the total; with ``seen`` classes the memory has its
    classes' share of them, ``ceil(K * seen / final_classes)`` (so each task brings bases
    of its own, as in per-class mode: bases fitted to the first task's classes alone
    represent later classes poorly), and ``r`` is the most slots per class the rest of the
    total holds: ``(total - K_seen*C*h*w) // (K_seen*seen)``.

    Raises:
        ConfigError: not one slot per class fits (with the smallest budget that does).
    """
    c, h, w = image_shape
    ds = options.downsample
    if options.budget_mode == "per-class":
        k = max(previous_bases, options.num_bases or auto_num_bases(options.budget_ipc, image_shape, seen, ds))
        return k, solve_slots(options.budget_ipc, image_shape, seen, k, ds)
    if h // ds < 1 or w // ds < 1:
        raise ConfigError(f"downsample must be in [1, {min(h, w)}], got {ds}")
    per_basis = c * (h // ds) * (w // ds)
    total = options.total_floats(image_shape, final_classes)
    final = options.num_bases or max(1, min(16, (total // 2) // per_basis))
    k = max(previous_bases, math.ceil(final * seen / final_classes))
    r = (total - k * per_basis) // (k * seen)
    if r < 1:
        need = k * per_basis + k * seen
        raise ConfigError(
            f"shared: a total budget of {total:,} floats cannot hold {k} base(s) at downsample {ds} "
            f"({k * per_basis:,} floats) plus one addressing slot for each of {seen} classes ({k * seen:,} floats); "
            f"the minimum is {need:,} floats (--budget-total {need}, --budget-total-ipc "
            f"{need / (c * h * w * final_classes):.3g}), or use fewer bases (--bases) / a larger --downsample")
    return k, int(r)


def replay_class_weight(replay_weight: str | float, old_classes: int, seen: int) -> torch.Tensor | None:
    """Per-class weights ``(seen,)`` of the outer loss for ``replay_weight`` (see
    :class:`StrategyOptions`): ``None`` for ``"classes"`` or without earlier classes (the
    plain mean over the batch, every class alike), else ``w / old`` for each earlier class
    and ``(1 - w) / new`` for each new one, so that the loss is ``w * old term + (1 - w) *
    new term`` (each term a mean over its classes' examples)."""
    if replay_weight == "classes" or old_classes == 0:
        return None
    w, new = float(replay_weight), seen - old_classes
    return torch.cat([torch.full((old_classes,), w / old_classes), torch.full((new,), (1 - w) / new)])


def ragged_sizes(options: StrategyOptions, image_shape: tuple[int, int, int], task_classes: Sequence[int],
                 final_classes: int) -> list[tuple[int, list[int]]]:
    """The ``ragged`` layout's sizes after each task: ``(K, slots)``, ``K`` the bases then
    stored and ``slots[j]`` the slots per class of task ``j``'s classes, which address
    the first ``K_j`` bases (``K_j``: the bases after task ``j``).

    Each task adds ``num_bases`` bases, or :func:`auto_num_bases` for its own classes (as
    a ``memories`` task memory would; in fixed-total mode at the total's images per class
    of the final classes). The floats left for addressing, ``budget - K*C*h*w``, are
    divided evenly among the classes seen, and a class of task ``j`` holds
    ``share // K_j`` slots: an earlier class addresses fewer bases, so its slots cost it
    less. Per-class mode keeps the share about constant (earlier classes keep their
    slots); fixed-total mode shrinks it as classes arrive (earlier classes evict).

    Args:
        task_classes: the number of classes of each task, in order.

    Raises:
        ConfigError: a class would hold no slot (with the smallest budget that fits).
    """
    c, h, w = image_shape
    ds = options.downsample
    if h // ds < 1 or w // ds < 1:
        raise ConfigError(f"downsample must be in [1, {min(h, w)}], got {ds}")
    per_basis = c * (h // ds) * (w // ds)
    if options.budget_mode == "per-class":
        ipc = options.budget_ipc
    else:
        ipc = options.total_floats(image_shape, final_classes) / (c * h * w * final_classes)
    out: list[tuple[int, list[int]]] = []
    ks: list[int] = []
    seen = 0
    for t, n in enumerate(task_classes):
        seen += n
        ks.append((ks[-1] if ks else 0) + (options.num_bases or auto_num_bases(ipc, image_shape, n, ds)))
        k = ks[-1]
        budget = options.budget_floats(image_shape, seen, final_classes)
        share = (budget - k * per_basis) // seen
        if share < k:  # the newest classes address all K bases: one slot costs them K floats
            need = k * per_basis + k * seen
            unit = (f"--budget-ipc {need / (c * h * w * seen):.3g}" if options.budget_mode == "per-class"
                    else f"--budget-total {need}")
            raise ConfigError(
                f"shared (ragged): after task {t + 1} a budget of {budget:,} floats cannot hold {k} bases at "
                f"downsample {ds} ({k * per_basis:,} floats) plus one slot for each of {seen} classes (a slot of the "
                f"newest classes costs {k} floats); the minimum is {need:,} floats ({unit}), or use fewer bases "
                "per task (--bases) / a larger --downsample")
        out.append((k, [share // kj for kj in ks]))
    return out


# ----------------------------------------------------------- growing the memory
def resize_slots(addressing: torch.Tensor, bases: torch.Tensor, slots: int, generator: torch.Generator,
                 size: tuple[int, int]) -> torch.Tensor:
    """The addressing ``(r, L, K)`` of earlier classes brought to ``slots`` per class.

    Fewer: each class keeps the ``slots`` recalls that herding picks among its ``r``
    (their running mean stays closest to the mean of all its recalls); a class's slots are
    interchangeable, so each class chooses its own. More: the new slots are midpoints of
    two distinct existing slots of the same class (drawn with ``generator``).

    Args:
        bases: ``(K, C, h, w)``; size: ``(H, W)`` of a recalled image.
    """
    r, L, _ = addressing.shape
    if slots == r:
        return addressing
    if slots < r:
        up = F.interpolate(bases.double(), size=size, mode="bilinear", align_corners=False).flatten(1)
        keep = [addressing[herding_order(addressing[:, c].double() @ up, slots), c] for c in range(L)]
        return torch.stack(keep, dim=1)
    extra, cols = slots - r, torch.arange(L)
    i = torch.randint(r, (extra, L), generator=generator)
    j = (i + 1 + torch.randint(max(r - 1, 1), (extra, L), generator=generator)) % r
    return torch.cat([addressing, 0.5 * (addressing[i, cols] + addressing[j, cols])])


def evict_slots(addressing: torch.Tensor, slots: int, generator: torch.Generator) -> torch.Tensor:
    """The addressing ``(r, L, K)`` with ``slots <= r`` slots per class: each class keeps a
    random subset of its own slots (drawn with ``generator``), unchanged.

    The ``ragged`` layout evicts this way. Keeping the slots herding picks (their running
    mean closest to the class mean, as :func:`resize_slots` does for ``dense``) favours
    the typical recalls over the varied ones; on the validation split of Split MNIST and
    Split Fashion-MNIST under a fixed total that cost the classifier 3 to 10 points
    (docs/CONTINUAL.md).
    """
    r, L, _ = addressing.shape
    if not 1 <= slots <= r:
        raise ConfigError(f"evict_slots keeps between 1 and {r} slots per class, got {slots}")
    keep = [addressing[torch.randperm(r, generator=generator)[:slots], c] for c in range(L)]
    return torch.stack(keep, dim=1)


def _residual_bases(sample: torch.Tensor, bases: torch.Tensor, k: int, low: tuple[int, int]) -> torch.Tensor:
    """``k`` principal directions of ``sample`` (at resolution ``low``) outside the span of ``bases``."""
    small = F.interpolate(sample.double(), size=low, mode="area")
    q, _ = torch.linalg.qr(bases.double().flatten(1).T)  # (D, K) orthonormal columns
    flat = small.flatten(1)
    return principal_bases((flat - flat @ q @ q.T).view_as(small), k, low)


def extend_bases(previous: torch.Tensor | None, local: ImageDataset, num_bases: int, slots: int, downsample: int,
                 generator: torch.Generator) -> torch.Tensor:
    """``previous`` bases (``(K', C, h, w)``, or ``None``) extended to ``num_bases`` (float64)
    by the principal directions of a sample of ``local``'s images outside their span (for
    the first task: all of them, as in the usual start)."""
    _, h, w = local.image_shape
    low = (h // downsample, w // downsample)
    sample = real_per_class(local, min(200, max(slots, 50)), generator).flatten(0, 1)
    if previous is None:
        return principal_bases(sample, num_bases, low)
    bases = previous.detach().double()
    if num_bases < bases.shape[0]:
        raise ConfigError(f"the shared memory cannot drop bases ({bases.shape[0]} -> {num_bases})")
    if num_bases > bases.shape[0]:
        bases = torch.cat([bases, _residual_bases(sample, bases, num_bases - bases.shape[0], low)])
    return bases


def grow_memory(previous: BasesMemory | None, local: ImageDataset, num_bases: int, slots: int, downsample: int,
                generator: torch.Generator) -> BasesMemory:
    """The shared memory extended by the classes of ``local`` (a task's real data,
    labels ``0..n-1``), with ``num_bases`` bases and ``slots`` per class.

    1. Bases: the previous ones, then new ones up to ``num_bases`` (the principal
       directions of the task's images outside their span; for the first task all of
       them, as in the usual start).
    2. Earlier classes: their addressing, zero on the new bases (their recalls do not
       change), brought to ``slots`` per class (:func:`resize_slots`).
    3. New classes: least-squares addressing of ``slots`` real images per class against
       all bases (:func:`~memdistill.memory.solve_addressing`).
    """
    c, h, w = local.image_shape
    bases = extend_bases(None if previous is None else previous.tensors["bases"], local, num_bases, slots,
                         downsample, generator)
    old = None
    if previous is not None:
        old = F.pad(previous.tensors["addressing"].detach().double(), (0, num_bases - previous.tensors["bases"].shape[0]))
        old = resize_slots(old, bases, slots, generator, (h, w))
    new = solve_addressing(bases, real_per_class(local, slots, generator))
    addressing = new if old is None else torch.cat([old, new], dim=1)
    return BasesMemory({"bases": bases.float(), "addressing": addressing.float()}, (c, h, w),
                       addressing.shape[1], slots)


# ---------------------------------------------------------------- distillation
class ReplaySource:
    """Where the shared memory's outer loss reads its images: indices below
    ``len(real)`` are the current task's real images, the others the examples recalled
    from the frozen memory (``recalled_x`` ``(M, C, H, W)``, normalised, and their classes
    ``recalled_y`` ``(M,)``). :meth:`class_index` sends an earlier class only to recalled
    examples: the old-class term never reads real data."""

    def __init__(self, real: ImageDataset, recalled_x: torch.Tensor, recalled_y: torch.Tensor) -> None:
        self.real, self.x, self.y = real, recalled_x, recalled_y
        self.n = len(real)

    def class_index(self, num_classes: int) -> list[torch.Tensor]:
        """Per class, the indices of its images: real ones for the task's classes,
        recalled ones (offset by ``len(real)``) for the earlier classes."""
        out = []
        for c in range(num_classes):
            real, recalled = self.real.indices_of_class(c), torch.nonzero(self.y.cpu() == c).flatten()
            if len(real) and len(recalled):
                raise ConfigError(f"class {c} has both real and recalled examples in one task")
            out.append(real if len(real) else recalled + self.n)
        return out

    def batch(self, indices: torch.Tensor, device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images ``(N, C, H, W)`` and classes ``(N,)`` of ``indices``."""
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        mine = indices < self.n
        xr, yr = self.real.batch(indices[mine], device=device)
        x = torch.empty((len(indices), *xr.shape[1:]), dtype=xr.dtype, device=xr.device)
        y = torch.empty(len(indices), dtype=torch.long, device=xr.device)
        at = mine.to(xr.device)
        x[at], y[at] = xr, yr
        x[~at] = self.x[indices[~mine] - self.n].to(x)
        y[~at] = self.y[indices[~mine] - self.n].to(y)
        return x, y


def _replay_recalls(distiller: Distiller, recalled: tuple[torch.Tensor, torch.Tensor],
                    class_weight: torch.Tensor | None = None) -> None:
    """Point ``distiller``'s outer loss at its real images for the classes they hold and
    at the ``recalled`` examples ``(x, y)`` for the others (:class:`ReplaySource`)."""
    source = ReplaySource(distiller._inputs.real, recalled[0].to(distiller.device), recalled[1].to(distiller.device))
    distiller._inputs = dataclasses.replace(distiller._inputs, real=source,
                                            class_index=source.class_index(distiller.train.num_classes),
                                            class_weight=class_weight)


class SharedDistiller(Distiller):
    """A :class:`~memdistill.distill.Distiller` of the shared memory over every class
    seen: the outer loss reads ``current``'s real images for the task's classes and only
    ``recalled`` examples (from the frozen memory) for the earlier ones
    (:class:`ReplaySource`), weighted per class by ``class_weight``. The validation
    evaluation at the end of a run is skipped (the continual learner tests the memory).

    Args:
        current: the task's real data, labels in ``0..seen-1`` and ``seen`` class names.
        recalled: ``(x, y)`` recalled examples of the earlier classes.
        initial_memory: the memory over the ``seen`` classes to start from.
    """

    def __init__(self, config: DistillConfig, current: ImageDataset, recalled: tuple[torch.Tensor, torch.Tensor],
                 initial_memory: BasesMemory, class_weight: torch.Tensor | None = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(config, current, device=device, initial_memory=initial_memory)
        _replay_recalls(self, recalled, class_weight)

    @property
    def source(self) -> ReplaySource:
        return self._inputs.real

    def evaluate_memory(self, memory, split=None):
        return None if split is None else super().evaluate_memory(memory, split)


class RaggedDistiller(Distiller):
    """A :class:`~memdistill.distill.Distiller` of one task's block of the ``ragged``
    layout: the task's classes (``local``, labels ``0..n-1``) address all ``K`` bases of
    ``initial_memory``, and the first ``frozen`` of them (the earlier tasks', which the
    earlier classes' recalls read) get no update: their meta-gradient is zeroed before
    the outer step, so they stay bit for bit as they were (Adam and SGD move nothing
    along a gradient that is always zero). The validation evaluation at the end of a run
    is skipped (the continual learner tests the memory).

    With ``context`` (``StrategyOptions.task_context``) the earlier classes take part:
    ``local`` then holds every class seen (labels ``0..seen-1``, real images for the
    task's classes only), ``initial_memory`` addresses all of them, its first
    ``old_classes`` addressing rows (the earlier classes' recalls, resampled to the
    memory's slots) are frozen like the earlier bases, and the outer loss reads the
    ``context`` recalls ``(x, y)`` for the earlier classes (:class:`ReplaySource`): the
    task's block is distilled so that a network trained on it **and** on the earlier
    classes' recalls tells all of them apart.
    """

    def __init__(self, config: DistillConfig, local: ImageDataset, initial_memory: BasesMemory, frozen: int,
                 device: str | torch.device = "cpu", context: tuple[torch.Tensor, torch.Tensor] | None = None,
                 old_classes: int = 0) -> None:
        super().__init__(config, local, device=device, initial_memory=initial_memory)
        if not 0 <= frozen <= initial_memory.tensors["bases"].shape[0]:
            raise ConfigError(f"frozen must be in [0, {initial_memory.tensors['bases'].shape[0]}], got {frozen}")
        if not 0 <= old_classes < initial_memory.num_classes or (old_classes > 0) != (context is not None):
            raise ConfigError(f"old_classes ({old_classes}) must be in [0, {initial_memory.num_classes}) and "
                              "positive exactly when context recalls are given")
        self.frozen, self.old_classes = frozen, old_classes
        if context is not None:
            _replay_recalls(self, context)

    def outer_gradient(self, memory, iteration, members=None):
        result = super().outer_gradient(memory, iteration, members)
        if not self.frozen and not self.old_classes:
            return result
        grads, names = list(result.grads), list(memory.names)
        frozen = {"bases": (slice(None, self.frozen),), "addressing": (slice(None), slice(None, self.old_classes))}
        for name, index in frozen.items():  # earlier bases; earlier classes' rows (slots, classes, bases)
            i = names.index(name)
            grads[i] = grads[i].clone()
            grads[i][index] = 0
        return dataclasses.replace(result, grads=type(result.grads)(grads))

    def evaluate_memory(self, memory, split=None):
        return None if split is None else super().evaluate_memory(memory, split)


@dataclasses.dataclass
class RaggedBlock:
    """One task's classes in the ``ragged`` layout: ids ``first .. first+n-1``, their
    addressing ``(r, n, K_j)`` on the first ``K_j`` bases."""

    first: int
    addressing: torch.Tensor

    def memory(self, bases: torch.Tensor, image_shape: tuple[int, int, int]) -> BasesMemory:
        """The block as a memory of its ``n`` classes (labels ``0..n-1``) on its bases."""
        r, n, k = self.addressing.shape
        return BasesMemory({"bases": bases[:k], "addressing": self.addressing}, image_shape, n, r)


def context_addressing(blocks: Sequence[RaggedBlock], num_bases: int, slots: int,
                       generator: torch.Generator) -> torch.Tensor:
    """The earlier classes' addressing ``(slots, L_old, num_bases)`` for a task's
    distillation with context: each block's rows zero-padded to ``num_bases`` bases (so
    they recall exactly what they store), brought to ``slots`` per class by a random
    subset or by cycling through them (drawn with ``generator``). Used only while the
    task distils, never stored."""
    rows = []
    for block in blocks:
        r, _, k = block.addressing.shape
        a = F.pad(block.addressing.detach().float(), (0, num_bases - k))
        order = torch.randperm(r, generator=generator)
        rows.append(a[order[torch.arange(slots) % r]])
    return torch.cat(rows, dim=1)


def project_onto_bases(images: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """``images`` ``(N, C, H, W)`` projected onto the span of ``bases`` ``(k, C, h, w)``
    (upsampled bilinearly, as a recall is): the least-squares recall of each image on
    those bases (:func:`~memdistill.memory.solve_addressing`), in ``images``' dtype."""
    n = images.shape[0]
    coeff = solve_addressing(bases, images.unsqueeze(1))  # (1, N, k) float64
    view = BasesMemory({"bases": bases.double(), "addressing": coeff}, tuple(images.shape[1:]), n, 1)
    return view.recall()[0].to(images.dtype)


def fill_later_bases(addressing: torch.Tensor, later: Sequence[torch.Tensor], num_bases: int,
                     generator: torch.Generator) -> torch.Tensor:
    """An earlier block's addressing ``(r, n, k)`` on all ``num_bases`` bases, each slot
    with a random later slot's coefficients on the bases after its own ``k`` added.

    An earlier class's recalls have no energy on the bases added after it arrived, while
    every real image does; a classifier trained on the recalls learns that energy there
    means a later class. With a copy of each earlier recall that carries the detail of a
    random later slot there (drawn uniformly among every row of ``later``, the later
    blocks' addressing ``(r_l, n_l, k_l)``, with ``generator``), that energy says nothing
    of the class. Used only for the classifier's training set; nothing more is stored.
    """
    r, n, k = addressing.shape
    pool = torch.cat([F.pad(a.detach().float(), (0, num_bases - a.shape[2])).reshape(-1, num_bases)
                      for a in later])
    pool[:, :k] = 0
    pick = torch.randint(len(pool), (r * n,), generator=generator)
    own = F.pad(addressing.detach().float(), (0, num_bases - k)).reshape(r * n, num_bases)
    return (own + pool[pick]).reshape(r, n, num_bases)


# --------------------------------------------------------------------- strategy
@STRATEGIES.register("shared")
class SharedStrategy(Strategy):
    """One ``bases`` memory for the whole stream (module docstring): bases shared by
    every class seen, addressing rows added per task, distilled on the task's real data
    and on recalls of a frozen copy for the earlier classes."""

    name = "shared"

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        self.memory: BasesMemory | None = None  # dense layout
        self.bases: torch.Tensor | None = None  # ragged layout: the bases and one block per task
        self.blocks: list[RaggedBlock] = []
        self._plan: list[tuple[int, list[int]]] | None = None

    @property
    def ragged(self) -> bool:
        return self.options.shared_layout == "ragged"

    def task_config(self, index: int, dataset: str, num_bases: int, num_classes: int) -> DistillConfig:
        """Task ``index``'s distillation: the schedule of :func:`.task_schedule` for a
        memory sized for ``num_classes`` classes (the task's own in the ``ragged`` layout,
        all seen in ``dense``), ``num_bases`` bases, then ``distill_overrides``."""
        o = self.options
        flags = {"memory.kind": "bases", "seed": o.seed + index, "zca": 0.0, "evaluation.every": 0,
                 "evaluation.at_start": False, **task_schedule(o.preset, o.budget_ipc, num_classes),
                 "memory.num_bases": num_bases, "memory.downsample": o.downsample}
        return resolve(o.preset, dataset, o.budget_ipc, kind="bases", flags=flags, flags_source="continual",
                       sets=o.distill_overrides.items(), sets_source="distill_overrides")

    def check_fits(self, benchmark: Benchmark) -> None:
        sized_here = {"memory.num_bases": "--bases (StrategyOptions.num_bases)",
                      "memory.downsample": "--downsample (StrategyOptions.downsample)"}
        for key, use in sized_here.items():
            if key in self.options.distill_overrides:
                raise ConfigError(f"shared: {key} cannot be overridden: the shared memory sizes its bases "
                                  f"itself from the budget; use {use} instead")
        if self.ragged:
            sizes = [benchmark.classes_seen(t) - (benchmark.classes_seen(t - 1) if t else 0)
                     for t in range(benchmark.num_tasks)]
            self._plan = ragged_sizes(self.options, benchmark.image_shape, sizes, benchmark.num_classes)
            k = self._plan[-1][0]
        else:
            k = 0
            for t in range(benchmark.num_tasks):
                k, _ = shared_sizes(self.options, benchmark.image_shape, benchmark.classes_seen(t),
                                    benchmark.num_classes, k)
        mc = self.task_config(0, benchmark.train.name, k, benchmark.classes_seen(0)).memory
        if mc.learned_labels or mc.label_space != "onehot" or mc.kind != "bases":
            raise ConfigError("shared: the memory must be a one-hot 'bases' memory without learned labels "
                              "(drop memory.learned_labels / memory.label_space / memory.kind overrides)")

    def learn_task(self, index, classes, data):
        if self.image_shape is None:
            self.image_shape, self.final_classes = data.image_shape, data.num_classes
        return self._learn_ragged(index, classes, data) if self.ragged else self._learn_dense(index, classes, data)

    def _learn_ragged(self, index, classes, data):
        o = self.options
        if self._plan is None or index >= len(self._plan):
            raise ConfigError("shared (ragged): call begin(benchmark) before the first task")
        k, slots = self._plan[index]
        c, h, w = self.image_shape
        cfg = self.task_config(index, data.name, k, len(classes))
        g = torch.Generator().manual_seed(cfg.seed)
        local = local_view(data, classes)
        frozen = 0 if self.bases is None else self.bases.shape[0]
        bases = extend_bases(self.bases, local, k, slots[-1], o.downsample, g)
        for j, block in enumerate(self.blocks):  # earlier classes: a random subset of their slots (or more)
            kj = block.addressing.shape[2]
            if slots[j] < block.addressing.shape[0]:
                block.addressing = evict_slots(block.addressing, slots[j], g)
            else:
                block.addressing = resize_slots(block.addressing.double(), bases[:kj], slots[j], g, (h, w)).float()
        addressing = solve_addressing(bases, real_per_class(local, slots[-1], g)).float()
        if o.task_context and self.blocks:  # the earlier classes' recalls join the task's distillation
            old = classes[0]
            if o.context_batch == "task":  # the inner batch of the task alone, spread over every class seen
                per = max(1, round(cfg.inner.n_per_class * len(classes) / (old + len(classes))))
                cfg = dataclasses.replace(cfg, inner=dataclasses.replace(cfg.inner, n_per_class=per))
            context = self._recall_blocks()
            full = torch.cat([context_addressing(self.blocks, k, slots[-1], g), addressing], dim=1)
            start = BasesMemory({"bases": bases.float(), "addressing": full}, (c, h, w), old + len(classes),
                                slots[-1])
            current = dataclasses.replace(data, classes=tuple(data.classes[:old + len(classes)]), extra_labels={})
            distiller = RaggedDistiller(cfg, current, start, frozen, device=o.device, context=context,
                                        old_classes=old)
        else:
            old = 0
            start = BasesMemory({"bases": bases.float(), "addressing": addressing}, (c, h, w), len(classes),
                                slots[-1])
            distiller = RaggedDistiller(cfg, local, start, frozen, device=o.device)
        result = distiller.run(progress=o.progress, time_limit=o.distill_seconds)
        tensors = {n: v.detach().cpu() for n, v in result.memory.tensors.items()}
        self.bases = tensors["bases"]
        self.blocks.append(RaggedBlock(classes[0], tensors["addressing"][:, old:].contiguous()))
        return {"layout": "ragged", "num_bases": k, "new_bases": k - frozen, "slots_per_class": slots,
                "distill_iterations": result.iterations, "inner_per_class": cfg.inner.n_per_class,
                "memory_options": result.memory.options()}

    def _learn_dense(self, index, classes, data):
        o = self.options
        seen, old = classes[-1] + 1, classes[0]
        frozen = self.memory  # the memory as it stood before this task; never modified
        k, r = shared_sizes(o, self.image_shape, seen, self.final_classes,
                            0 if frozen is None else frozen.tensors["bases"].shape[0])
        cfg = self.task_config(index, data.name, k, seen)
        start = grow_memory(frozen, local_view(data, classes), k, r, o.downsample,
                            torch.Generator().manual_seed(cfg.seed))
        recalled = frozen.recall() if frozen is not None else (
            torch.empty((0, *self.image_shape)), torch.empty(0, dtype=torch.long))
        current = dataclasses.replace(data, classes=tuple(data.classes[:seen]), extra_labels={})
        distiller = SharedDistiller(cfg, current, recalled, start, replay_class_weight(o.replay_weight, old, seen),
                                    device=o.device)
        result = distiller.run(progress=o.progress, time_limit=o.distill_seconds)
        memory = result.memory
        memory.tensors = {n: v.detach().cpu() for n, v in memory.tensors.items()}
        self.memory = memory
        return {"layout": "dense", "num_bases": k, "slots_per_class": r, "distill_iterations": result.iterations,
                "replayed_examples": int(len(recalled[1])), "memory_options": memory.options()}

    def _recall_blocks(self, views: bool = False, fill: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every stored recall of the ``ragged`` memory and its class: ``(x, y)``; with
        ``views``, each block's recalls followed by their projections onto every smaller
        span an earlier block addresses (``subspace_views``); with a ``fill`` generator,
        each earlier block's recalls preceded by a copy filled on the later bases
        (:func:`fill_later_bases`, ``fill_later``)."""
        xs, ys = [], []
        spans = sorted({b.addressing.shape[2] for b in self.blocks})
        k_all = self.bases.shape[0] if self.blocks else 0
        for j, block in enumerate(self.blocks):
            x, y = block.memory(self.bases, self.image_shape).recall()
            later = [] if fill is None else [
                b.addressing for b in self.blocks[j + 1:] if b.addressing.shape[2] > block.addressing.shape[2]]
            if later:
                filled = RaggedBlock(block.first, fill_later_bases(block.addressing, later, k_all, fill))
                xf, yf = filled.memory(self.bases, self.image_shape).recall()
                xs.append(xf)
                ys.append(yf + block.first)
            xs.append(x)
            ys.append(y + block.first)
            if views:
                for k in (k for k in spans if k < block.addressing.shape[2]):
                    xs.append(project_onto_bases(x, self.bases[:k]))
                    ys.append(y + block.first)
        return torch.cat(xs), torch.cat(ys)

    def training_set(self, current):
        if not self.ragged:
            return TrainingSet(*self.memory.recall())
        fill = None
        if self.options.fill_later:  # drawn afresh for each task's classifier, from the run's seed
            fill = torch.Generator().manual_seed(FILL_SEED + 1009 * self.options.seed + len(self.blocks))
        return TrainingSet(*self._recall_blocks(self.options.subspace_views, fill))

    def floats_stored(self):
        if self.ragged:
            return 0 if self.bases is None else self.bases.numel() + sum(b.addressing.numel() for b in self.blocks)
        return 0 if self.memory is None else self.memory.floats_stored()

    def final_memory(self):
        """The memory a memory file holds: ``dense``, the memory itself; ``ragged``,
        :meth:`ragged_memory`."""
        return self.ragged_memory() if self.ragged else self.memory

    def ragged_memory(self) -> BasesMemory | None:
        """The ``ragged`` memory as one :class:`~memdistill.memory.BasesMemory` with
        per-class slot and basis counts (``class_slots``, ``class_bases``): every class
        keeps all its slots, on the bases that existed when it arrived; the addressing is
        zero-padded to ``(r_max, L, K)``, and the padding is not counted. It recalls
        exactly what the run trains its classifier on (:meth:`training_set`) and stores
        exactly :meth:`floats_stored`. ``None`` before the first task."""
        if not self.ragged:
            raise ConfigError("ragged_memory is the ragged layout's export; the dense layout's memory is .memory")
        if not self.blocks:
            return None
        k = self.bases.shape[0]
        r = max(b.addressing.shape[0] for b in self.blocks)
        rows, class_slots, class_bases = [], [], []
        for block in self.blocks:
            r_j, n, k_j = block.addressing.shape
            rows.append(F.pad(block.addressing, (0, k - k_j, 0, 0, 0, r - r_j)))
            class_slots += [r_j] * n
            class_bases += [k_j] * n
        addressing = torch.cat(rows, dim=1)
        return BasesMemory({"bases": self.bases, "addressing": addressing}, self.image_shape, addressing.shape[1], r,
                           class_slots=class_slots, class_bases=class_bases)


def check_memory_export(benchmark: Benchmark) -> None:
    """Refuse (:class:`ConfigError`) a benchmark whose shared memory cannot be written as
    a memory file of one dataset (:func:`save_shared_memory`)."""
    if not benchmark.class_order or benchmark.name.startswith("many"):
        raise ConfigError(f"saving the shared memory needs a split benchmark of one dataset; {benchmark.name!r} "
                          "has no single dataset a memory file could name (evaluate it through the continual run)")


def save_shared_memory(path: str | Path, memory: BasesMemory, benchmark: Benchmark,
                       extra: dict[str, Any] | None = None) -> Path:
    """Write a ``shared`` run's final memory as an ordinary memory file of the
    benchmark's dataset (rows back in the dataset's own class order), which
    ``memdistill evaluate``, ``show`` and ``derive`` read like any other.

    Raises:
        ConfigError: the benchmark is not a split of one dataset (MANY mixes datasets),
            or the memory does not cover every class.
    """
    check_memory_export(benchmark)
    order = list(benchmark.class_order)
    if memory.num_classes != len(order):
        raise ConfigError(f"the memory covers {memory.num_classes} of the {len(order)} classes; save it after the "
                          "last task")
    inv = torch.argsort(torch.tensor(order))  # inv[o]: the row of original class o
    layout = {} if not memory.ragged else {"class_slots": [memory.class_slots[int(i)] for i in inv],
                                           "class_bases": [memory.class_bases[int(i)] for i in inv]}
    out = BasesMemory({"bases": memory.tensors["bases"], "addressing": memory.tensors["addressing"][:, inv]},
                      memory.image_shape, memory.num_classes, memory.slots, **layout)
    train = benchmark.train
    names = [benchmark.class_names[int(i)] for i in inv]
    record = {"continual": {"benchmark": benchmark.name, "class_order": order, **(extra or {})}}
    if train.source is not None:
        record["dataset"] = train.source
    return save_memory(path, out, dataset=train.name, classes=names, mean=train.mean, std=train.std,
                       train_size=len(train), extra=record)
