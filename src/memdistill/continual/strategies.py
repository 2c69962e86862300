"""What a continual learner keeps of each task: the strategies, under one storage budget.

Every bounded strategy stores at most ``budget_ipc * C*H*W`` floats per class seen (the
equal-storage rule of METHOD.md, applied per task and summed); :meth:`Strategy.check_fits`
refuses a budget it cannot keep before any work, :meth:`Strategy.floats_stored` reports
what it holds, and the learner records it beside the budget after every task. Each
strategy is a class registered in :data:`STRATEGIES` under its ``name``.

- ``memories`` (ours): each task is distilled into its own ``bases`` memory over the
  task's classes, under the task's share of the budget; optionally initialised from the
  previous task's bases (``init_from_previous``). Earlier memories are frozen (their
  task's data is gone), so the bases are shared within a task, not across tasks.
- ``images``: the same with per-class learnable images (the BPTT baseline).
- ``random`` / ``herding``: ``floor(budget_ipc)`` real exemplars per class.
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
    "STRATEGIES",
    "Strategy",
    "StrategyOptions",
    "create_strategy",
    "list_strategies",
    "auto_num_bases",
]

STRATEGIES: Registry[Callable[..., "Strategy"]] = Registry("continual strategy")


@dataclass
class StrategyOptions:
    """Options shared by the strategies.

    Attributes:
        budget_ipc: stored floats per class, in images (``IPC``).
        preset: distillation preset (``cpu-quick``, ``cpu``, ``paper``) for ``memories``
            and ``images``.
        distill_overrides: dotted config keys applied over the preset
            (``{"outer.iterations": 20}``).
        num_bases: bases per task memory; 0 picks :func:`auto_num_bases`.
        downsample: resolution divisor of the bases.
        init_from_previous: start each task's bases from the previous task's (when the
            shapes agree) instead of the principal components of the task's data.
        seed: seeds exemplar selection and distillation (task ``t`` uses ``seed + t``).
        device: where distillation runs.
        progress: show distillation progress bars.
    """

    budget_ipc: float = 1.0
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


def auto_num_bases(budget_ipc: float, image_shape: tuple[int, int, int], num_classes: int,
                   downsample: int, cap: int = 16) -> int:
    """Bases for a task memory: the most (up to ``cap``, the paper's K = 16) whose floats
    take at most half of the task's budget, leaving the other half for addressing.

    Split MNIST at budget 1 (2 classes, 1568 floats, 14x14 bases): K = 4, r = 98.
    """
    c, h, w = image_shape
    per_basis = c * (h // downsample) * (w // downsample)
    half = stored_float_budget(budget_ipc, image_shape, num_classes) // 2
    return max(1, min(cap, half // per_basis))


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

    def __init__(self, options: StrategyOptions) -> None:
        self.options = options

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


class MemoryStrategy(Strategy):
    """Distil each task into a memory of ``kind`` (``bases`` or ``images``)."""

    kind = "bases"

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
        result = distiller.run(progress=self.options.progress)
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
        # K is sized here for the task's share of the budget, with the preset's own T, lr and
        # iterations: its budget-10 settings are a joint choice for whole 10-class datasets
        return {**base_schedule(self.options.preset), "memory.num_bases": self._num_bases(image_shape, num_classes),
                "memory.downsample": self.options.downsample}

    def _check_budget(self, image_shape, num_classes):
        o = self.options
        solve_slots(o.budget_ipc, image_shape, num_classes, self._num_bases(image_shape, num_classes), o.downsample)

    def _initial_memory(self, cfg, local):
        """A fresh memory for this task whose bases are the previous task's bases."""
        if not (self.options.init_from_previous and self.memories):
            return None
        prev = self.memories[-1][1]
        fresh = Distiller(cfg, local).new_memory()
        if fresh.tensors["bases"].shape != prev.tensors["bases"].shape:
            return None
        fresh.tensors = {k: v.detach().cpu() for k, v in fresh.tensors.items()}
        fresh.tensors["bases"] = prev.tensors["bases"].clone()
        return fresh


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


class ExemplarStrategy(Strategy):
    """Keep ``floor(budget_ipc)`` real images per class, chosen by ``method``."""

    method = "random"

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        if options.budget_ipc < 1:
            raise ConfigError(
                f"{self.name}: a budget of {options.budget_ipc} images per class holds no whole real "
                f"image; exemplar strategies need --budget-ipc >= 1"
            )
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self._meta: dict[str, Any] = {}

    def learn_task(self, index, classes, data):
        ipc = int(math.floor(self.options.budget_ipc))
        idx = select_subset(local_view(data, classes), ipc, self.method, seed=self.options.seed + index)
        self.images.append(data.images[idx].clone())
        self.labels.append(data.labels[idx].clone())
        self._meta = {"name": data.name, "classes": data.classes, "mean": data.mean, "std": data.std}
        return {"slots_per_class": ipc}

    def training_set(self, current):
        return ImageDataset(split="train", images=torch.cat(self.images), labels=torch.cat(self.labels),
                            **self._meta)

    def floats_stored(self):
        return sum(int(x.numel()) for x in self.images)  # one float per stored pixel value


@STRATEGIES.register("random")
class RandomStrategy(ExemplarStrategy):
    """``floor(budget_ipc)`` real images per class drawn at random."""

    name = "random"
    method = "random"


@STRATEGIES.register("herding")
class HerdingStrategy(ExemplarStrategy):
    """``floor(budget_ipc)`` real images per class chosen by herding."""

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
ALL_STRATEGIES = ("memories", "images", "herding", "random", "finetune", "joint")


def list_strategies() -> list[str]:
    return list(ALL_STRATEGIES)


def create_strategy(name: str, options: StrategyOptions | None = None, **kwargs: Any) -> Strategy:
    """A strategy by name (``memories``, ``images``, ``random``, ``herding``,
    ``finetune``, ``joint``) with ``options`` (or keyword fields of :class:`StrategyOptions`)."""
    cls = STRATEGIES.get(name)
    if options is None:
        options = StrategyOptions(**kwargs)
    elif kwargs:
        options = dataclasses.replace(options, **kwargs)
    return cls(options)
