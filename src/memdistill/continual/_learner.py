"""The class-incremental learner: one pass over a task stream, a classifier trained after
every task on what the strategy keeps, tested on every class seen so far.

Metrics (``acc[t][j]``: accuracy on the classes of task ``j`` after task ``t``):

- ``seen_accuracy[t]``: accuracy on the test images of every class seen after task ``t``;
- ``final_average_accuracy``: ``mean_j acc[T-1][j]``;
- ``forgetting``: ``mean_{j<T-1} (max_{t<T-1} acc[t][j] - acc[T-1][j])`` (Chaudhry et al. 2018).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._progress import progress_bar
from .._io import atomic_write_bytes, atomic_write_json
from ..data import ImageDataset
from ..config import TrainOptions
from ..errors import ConfigError
from ..evaluate import TrainingSet
from ..models import create_model
from .benchmarks import Benchmark
from .strategies import ALL_STRATEGIES, StrategyOptions, create_strategy

__all__ = ["LearnerConfig", "ContinualResult", "run_continual", "run_comparison",
           "format_table", "save_results", "plot_results", "plot_storage"]


@dataclass
class LearnerConfig(TrainOptions):
    """How the classifier is trained after each task and how it is tested.

    Attributes:
        training: ``"scratch"`` (a new network after every task, GDumb-style) or
            ``"continue"`` (keep training the previous network). ``finetune`` always
            continues.
        arch, width, depth: the classifier (a registry network, its width and depth).
        steps: optimiser steps after each task (fixed compute, whatever the data size).
        batch_size, lr, momentum: SGD settings.
        balanced: draw every batch class-balanced (each class seen equally often, with
            replacement, whatever how many examples it holds) instead of passing over the
            examples in a shuffled order. A ``shared`` memory's ``ragged`` layout holds
            more slots for the earlier classes than for the later ones (at budget 1 on
            Split MNIST 98 against 19); exemplars and per-task memories hold as many
            for every class, where the two samplers differ only in the draw.
        test_per_class: test on the first this-many test images of each seen class
            (``None``: the whole test split of those classes).
        seed: seeds the classifier's initialisation and batch order.
        device: where the classifier trains.
    """

    width: int = 32
    batch_size: int = 128
    training: str = "scratch"
    depth: int = 0  # 0: the network's default (ConvNet-4 suits 64-pixel images)
    steps: int = 300
    momentum: float = 0.9
    balanced: bool = False
    test_per_class: int | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.training not in ("scratch", "continue"):
            raise ConfigError(f"training must be 'scratch' or 'continue', got {self.training!r}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError("steps and batch_size must be >= 1 and lr > 0")
        if self.test_per_class is not None and self.test_per_class < 1:
            raise ConfigError(f"test_per_class must be >= 1 or None, got {self.test_per_class}")


@dataclass
class ContinualResult:
    """One strategy's run over one benchmark (see the module docstring for the metrics).

    ``per_task_accuracy[t][j]`` is ``acc[t][j]`` (tasks ``j <= t``); ``floats_stored[t]``
    and ``budget_floats[t]`` are the storage after task ``t`` and what the budget allows
    for the classes seen then (``None`` for unbounded strategies); ``classes_seen[t]`` the
    classes seen after task ``t``. ``budget_mode`` is ``per-class`` or ``total``
    (``budget_ipc`` is then images per class of the final class count).
    ``final_confusion[i][j]``: after the last task, the test images of class ``i``
    classified as ``j`` (which classes a run forgets into which).
    """

    benchmark: str
    strategy: str
    budget_ipc: float
    training: str
    budget_mode: str = "per-class"
    classes_seen: list[int] = field(default_factory=list)
    seen_accuracy: list[float] = field(default_factory=list)
    per_task_accuracy: list[list[float]] = field(default_factory=list)
    floats_stored: list[int] = field(default_factory=list)
    budget_floats: list[int | None] = field(default_factory=list)
    task_seconds: list[float] = field(default_factory=list)
    task_info: list[dict[str, Any]] = field(default_factory=list)
    final_confusion: list[list[int]] = field(default_factory=list)
    memory: Any = field(default=None, repr=False, compare=False)  # the strategy's final_memory(); not saved

    @property
    def final_average_accuracy(self) -> float:
        return float(np.mean(self.per_task_accuracy[-1])) if self.per_task_accuracy else float("nan")

    @property
    def forgetting(self) -> float:
        acc, T = self.per_task_accuracy, len(self.per_task_accuracy)
        if T < 2:
            return float("nan")
        drops = [max(acc[t][j] for t in range(j, T - 1)) - acc[T - 1][j] for j in range(T - 1)]
        return float(np.mean(drops))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "memory"}
        d.update(final_average_accuracy=self.final_average_accuracy, forgetting=self.forgetting)
        return d


# ------------------------------------------------------------------- training
def _as_training_set(data: TrainingSet | ImageDataset, device) -> TrainingSet:
    return data.to(device) if isinstance(data, TrainingSet) else TrainingSet(data, device=device)


def _train(model: torch.nn.Module, data: TrainingSet, seen: int, cfg: LearnerConfig,
           g: torch.Generator) -> None:
    """``cfg.steps`` SGD steps on ``data``; logits of unseen classes are masked out."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    n = len(data)
    order, pos = torch.randperm(n, generator=g), 0
    weights = _balanced_weights(data.labels.cpu()) if cfg.balanced else None
    model.train()
    for _ in range(cfg.steps):
        if weights is not None:
            idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=g)
        else:
            if pos >= n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos : pos + cfg.batch_size]
            pos += cfg.batch_size
        x, y = data.get(idx.to(data.device))
        loss = F.cross_entropy(model(x)[:, :seen], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def _balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Sampling weights that draw every class equally often: ``1 / (examples of the
    example's class)``; soft labels count for their most likely class."""
    cls = labels.argmax(1) if labels.ndim == 2 else labels.long()
    counts = torch.bincount(cls)
    return 1.0 / counts[cls].double()


@torch.no_grad()
def _confusion(model: torch.nn.Module, test: ImageDataset, seen: int, device) -> torch.Tensor:
    """Confusion matrix ``(seen, seen)`` (row: true class, column: prediction, restricted
    to the seen classes) of ``model`` on ``test``."""
    m = torch.zeros(seen * seen, dtype=torch.long)
    for s in range(0, len(test), 2000):
        x, y = test.batch(torch.arange(s, min(s + 2000, len(test))), device=device)
        pred = model(x)[:, :seen].argmax(1)
        m += torch.bincount((y * seen + pred).cpu(), minlength=seen * seen)
    return m.view(seen, seen)


def run_continual(
    benchmark: Benchmark,
    strategy: str,
    options: StrategyOptions | None = None,
    learner: LearnerConfig | None = None,
    progress: bool = False,
    callback: Callable[[int, ContinualResult], None] | None = None,
) -> ContinualResult:
    """Run ``strategy`` over ``benchmark`` once.

    After each task the strategy keeps what it keeps (the stream then revokes the task's
    data), the classifier is trained on the strategy's training set (from scratch or
    continued) and tested on every class seen so far. ``callback(t, result)`` is called
    after each task.
    """
    options = options or StrategyOptions()
    learner = learner or LearnerConfig()
    strat = create_strategy(strategy, options)
    strat.begin(benchmark)
    result = ContinualResult(benchmark.name, strategy, options.budget_ipc,
                             "continue" if strat.keeps_model else learner.training, budget_mode=options.budget_mode)
    c, h, w = benchmark.image_shape
    arch_options = learner.arch_options()
    g = torch.Generator().manual_seed(int(learner.seed))
    model = None
    bar = progress_bar(benchmark.num_tasks, desc=f"{benchmark.name} {strategy}", unit="task", enabled=progress)
    try:
        for task in benchmark.stream():
            t0 = time.perf_counter()
            data = task.train
            info = strat.learn_task(task.index, task.classes, data)
            seen = benchmark.classes_seen(task.index)
            if model is None or result.training == "scratch":
                model = create_model(learner.arch, c, benchmark.num_classes, (h, w), generator=g,
                                     device=learner.device, **arch_options)
            _train(model, _as_training_set(strat.training_set(data), learner.device), seen, learner, g)
            del data
            test = benchmark.test_seen(task.index, learner.test_per_class)
            confusion = _confusion(model, test, seen, learner.device)
            counts = confusion.sum(1).float()
            per_class = confusion.diagonal().float() / counts.clamp(min=1)
            result.seen_accuracy.append(float((per_class * counts).sum() / counts.sum()))
            result.per_task_accuracy.append(
                [float(per_class[list(benchmark.tasks[j])].mean()) for j in range(task.index + 1)])
            result.floats_stored.append(strat.floats_stored())
            result.budget_floats.append(strat.budget_floats(seen))
            result.classes_seen.append(seen)
            result.task_seconds.append(time.perf_counter() - t0)
            result.task_info.append(info)
            result.final_confusion = confusion.tolist()
            bar.set_postfix(acc=f"{100 * result.seen_accuracy[-1]:.1f}")
            bar.update(1)
            if callback is not None:
                callback(task.index, result)
    finally:
        bar.close()
    result.memory = strat.final_memory()
    return result


def run_comparison(
    benchmark: Benchmark,
    strategies: Sequence[str] = ALL_STRATEGIES,
    options: StrategyOptions | None = None,
    learner: LearnerConfig | None = None,
    progress: bool = False,
    callback: Callable[[str, ContinualResult], None] | None = None,
) -> list[ContinualResult]:
    """:func:`run_continual` for each strategy in turn (same benchmark, budget, learner);
    ``callback(name, result)`` after each strategy (e.g. to save partial results)."""
    options = options or StrategyOptions()
    for name in strategies:  # fail on a budget that cannot fit before any work
        create_strategy(name, options).begin(benchmark)
    out = []
    for name in strategies:
        out.append(run_continual(benchmark, name, options, learner, progress=progress))
        if callback is not None:
            callback(name, out[-1])
    return out


# -------------------------------------------------------------------- reports
def format_table(results: Sequence[ContinualResult]) -> str:
    """A Markdown table: accuracy on seen classes after each task (%), final average
    accuracy, forgetting, and floats stored at the end against the budget."""
    if not results:
        return ""
    T = max(len(r.seen_accuracy) for r in results)
    head = ["strategy"] + [f"task {t + 1}" for t in range(T)] + ["final avg", "forgetting", "floats (budget)"]
    rows = []
    for r in results:
        accs = [f"{100 * a:.1f}" for a in r.seen_accuracy] + ["-"] * (T - len(r.seen_accuracy))
        budget = "unbounded" if r.budget_floats[-1] is None else f"{r.budget_floats[-1]:,}"
        rows.append([r.strategy, *accs, f"{100 * r.final_average_accuracy:.1f}",
                     f"{100 * r.forgetting:.1f}", f"{r.floats_stored[-1]:,} ({budget})"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def save_results(path: str | Path, results: Sequence[ContinualResult], **meta: Any) -> Path:
    """Write ``{**meta, "results": [...]}`` as JSON, atomically."""
    return atomic_write_json(path, {**meta, "results": [r.to_dict() for r in results]})


def plot_results(results: Sequence[ContinualResult], path: str | Path, title: str | None = None) -> Path:
    """PNG of accuracy on seen classes against tasks, one line per strategy (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for r in results:
        xs = list(range(1, len(r.seen_accuracy) + 1))
        ax.plot(xs, [100 * a for a in r.seen_accuracy], marker="o", label=r.strategy)
    T = max((len(r.seen_accuracy) for r in results), default=1)
    ax.set_xticks(list(range(1, T + 1)))
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_ylim(0, 100)
    return _finish_plot(fig, ax, path, title)


def _finish_plot(fig, ax, path: str | Path, title: str | None) -> Path:
    """Grid, legend and title of a continual plot, then the PNG written atomically."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def plot_storage(results: Sequence[ContinualResult], path: str | Path, title: str | None = None) -> Path:
    """PNG of the floats stored after each task against the classes seen then, one line
    per strategy, with each run's budget dashed (Agg canvas; unbounded ``joint`` is left
    out: it would dwarf the rest)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    budgets = {}
    for r in results:
        if r.budget_floats and r.budget_floats[-1] is None:
            continue
        ax.plot(r.classes_seen, r.floats_stored, marker="o", label=r.strategy)
        budgets[(r.budget_mode, tuple(r.budget_floats))] = r.classes_seen
    for (mode, b), xs in budgets.items():
        ax.plot(xs, list(b), linestyle="--", color="grey", linewidth=1, label=f"budget ({mode})")
    ax.set_xlabel("classes seen")
    ax.set_ylabel("floats stored")
    ax.set_ylim(bottom=0)
    return _finish_plot(fig, ax, path, title)
