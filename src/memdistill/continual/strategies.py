"""What a continual learner keeps of each task: the strategies, under one storage budget.

Every bounded strategy stores at most ``budget_ipc * C*H*W`` floats per class seen (the
equal-storage rule of METHOD.md, applied per task and summed); :meth:`Strategy.floats_stored`
reports what it holds, and the learner records it beside the budget after every task.

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
from ..config import apply_overrides, preset_config
from ..data import ImageDataset
from ..distill import Distiller
from ..errors import ConfigError
from ..evaluate import TrainingSet, select_subset
from ..memory import Memory, solve_slots, stored_float_budget

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
        # fail now, not at the first task, on an unknown preset or a bad override
        cfg = preset_config(self.preset, "mnist", self.budget_ipc, budget_settings=False)
        apply_overrides(cfg, dict(self.distill_overrides), source="distill_overrides").validate()


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

    def _config(self, index: int, data: ImageDataset):
        o = self.options
        cfg = preset_config(o.preset, data.name, o.budget_ipc, budget_settings=False)
        overrides: dict[str, Any] = {
            "memory.kind": self.kind,
            "seed": o.seed + index,
            "zca": 0.0,  # one input space for every task (a per-task whitening would not be)
            "evaluation.epochs": min(cfg.evaluation.epochs, 30),  # the end-of-run check only
            "evaluation.every": 0,
        }
        if self.kind == "bases":
            k = o.num_bases or auto_num_bases(o.budget_ipc, data.image_shape, data.num_classes, o.downsample)
            overrides.update({"memory.num_bases": k, "memory.downsample": o.downsample})
        apply_overrides(cfg, overrides, source="continual")
        apply_overrides(cfg, dict(o.distill_overrides), source="distill_overrides")
        return cfg

    def learn_task(self, index, classes, data):
        local = local_view(data, classes)
        cfg = self._config(index, local)
        initial = None
        if self.options.init_from_previous and self.kind == "bases" and self.memories:
            initial = self._from_previous(cfg, local)
        distiller = Distiller(cfg, local, device=self.options.device, initial_memory=initial)
        result = distiller.run(progress=self.options.progress)
        memory = result.memory
        memory.tensors = {k: v.detach().cpu() for k, v in memory.tensors.items()}
        self.memories.append((classes[0], memory))
        return {"slots_per_class": memory.slots, "distill_iterations": result.iterations,
                "distill_val_accuracy": None if result.last_eval is None else result.last_eval["mean"],
                "memory_options": memory.options()}

    def _from_previous(self, cfg, local: ImageDataset) -> Memory | None:
        """A fresh memory for this task whose bases are the previous task's bases."""
        prev = self.memories[-1][1]
        fresh = Distiller(cfg, local).new_memory()
        if fresh.tensors["bases"].shape != prev.tensors["bases"].shape:
            return None
        fresh.tensors = {k: v.detach().cpu() for k, v in fresh.tensors.items()}
        fresh.tensors["bases"] = prev.tensors["bases"].clone()
        return fresh

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


class FinetuneStrategy(Strategy):
    """No memory: the classifier continues on the current task only (lower bound)."""

    keeps_model = True

    def learn_task(self, index, classes, data):
        return {}

    def training_set(self, current):
        return current

    def floats_stored(self):
        return 0


class JointStrategy(Strategy):
    """Keeps a copy of every task's real data (upper bound; not under the budget)."""

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


def _register(name: str, base: type, **attrs: Any) -> None:
    cls = type(f"{name.title()}Strategy", (base,), {"name": name, **attrs})
    STRATEGIES.register(name)(cls)


_register("memories", MemoryStrategy, kind="bases")
_register("images", MemoryStrategy, kind="images")
_register("random", ExemplarStrategy, method="random")
_register("herding", ExemplarStrategy, method="herding")
_register("finetune", FinetuneStrategy)
_register("joint", JointStrategy)

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


def check_budget_fits(name: str, options: StrategyOptions, image_shape, classes_per_task) -> None:
    """Fail before any work when a task memory cannot fit its budget (e.g. budget too small)."""
    if name == "memories":
        for k in set(classes_per_task):
            nb = options.num_bases or auto_num_bases(options.budget_ipc, image_shape, k, options.downsample)
            solve_slots(options.budget_ipc, image_shape, k, nb, options.downsample)
    elif name == "images":
        c, h, w = image_shape
        if stored_float_budget(options.budget_ipc, image_shape, 1) < c * h * w:
            raise ConfigError(f"images: a budget of {options.budget_ipc} images per class holds no image; "
                              f"use --budget-ipc >= 1")
