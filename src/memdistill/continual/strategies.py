"""What a continual learner keeps of each task: the strategies, under one storage budget.

Two budget modes (:data:`BUDGET_MODES`): ``per-class``, at most ``budget_ipc * C*H*W``
floats per class seen (the equal-storage rule of METHOD.md, applied per task and summed),
and ``total``, one number of floats for the whole stream fixed before the first task
(``budget_ipc * C*H*W * C_final``, or ``budget_total``). :meth:`Strategy.begin` refuses a
mode or budget a strategy cannot honour before any work, :meth:`Strategy.floats_stored`
reports what it holds, and the learner records it beside :meth:`Strategy.budget_floats`
after every task. Each strategy is a class registered in :data:`STRATEGIES` under its
``name``.

- ``shared`` (ours, :mod:`.shared`): one ``bases`` memory for the whole stream, bases
  shared by every class seen, distilled on each task's data and on recalls of a frozen
  copy of itself for the earlier classes.
- ``memories``: each task is distilled into its own ``bases`` memory over the task's
  classes, under the task's share of the budget; optionally initialised from the previous
  task's bases (``init_from_previous``, addressing re-solved against them). Earlier
  memories are frozen (their task's data is gone), so the bases are shared within a task,
  not across tasks. Per-class budgets only.
- ``images``: the same with per-class learnable images (the BPTT baseline).
- ``random`` / ``herding``: real exemplars per class (``floor(budget_ipc)``, or an even
  share of the total with eviction, :func:`exemplar_quotas`).
- ``finetune``: keeps nothing (lower bound); ``joint``: keeps all real data (upper bound,
  unbounded storage).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .._registry import Registry
from ..config import DistillConfig, base_schedule, preset_values, resolve
from ..data import ImageDataset
from ..distill import Distiller
from ..errors import ConfigError
from ..evaluate import TrainingSet, select_subset
from ..memory import Memory, solve_slots, stored_float_budget
from .benchmarks import Benchmark

__all__ = [
    "BUDGET_MODES",
    "CONTEXT_BATCHES",
    "SHARED_LAYOUTS",
    "STRATEGIES",
    "Strategy",
    "StrategyOptions",
    "create_strategy",
    "list_strategies",
    "auto_num_bases",
]

STRATEGIES: Registry[Callable[..., "Strategy"]] = Registry("continual strategy")

# ``per-class``: ``budget_ipc * C*H*W`` floats per class seen (grows with the classes);
# ``total``: one number of floats for the whole stream, chosen before the first task.
BUDGET_MODES = ("per-class", "total")
# how the ``shared`` strategy's classes address its bases (StrategyOptions.shared_layout)
SHARED_LAYOUTS = ("ragged", "dense")
# the inner batch of a task's distillation with context (StrategyOptions.context_batch)
CONTEXT_BATCHES = ("seen", "task")


@dataclass
class StrategyOptions:
    """Options shared by the strategies.

    Attributes:
        budget_ipc: the storage budget in images per class (``IPC``). Per-class mode:
            ``budget_ipc * C*H*W`` floats per class seen, so storage may grow with the
            classes. Fixed-total mode: ``budget_ipc * C*H*W * C_final`` floats for the
            whole stream (``C_final``: the benchmark's classes), fixed before the first task.
        budget_mode: ``"per-class"`` or ``"total"`` (:data:`BUDGET_MODES`).
        budget_total: fixed-total mode only: the total in floats (overrides the total
            ``budget_ipc`` gives).
        preset: distillation preset (``cpu-quick``, ``cpu``, ``paper``) for ``memories``
            and ``images``.
        distill_overrides: dotted config keys applied over the preset
            (``{"outer.iterations": 20}``).
        num_bases: bases per task memory; 0 picks :func:`auto_num_bases`.
        downsample: resolution divisor of the bases.
        init_from_previous: start each task's bases from the previous task's (when the
            shapes agree) instead of the principal components of the task's data.
        seed: seeds exemplar selection and distillation (task ``t`` uses ``seed + t``).
        replay_weight: ``shared`` only: the weight of the earlier classes' term (examples
            recalled from the frozen memory) against the current task's real data in the
            outer loss. ``"classes"``: proportional to the number of classes on each side
            (every class weighs the same); a number ``w`` in ``[0, 1]``: ``w`` for the old
            term, ``1 - w`` for the new one. Only the ``dense`` layout replays.
        shared_layout: ``shared`` only (:data:`SHARED_LAYOUTS`): ``"ragged"``, each
            class addresses the bases that existed when it arrived (earlier classes keep
            their slots and recalls; later classes reuse the earlier bases), or
            ``"dense"``, every class addresses every basis and the whole memory is
            distilled with the frozen copy replaying the earlier classes.
        subspace_views: ``shared`` with the ``ragged`` layout only: the classifier also
            trains on each class's recalls projected (least squares) onto the fewer bases
            every earlier class addresses, so that how many bases a recall spans says
            nothing of its class (an earlier class's recalls span only the bases that
            existed when it arrived; real test images span everything). Computed from
            the memory when the classifier trains; nothing more is stored.
        fill_later: ``shared`` with the ``ragged`` layout only: the classifier also
            trains on a copy of each earlier class's recalls to which a random later
            class's slot adds its coefficients on the bases added after the earlier class
            arrived (:func:`~.shared.fill_later_bases`), so that energy on those bases
            (which real images of every class have, and the earlier recalls lack) says
            nothing of the class. Computed from the memory when the classifier trains;
            nothing more is stored.
        task_context: ``shared`` with the ``ragged`` layout only: each task's block is
            distilled with the earlier classes in the inner network's training set (their
            stored recalls, unchanged) and in the outer loss (those recalls stand in for
            their data), so the new classes are learnt against the earlier ones, not
            against each other alone (:class:`~.shared.RaggedDistiller`). Off: the block
            is distilled on the task's own classes.
        context_batch: with ``task_context``, the inner network's batch: ``"seen"``
            draws ``inner.n_per_class`` recalls of every class seen, so steps grow with the
            classes (and a wall-time limit ends the later tasks' distillations sooner);
            ``"task"`` keeps the batch at the size it has without context (``n_per_class``
            times the task's classes, spread over every class seen, at least one each).
        distill_seconds: wall-time limit of each task's distillation (``memories``,
            ``images``, ``shared``; ``None``: the iteration count alone decides).
        device: where distillation runs.
        progress: show distillation progress bars.
    """

    budget_ipc: float = 1.0
    budget_mode: str = "per-class"
    budget_total: int | None = None
    replay_weight: str | float = "classes"
    shared_layout: str = "ragged"
    subspace_views: bool = False
    fill_later: bool = False
    task_context: bool = False
    context_batch: str = "seen"
    distill_seconds: float | None = None
    preset: str = "cpu-quick"
    distill_overrides: dict[str, Any] = field(default_factory=dict)
    num_bases: int = 0
    downsample: int = 2
    init_from_previous: bool = False
    seed: int = 0
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.budget_ipc > 0:
            raise ConfigError(f"budget_ipc must be > 0, got {self.budget_ipc}")
        if self.num_bases < 0 or self.downsample < 1:
            raise ConfigError("num_bases must be >= 0 (0: automatic) and downsample >= 1")
        if self.budget_mode not in BUDGET_MODES:
            raise ConfigError(f"unknown budget mode {self.budget_mode!r}; valid: {', '.join(BUDGET_MODES)} "
                              "(--budget-ipc for per-class, --budget-total-ipc or --budget-total for total)")
        if self.budget_total is not None and (self.budget_mode != "total" or int(self.budget_total) < 1):
            raise ConfigError(f"budget_total ({self.budget_total}) needs budget_mode='total' and a positive "
                              "number of floats")
        if self.replay_weight != "classes" and not (
                isinstance(self.replay_weight, (int, float)) and 0 <= float(self.replay_weight) <= 1):
            raise ConfigError(f"replay_weight must be 'classes' or a number in [0, 1], got {self.replay_weight!r}")
        if self.shared_layout not in SHARED_LAYOUTS:
            raise ConfigError(f"unknown shared layout {self.shared_layout!r}; valid: {', '.join(SHARED_LAYOUTS)}")
        if self.shared_layout == "ragged" and self.replay_weight != "classes":
            raise ConfigError("replay_weight applies to the 'dense' shared layout only (the 'ragged' layout never "
                              "changes an earlier class's recalls, so nothing is replayed); add --shared-layout dense "
                              "or drop --replay-weight")
        if self.subspace_views and self.shared_layout != "ragged":
            raise ConfigError("subspace_views applies to the 'ragged' shared layout only (in the 'dense' layout "
                              "every class spans every basis); drop --subspace-views or --shared-layout dense")
        if self.fill_later and self.shared_layout != "ragged":
            raise ConfigError("fill_later applies to the 'ragged' shared layout only (in the 'dense' layout every "
                              "class spans every basis); drop --fill-later or --shared-layout dense")
        if self.task_context and self.shared_layout != "ragged":
            raise ConfigError("task_context applies to the 'ragged' shared layout only (the 'dense' layout always "
                              "distils every class seen); drop --task-context or --shared-layout dense")
        if self.context_batch not in CONTEXT_BATCHES:
            raise ConfigError(f"unknown context batch {self.context_batch!r}; valid: {', '.join(CONTEXT_BATCHES)} "
                              "(seen: n_per_class recalls of every class seen; task: the batch without context)")
        if self.context_batch != "seen" and not self.task_context:
            raise ConfigError("context_batch applies with task_context only; add --task-context or drop "
                              "--context-batch")
        if self.distill_seconds is not None and not self.distill_seconds > 0:
            raise ConfigError(f"distill_seconds must be > 0 seconds or None, got {self.distill_seconds}")

    def total_floats(self, image_shape: tuple[int, int, int], final_classes: int) -> int:
        """Fixed-total mode: the floats of the whole stream (``budget_total``, else
        ``budget_ipc * C*H*W * final_classes``)."""
        if self.budget_total is not None:
            return int(self.budget_total)
        return stored_float_budget(self.budget_ipc, image_shape, final_classes)

    def budget_floats(self, image_shape: tuple[int, int, int], seen: int, final_classes: int) -> int:
        """What may be stored once ``seen`` of the ``final_classes`` classes are seen."""
        if self.budget_mode == "total":
            return self.total_floats(image_shape, final_classes)
        return stored_float_budget(self.budget_ipc, image_shape, seen)


PAPER_BASES = 16  # the paper's K: a task memory's most bases below 10 images per class


def auto_bases_cap(budget_ipc: float, num_classes: int) -> int:
    """The most bases :func:`auto_num_bases` gives a task of ``num_classes`` classes: the
    paper's K = 16 below 10 images per class; from 10 on, the single-task budget-10
    setting's 64 bases for 10 classes (:data:`~memdistill.config.BUDGET10_SETTINGS`) in
    proportion to the task's classes, at least 16 and at most 64.

    Chosen on the validation split at budget 10 (docs/CONTINUAL.md, "Bases per task at
    budget 10"): MANY's 10-class tasks scored best with 64 of 16 / 32 / 64 / 128 bases;
    Split MNIST's 2-class tasks better with 16 than 40.
    """
    if budget_ipc < 10:
        return PAPER_BASES
    return min(64, max(PAPER_BASES, 64 * num_classes // 10))


def task_schedule(preset: str, budget_ipc: float, num_classes: int) -> dict[str, Any]:
    """The schedule flags a task memory of ``num_classes`` classes distills with (given to
    :func:`~memdistill.config.resolve`): the preset's budget-1 schedule
    (:func:`~memdistill.config.base_schedule`), except for a task that may take more than
    the paper's 16 bases (:func:`auto_bases_cap`: 10 or more classes at 10 images per
    class, e.g. MANY's tasks), which keeps the preset's budget-10 settings (long, truncated
    unrolls), as a single-task memory of 64 bases does. On MANY's validation split at budget
    10 its 64-basis memories ended 3.5 points below their own start with the short unrolls,
    level with it with the long ones; the Split benchmarks' 16-basis tasks gain from the
    short unrolls (docs/CONTINUAL.md, "Bases per task at budget 10")."""
    return {} if auto_bases_cap(budget_ipc, num_classes) > PAPER_BASES else base_schedule(preset)


def auto_num_bases(budget_ipc: float, image_shape: tuple[int, int, int], num_classes: int,
                   downsample: int, cap: int | None = None) -> int:
    """Bases for a task memory: the most (up to ``cap``, by default :func:`auto_bases_cap`)
    whose floats take at most half of the task's budget, leaving the other half for
    addressing.

    Split MNIST at budget 1 (2 classes, 1568 floats, 14x14 bases): K = 4, r = 98; at
    budget 10: K = 16; MANY's 10-class tasks at budget 10: K = 64.
    """
    c, h, w = image_shape
    per_basis = c * (h // downsample) * (w // downsample)
    half = stored_float_budget(budget_ipc, image_shape, num_classes) // 2
    return max(1, min(auto_bases_cap(budget_ipc, num_classes) if cap is None else cap, half // per_basis))


def local_view(data: ImageDataset, classes: tuple[int, ...]) -> ImageDataset:
    """``data`` (labels in ``classes``, which are consecutive) relabelled to ``0..k-1``."""
    first = classes[0]
    if tuple(classes) != tuple(range(first, first + len(classes))):
        raise ConfigError(f"task classes must be consecutive ids, got {classes}")
    return dataclasses.replace(data, labels=data.labels - first,
                               classes=tuple(data.classes[c] for c in classes), extra_labels={})


class Strategy:
    """Base class. ``learn_task`` is called while a task is current (its data readable);
    ``training_set`` gives what the classifier trains on after that task.

    Attributes:
        name: registry name.
        bounded: whether the storage budget applies (all but ``joint``).
        keeps_model: the classifier must continue from its previous weights
            (``finetune``: without a memory, training from scratch would know one task).
    """

    name = ""
    bounded = True
    keeps_model = False
    budget_modes: tuple[str, ...] = BUDGET_MODES  # the budget modes it can honour

    def __init__(self, options: StrategyOptions) -> None:
        self.options = options
        self.image_shape: tuple[int, int, int] | None = None
        self.final_classes: int | None = None

    def begin(self, benchmark: Benchmark) -> None:
        """Before the first task: refuse a budget mode this strategy cannot honour, note
        the benchmark's image shape and final class count (the fixed total is sized on
        them) and :meth:`check_fits`."""
        mode = self.options.budget_mode
        if self.bounded and mode not in self.budget_modes:
            able = [n for n in ALL_STRATEGIES if mode in getattr(STRATEGIES.get(n), "budget_modes", ())]
            raise ConfigError(f"strategy {self.name!r} cannot honour the {mode!r} budget mode "
                              f"({self._why_not(mode)}); strategies that can: {', '.join(able)}")
        self.image_shape, self.final_classes = benchmark.image_shape, benchmark.num_classes
        self.check_fits(benchmark)

    def _why_not(self, mode: str) -> str:
        return "not supported"

    def budget_floats(self, seen: int) -> int | None:
        """The floats this strategy may hold with ``seen`` classes seen (``None``:
        unbounded); needs :meth:`begin`."""
        if not self.bounded:
            return None
        if self.image_shape is None:
            raise ConfigError(f"strategy {self.name!r}: call begin(benchmark) before the first task")
        return self.options.budget_floats(self.image_shape, seen, self.final_classes)

    def check_fits(self, benchmark: Benchmark) -> None:
        """Fail before any work when what this strategy keeps of ``benchmark``'s tasks
        cannot fit the storage budget or its settings are invalid (nothing to check here)."""

    def learn_task(self, index: int, classes: tuple[int, ...], data: ImageDataset) -> dict[str, Any]:
        """Keep what the strategy keeps of ``data`` (labels are benchmark class ids).
        Returns facts worth recording (seconds, slots...)."""
        raise NotImplementedError

    def training_set(self, current: ImageDataset) -> TrainingSet | ImageDataset:
        """Images the classifier trains on after the current task (``current`` is that
        task's real data, readable now)."""
        raise NotImplementedError

    def floats_stored(self) -> int:
        """Floats kept across tasks (what survives when the next task starts)."""
        raise NotImplementedError

    def final_memory(self) -> Memory | None:
        """The one memory the strategy keeps for the whole stream (``shared``), else ``None``."""
        return None


class MemoryStrategy(Strategy):
    """Distil each task into a memory of ``kind`` (``bases`` or ``images``)."""

    kind = "bases"
    budget_modes = ("per-class",)

    def _why_not(self, mode):
        return ("it keeps one frozen memory per task, sized when the task ends, and cannot re-divide "
                "storage later; its per-class run at the same --budget-ipc reaches the same total after "
                "the last task and never exceeds it")

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        self.memories: list[tuple[int, Memory]] = []  # (first class id, memory)

    def task_config(self, index: int, dataset: str, image_shape: tuple[int, int, int],
                    num_classes: int) -> DistillConfig:
        """The distillation configuration of task ``index`` (``num_classes`` classes of
        ``dataset``): the preset, then the learner's settings, then ``distill_overrides``."""
        o = self.options
        flags = {
            "memory.kind": self.kind,
            "seed": o.seed + index,
            "zca": 0.0,  # one input space for every task (a per-task whitening would not be)
            # the end-of-run check only
            "evaluation.epochs": min(preset_values(o.preset, ["evaluation.epochs"])["evaluation.epochs"], 30),
            "evaluation.every": 0,
            "evaluation.at_start": False,  # the learner judges the memories; no extra evaluation per task
            **self._memory_settings(image_shape, num_classes),
        }
        return resolve(o.preset, dataset, o.budget_ipc, kind=self.kind, flags=flags, flags_source="continual",
                       sets=o.distill_overrides.items(), sets_source="distill_overrides")

    def _memory_settings(self, image_shape: tuple[int, int, int], num_classes: int) -> dict[str, Any]:
        """Configuration keys this kind of task memory sets itself."""
        return {}

    def _initial_memory(self, cfg: DistillConfig, local: ImageDataset) -> Memory | None:
        """The memory a task's distillation starts from (``None``: the distiller's own)."""
        return None

    def _check_budget(self, image_shape: tuple[int, int, int], num_classes: int) -> None:
        raise NotImplementedError

    def check_fits(self, benchmark):
        for k in sorted({len(t) for t in benchmark.tasks}):
            self._check_budget(benchmark.image_shape, k)
            self.task_config(0, benchmark.train.name, benchmark.image_shape, k)  # validated there

    def learn_task(self, index, classes, data):
        local = local_view(data, classes)
        cfg = self.task_config(index, local.name, local.image_shape, local.num_classes)
        distiller = Distiller(cfg, local, device=self.options.device, initial_memory=self._initial_memory(cfg, local))
        result = distiller.run(progress=self.options.progress, time_limit=self.options.distill_seconds)
        memory = result.memory
        memory.tensors = {k: v.detach().cpu() for k, v in memory.tensors.items()}
        self.memories.append((classes[0], memory))
        return {"slots_per_class": memory.slots, "distill_iterations": result.iterations,
                "distill_val_accuracy": None if result.last_eval is None else result.last_eval["mean"],
                "memory_options": memory.options()}

    def training_set(self, current):
        xs, ys = [], []
        for first, memory in self.memories:
            x, y = memory.recall()
            if y.ndim == 2:  # learned soft labels over the task's classes: hard targets here
                y = y.argmax(1)
            xs.append(x)
            ys.append(y + first)
        return TrainingSet(torch.cat(xs), torch.cat(ys))

    def floats_stored(self):
        return sum(m.floats_stored() for _, m in self.memories)


@STRATEGIES.register("memories")
class MemoriesStrategy(MemoryStrategy):
    """Ours: each task distilled into a ``bases`` memory of :func:`auto_num_bases` bases
    (or ``num_bases``), optionally starting from the previous task's bases."""

    name = "memories"
    kind = "bases"

    def _num_bases(self, image_shape: tuple[int, int, int], num_classes: int) -> int:
        o = self.options
        return o.num_bases or auto_num_bases(o.budget_ipc, image_shape, num_classes, o.downsample)

    def _memory_settings(self, image_shape, num_classes):
        # K is sized here for the task's share of the budget; the schedule is the preset's
        # budget-1 one except for tasks of 10 or more classes at budget >= 10 (task_schedule)
        o = self.options
        return {**task_schedule(o.preset, o.budget_ipc, num_classes),
                "memory.num_bases": self._num_bases(image_shape, num_classes), "memory.downsample": o.downsample}

    def _check_budget(self, image_shape, num_classes):
        o = self.options
        solve_slots(o.budget_ipc, image_shape, num_classes, self._num_bases(image_shape, num_classes), o.downsample)

    def _initial_memory(self, cfg, local):
        """A fresh memory for this task whose bases are the previous task's and whose
        addressing is re-solved against them (least squares of ``slots`` real images per
        class, the routine of the usual start), so its recall is the best these bases give."""
        if not (self.options.init_from_previous and self.memories):
            return None
        prev = self.memories[-1][1]
        distiller = Distiller(cfg, local)
        fresh = distiller.new_memory()
        if fresh.tensors["bases"].shape != prev.tensors["bases"].shape:
            return None
        fresh.tensors = {k: v.detach().cpu() for k, v in fresh.tensors.items()}
        fresh.tensors["bases"] = prev.tensors["bases"].clone()
        fresh.refit_addressing(distiller.train, refit_generator(cfg.seed))
        return fresh


def refit_generator(seed: int) -> torch.Generator:
    """The generator drawing the real images that ``init_from_previous`` re-solves a
    task's addressing against (its own stream, apart from the distillation's)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + 0x5EED)


@STRATEGIES.register("images")
class ImagesStrategy(MemoryStrategy):
    """Each task distilled into per-class learnable images (the BPTT baseline)."""

    name = "images"
    kind = "images"

    def _check_budget(self, image_shape, num_classes):
        c, h, w = image_shape
        if stored_float_budget(self.options.budget_ipc, image_shape, 1) < c * h * w:
            raise ConfigError(f"images: a budget of {self.options.budget_ipc} images per class holds no image; "
                              f"use --budget-ipc >= 1")


def exemplar_quotas(options: StrategyOptions, image_shape: tuple[int, int, int], seen: int,
                    final_classes: int) -> list[int]:
    """Real images each of the ``seen`` classes may keep.

    Per-class mode: ``floor(budget_ipc)`` each. Fixed-total mode: the ``n`` whole images
    the total holds, divided evenly, the remainder one each to the lowest class ids
    (``n // seen + (c < n % seen)``). As ``seen`` grows no class's quota grows, so
    evicting the tail of each class's selection order is all a new task ever needs.
    """
    if options.budget_mode == "per-class":
        return [int(math.floor(options.budget_ipc))] * seen
    n = options.total_floats(image_shape, final_classes) // math.prod(image_shape)
    return [n // seen + (1 if c < n % seen else 0) for c in range(seen)]


class ExemplarStrategy(Strategy):
    """Keep real images per class, chosen by ``method``: ``floor(budget_ipc)`` each in
    per-class mode; in fixed-total mode an even share of the total
    (:func:`exemplar_quotas`), evicting the last-chosen images of earlier classes as new
    classes arrive (the first ``m`` of a herding order are herding's choice of ``m``)."""

    method = "random"

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        if options.budget_mode == "per-class" and options.budget_ipc < 1:
            raise ConfigError(
                f"{self.name}: a budget of {options.budget_ipc} images per class holds no whole real "
                f"image; exemplar strategies need --budget-ipc >= 1"
            )
        self.kept: dict[int, torch.Tensor] = {}  # class id -> uint8 images in selection order
        self._meta: dict[str, Any] = {}

    def check_fits(self, benchmark):
        n = exemplar_quotas(self.options, benchmark.image_shape, benchmark.num_classes, benchmark.num_classes)
        if min(n) < 1:
            total = self.options.total_floats(benchmark.image_shape, benchmark.num_classes)
            raise ConfigError(
                f"{self.name}: a total budget of {total:,} floats holds fewer than one real image "
                f"({math.prod(benchmark.image_shape):,} floats) for each of the {benchmark.num_classes} classes; "
                f"use --budget-total-ipc >= 1")

    def learn_task(self, index, classes, data):
        if self.image_shape is None:  # used without begin(): per-class mode needs no benchmark
            self.image_shape, self.final_classes = data.image_shape, data.num_classes
        seen = classes[-1] + 1
        quota = exemplar_quotas(self.options, self.image_shape, seen, self.final_classes)
        local = local_view(data, classes)
        most = max(quota[c] for c in classes)
        idx = select_subset(local, most, self.method, seed=self.options.seed + index)  # by class, then order
        for j, c in enumerate(classes):
            self.kept[c] = data.images[idx[j * most: j * most + quota[c]]].clone()
        for c in range(classes[0]):  # evict: keep the first of each earlier class's selection
            self.kept[c] = self.kept[c][: quota[c]]
        self._meta = {"name": data.name, "classes": data.classes, "mean": data.mean, "std": data.std}
        return {"slots_per_class": [int(len(self.kept[c])) for c in range(seen)]}

    def training_set(self, current):
        order = sorted(self.kept)
        labels = torch.cat([torch.full((len(self.kept[c]),), c, dtype=torch.long) for c in order])
        return ImageDataset(split="train", images=torch.cat([self.kept[c] for c in order]), labels=labels,
                            **self._meta)

    def floats_stored(self):
        return sum(int(x.numel()) for x in self.kept.values())  # one float per stored pixel value


@STRATEGIES.register("random")
class RandomStrategy(ExemplarStrategy):
    """Real images per class drawn at random (evicted at random in fixed-total mode)."""

    name = "random"
    method = "random"


@STRATEGIES.register("herding")
class HerdingStrategy(ExemplarStrategy):
    """Real images per class chosen by herding (the best per class within the share)."""

    name = "herding"
    method = "herding"


@STRATEGIES.register("finetune")
class FinetuneStrategy(Strategy):
    """No memory: the classifier continues on the current task only (lower bound)."""

    name = "finetune"
    keeps_model = True

    def learn_task(self, index, classes, data):
        return {}

    def training_set(self, current):
        return current

    def floats_stored(self):
        return 0


@STRATEGIES.register("joint")
class JointStrategy(Strategy):
    """Keeps a copy of every task's real data (upper bound; not under the budget)."""

    name = "joint"
    bounded = False

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        self.kept: list[ImageDataset] = []

    def learn_task(self, index, classes, data):
        self.kept.append(data.subset(torch.arange(len(data))))  # a copy, not the revocable view
        return {}

    def training_set(self, current):
        first = self.kept[0]
        return dataclasses.replace(first, images=torch.cat([d.images for d in self.kept]),
                                   labels=torch.cat([d.labels for d in self.kept]), extra_labels={})

    def floats_stored(self):
        return sum(int(d.images.numel()) for d in self.kept)


# The order of a comparison (``--strategy all``): ours first, bounds last.
ALL_STRATEGIES = ("shared", "memories", "images", "herding", "random", "finetune", "joint")


def list_strategies() -> list[str]:
    return list(ALL_STRATEGIES)


def create_strategy(name: str, options: StrategyOptions | None = None, **kwargs: Any) -> Strategy:
    """A strategy by name (``shared``, ``memories``, ``images``, ``random``, ``herding``,
    ``finetune``, ``joint``) with ``options`` (or keyword fields of :class:`StrategyOptions`)."""
    cls = STRATEGIES.get(name)
    if options is None:
        options = StrategyOptions(**kwargs)
    elif kwargs:
        options = dataclasses.replace(options, **kwargs)
    return cls(options)
