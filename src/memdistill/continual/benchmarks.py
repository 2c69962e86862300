"""Class-incremental benchmarks: a fixed, seeded sequence of tasks and a task stream that
takes each task's real data away once the next task starts.

>>> bench = create_benchmark("split-mnist", root="/data")       # 5 tasks of 2 classes
>>> stream = bench.stream()
>>> for task in stream:
...     data = task.train          # readable only while ``task`` is current
...     ...
>>> task.train                     # after the loop moved on: TaskDataRevokedError

Class ids are positions in the benchmark's class order: task ``t`` of a split benchmark
owns the ids ``[t*k, (t+1)*k)``, so "the classes seen so far" is always ``range(n)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from .._registry import Registry
from ..data import ImageDataset, is_user_dataset, load_dataset, locate_dataset, train_val_split
from ..data._registry import DATASETS
from ..errors import ConfigError, DataNotFoundError, TaskDataRevokedError

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Task",
    "TaskStream",
    "create_benchmark",
    "list_benchmarks",
    "parse_benchmark",
    "MANY_DATASETS",
]

BENCHMARKS: Registry[Callable[..., "Benchmark"]] = Registry("benchmark")

# The order of the full MANY sequence; a partial MANY uses a subsequence of it.
MANY_DATASETS = ("mnist", "fashion-mnist", "cifar10", "svhn", "cifar100")


@dataclass(frozen=True)
class Benchmark:
    """A class-incremental benchmark, fully loaded.

    Attributes:
        name: registry name (``"split-mnist"``, ``"many"``...).
        train, test: the whole benchmark's splits, uint8 images ``(N, C, H, W)``, labels
            relabelled to positions in the class order (``0 .. num_classes-1``).
        tasks: the class ids of each task, in order; disjoint, covering all classes.
        class_names: ``class_names[i]`` is the original name of class id ``i``.
        description: one line (datasets, seed, class order) for reports.
    """

    name: str
    train: ImageDataset
    test: ImageDataset
    tasks: tuple[tuple[int, ...], ...]
    class_names: tuple[str, ...]
    description: str = ""
    class_order: tuple[int, ...] = ()  # original class of each id (split benchmarks)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    def classes_seen(self, task_index: int) -> int:
        """Number of classes of tasks ``0 .. task_index``; their ids are ``range(n)``."""
        return sum(len(t) for t in self.tasks[: task_index + 1])

    def task_split(self, split: ImageDataset, task_index: int) -> ImageDataset:
        """The images of ``split`` whose class belongs to task ``task_index`` (a copy)."""
        classes = torch.tensor(self.tasks[task_index])
        idx = torch.nonzero(torch.isin(split.labels, classes)).flatten()
        return split.subset(idx)

    def test_seen(self, task_index: int, limit_per_class: int | None = None) -> ImageDataset:
        """Test images of every class seen up to and including ``task_index``.

        ``limit_per_class`` keeps the first that many test images of each class (a fixed,
        deterministic subsample for quick runs)."""
        n = self.classes_seen(task_index)
        picks = []
        for c in range(n):
            idx = self.test.indices_of_class(c)
            picks.append(idx if limit_per_class is None else idx[:limit_per_class])
        return self.test.subset(torch.sort(torch.cat(picks)).values)

    def stream(self) -> "TaskStream":
        """A fresh one-pass stream over the tasks (see :class:`TaskStream`)."""
        return TaskStream(self)

    def validation(self, fraction: float = 0.1, seed: int = 0) -> "Benchmark":
        """The same benchmark for choosing settings: ``fraction`` of each class's training
        images (a stratified split drawn with ``seed``) become the test split, the rest
        the training split; the real test split is not part of it."""
        train, val = train_val_split(self.train, fraction, seed=seed)
        return dataclasses.replace(self, name=f"{self.name} (validation)", train=train, test=val,
                                   description=f"{self.description}; validation: {fraction:g} of the training "
                                               f"images, seed {seed}")


class Task:
    """One task of a stream: its index, its class ids and (while current) its data."""

    def __init__(self, stream: "TaskStream", index: int, classes: tuple[int, ...]) -> None:
        self._stream = stream
        self.index = index
        self.classes = classes

    @property
    def train(self) -> ImageDataset:
        """The real training images of this task, ``uint8 (N, C, H, W)``.

        Raises:
            TaskDataRevokedError: the stream has moved past this task.
        """
        return self._stream._data_of(self.index)

    def __repr__(self) -> str:
        return f"Task(index={self.index}, classes={list(self.classes)})"


class TaskStream:
    """Hands out tasks one at a time; a task's data is readable only while it is current.

    Moving to the next task revokes the previous one: reading ``task.train`` of a past
    task raises :class:`TaskDataRevokedError`, and the tensors of the dataset handed out
    for it are released (emptied in place), so a reference kept by mistake holds no
    images either. A strategy that keeps data (``joint``, the upper bound, or exemplars)
    must copy what it keeps while the task is current; that copy is what its storage
    budget counts.
    """

    def __init__(self, benchmark: Benchmark) -> None:
        self.benchmark = benchmark
        self._current = -1
        self._handed_out: ImageDataset | None = None
        self._started = False

    @property
    def current(self) -> int:
        """Index of the current task (``-1`` before the first)."""
        return self._current

    def __iter__(self) -> Iterator[Task]:
        if self._started:
            raise ConfigError("a task stream can be iterated once; call benchmark.stream() for a new one")
        self._started = True
        for i, classes in enumerate(self.benchmark.tasks):
            self._advance(i)
            yield Task(self, i, classes)
        self._advance(len(self.benchmark.tasks))

    def _advance(self, index: int) -> None:
        old = self._handed_out
        self._handed_out = None
        self._current = index
        if old is not None:
            for t in (old.images, old.labels, *old.extra_labels.values()):
                t.set_(torch.empty(0, dtype=t.dtype).untyped_storage())

    def _data_of(self, index: int) -> ImageDataset:
        if index != self._current:
            raise TaskDataRevokedError(
                f"the real data of task {index} of {self.benchmark.name!r} is no longer available: "
                f"the stream is at task {self._current} and past tasks keep only their memory. "
                f"Keep what a strategy needs (a memory or exemplars) while the task is current."
            )
        if self._handed_out is None:
            self._handed_out = self.benchmark.task_split(self.benchmark.train, index)
        return self._handed_out


# ---------------------------------------------------------------------- building
def _class_order(num_classes: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(num_classes, generator=g).tolist()


def _relabel(ds: ImageDataset, order: Sequence[int], names: tuple[str, ...]) -> ImageDataset:
    """Labels become positions in ``order`` (``order[i]`` is the original class of id i)."""
    lookup = torch.empty(len(order), dtype=torch.long)
    lookup[torch.tensor(list(order))] = torch.arange(len(order))
    return dataclasses.replace(ds, labels=lookup[ds.labels], classes=names, extra_labels={})


def _require_data(benchmark: str, datasets: Sequence[str], root: str | Path | None) -> None:
    """Raise one :class:`DataNotFoundError` naming every missing file of ``datasets``."""
    problems = []
    for name in datasets:
        status = locate_dataset(name, root=root)
        if not status.found:
            info = DATASETS.get(name).info()
            where = ", ".join(str(p) for p in status.searched)
            problems.append(
                f"  {name}: {status.problem}; needs {', '.join(info.files)} (searched {where})"
            )
    if problems:
        raise DataNotFoundError(
            f"benchmark {benchmark!r} needs data that is not available:\n" + "\n".join(problems)
            + "\nTo fix: fetch it with load_dataset(name, download=True) (or `memdistill datasets` to "
            "see what is found where), copy the files under the data root, or point root= / "
            "$MEMDISTILL_DATA at the folder that holds them"
            + (". For MANY, ask for the datasets present explicitly, e.g. --benchmark "
               "many:mnist,fashion-mnist (allow_partial=True)." if benchmark == "many" else ".")
        )


def split_benchmark(
    dataset: str,
    num_tasks: int | None,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    name: str | None = None,
    load_options: Mapping[str, Any] | None = None,
) -> Benchmark:
    """Split ``dataset`` (a built-in name, or ``folder:PATH`` / ``npz:PATH``) into
    ``num_tasks`` tasks of equally many classes.

    The class order is ``torch.randperm(num_classes)`` under a generator seeded by
    ``seed``; task ``t`` gets the ids ``[t*k, (t+1)*k)`` of that order. ``num_tasks=None``
    (user data only): tasks of 2 classes, or of 1 for an odd number of classes.
    ``load_options`` go to :func:`~memdistill.data.load_dataset` (user data:
    ``skip_bad_images``, ``rebuild_manifest``, ``progress``).

    Raises:
        ConfigError: the classes do not divide into ``num_tasks`` equal tasks.
        DataNotFoundError: the dataset's files are missing (the message names them).
    """
    user = is_user_dataset(dataset)
    opts = dict(load_options or {}) if user else {}
    train = load_dataset(dataset, "train", root=root, **opts) if user else None
    num_classes = train.num_classes if train is not None else DATASETS.get(dataset).info().num_classes
    name = name or f"split-{dataset if train is None else train.name}"
    if num_tasks is None:
        num_tasks = num_classes // 2 if num_classes % 2 == 0 else num_classes
    if num_tasks < 1 or num_classes % num_tasks:
        divisors = [d for d in range(1, num_classes + 1) if num_classes % d == 0]
        raise ConfigError(
            f"{name}: {num_classes} classes cannot be split into {num_tasks} equal tasks; "
            f"valid numbers of tasks: {', '.join(map(str, divisors))}"
        )
    if train is None:
        _require_data(name, [dataset], root)
        train = load_dataset(dataset, "train", root=root)
    test = load_dataset(dataset, "test", root=root, **opts)
    order = _class_order(train.num_classes, seed)
    names = tuple(train.classes[c] for c in order)
    k = train.num_classes // num_tasks
    tasks = tuple(tuple(range(t * k, (t + 1) * k)) for t in range(num_tasks))
    return Benchmark(
        name=name,
        train=_relabel(train, order, names),
        test=_relabel(test, order, names),
        tasks=tasks,
        class_names=names,
        description=f"{train.name}, {num_tasks} tasks of {k} classes, class order seed {seed}: {order}",
        class_order=tuple(order),
    )


def _common_shape(shapes: Sequence[tuple[int, int, int]]) -> tuple[int, int, int]:
    """The smallest shape every dataset fits: most channels, largest side."""
    return (max(s[0] for s in shapes), max(max(s[1], s[2]) for s in shapes),
            max(max(s[1], s[2]) for s in shapes))


def _to_shape(images: torch.Tensor, shape: tuple[int, int, int], chunk: int = 4096) -> torch.Tensor:
    """uint8 ``(N, c, h, w)`` -> uint8 ``(N, C, H, W)``: bilinear resize, grey replicated."""
    c, h, w = shape
    if tuple(images.shape[1:]) == tuple(shape):
        return images
    if images.shape[1] not in (1, c):
        raise ConfigError(f"cannot bring {images.shape[1]}-channel images to {c} channels")
    out = torch.empty((images.shape[0], c, h, w), dtype=torch.uint8)
    for s in range(0, images.shape[0], chunk):
        x = images[s : s + chunk].float()
        if tuple(x.shape[2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        out[s : s + chunk] = x.round().clamp_(0, 255).to(torch.uint8).expand(-1, c, -1, -1)
    return out


def many_benchmark(
    datasets: Sequence[str] | None = None,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    allow_partial: bool = False,
    image_shape: tuple[int, int, int] | None = None,
) -> Benchmark:
    """MANY: whole datasets as tasks, classes kept apart, images in one common shape.

    Args:
        datasets: the sequence, a subsequence of :data:`MANY_DATASETS` in any order;
            ``None`` means all of them. Anything short of all five is a *partial* MANY
            and needs ``allow_partial=True``.
        image_shape: the common ``(C, H, W)``; default the smallest that fits every
            dataset of the sequence (``(3, 32, 32)`` for the full MANY, ``(1, 28, 28)`` for
            MNIST + Fashion-MNIST). Grey images are replicated to 3 channels when needed.
        seed: unused by the class order (each task keeps its dataset's order); recorded.

    Normalisation uses one per-channel mean/std computed over the training images of the
    whole sequence (a handful of floats, fixed before the first task).

    Raises:
        ConfigError: unknown/duplicate dataset, or a partial sequence without ``allow_partial``.
        DataNotFoundError: files of any dataset in the sequence are missing (all named).
    """
    full = datasets is None or tuple(datasets) == MANY_DATASETS
    names = list(MANY_DATASETS if datasets is None else datasets)
    for n in names:
        if n not in MANY_DATASETS:
            raise ConfigError(f"MANY: {n!r} is not one of its datasets; valid: {', '.join(MANY_DATASETS)}")
    if len(set(names)) != len(names) or not names:
        raise ConfigError(f"MANY: each dataset at most once and at least one, got {names}")
    if not full and not allow_partial:
        raise ConfigError(
            f"MANY over {', '.join(names)} only is a partial MANY (the full sequence is "
            f"{', '.join(MANY_DATASETS)}); ask for it explicitly with allow_partial=True "
            f"(--benchmark many:{','.join(names)} on the command line)"
        )
    _require_data("many", names, root)
    shape = image_shape or _common_shape([DATASETS.get(n).info().image_shape for n in names])
    trains, tests, tasks, class_names, offset = [], [], [], [], 0
    for n in names:
        tr, te = load_dataset(n, "train", root=root), load_dataset(n, "test", root=root)
        trains.append((_to_shape(tr.images, shape), tr.labels + offset))
        tests.append((_to_shape(te.images, shape), te.labels + offset))
        tasks.append(tuple(range(offset, offset + tr.num_classes)))
        class_names.extend(f"{n}/{c}" for c in tr.classes)
        offset += tr.num_classes
    x_train = torch.cat([x for x, _ in trains])
    mean = x_train.float().div(255).mean(dim=(0, 2, 3))
    std = x_train.float().div(255).std(dim=(0, 2, 3))
    stats = dict(classes=tuple(class_names), mean=tuple(mean.tolist()), std=tuple(std.tolist()))
    train = ImageDataset("many", "train", x_train, torch.cat([y for _, y in trains]), **stats)
    test = ImageDataset("many", "test", torch.cat([x for x, _ in tests]), torch.cat([y for _, y in tests]), **stats)
    return Benchmark(
        name="many" if full else f"many:{','.join(names)}",
        train=train,
        test=test,
        tasks=tuple(tasks),
        class_names=tuple(class_names),
        description=f"MANY over {', '.join(names)}{'' if full else ' (partial)'}, images {shape}",
    )


def _split(dataset: str, default_tasks: int):
    def factory(*, root=None, seed: int = 0, num_tasks: int | None = None, **kw) -> Benchmark:
        _no_extra(f"split-{dataset}", kw)
        return split_benchmark(dataset, num_tasks or default_tasks, root=root, seed=seed)

    factory.__doc__ = f"Split {dataset}: {default_tasks} tasks by default (``num_tasks=`` to change)."
    return factory


def _no_extra(name: str, kw: dict[str, Any]) -> None:
    if kw:
        raise ConfigError(f"benchmark {name!r} takes no option(s) {', '.join(sorted(kw))}; "
                          f"valid options: root, seed, num_tasks")


for _ds, _n in (("mnist", 5), ("fashion-mnist", 5), ("cifar10", 5), ("cifar100", 10), ("tiny-imagenet", 10)):
    BENCHMARKS.register(f"split-{_ds}")(_split(_ds, _n))


@BENCHMARKS.register("many")
def _many(*, root=None, seed: int = 0, datasets: Sequence[str] | None = None,
          allow_partial: bool = False, image_shape=None, num_tasks: int | None = None) -> Benchmark:
    if num_tasks is not None:
        raise ConfigError("MANY has one task per dataset; choose the datasets (many:mnist,...) "
                          "instead of a number of tasks")
    return many_benchmark(datasets, root=root, seed=seed, allow_partial=allow_partial,
                          image_shape=image_shape)


def list_benchmarks() -> list[str]:
    return BENCHMARKS.names()


def parse_benchmark(spec: str) -> tuple[str, dict[str, Any]]:
    """``"split-cifar100"`` -> ``("split-cifar100", {})``; ``"many:mnist,fashion-mnist"``
    -> ``("many", {"datasets": [...], "allow_partial": True})`` (naming the datasets is
    the explicit request for a partial MANY)."""
    name, _, rest = spec.partition(":")
    BENCHMARKS.get(name)
    if not rest:
        return name.lower(), {}
    if name.lower() != "many":
        raise ConfigError(f"only MANY takes a dataset list after ':', got {spec!r}; "
                          f"e.g. many:mnist,fashion-mnist")
    return "many", {"datasets": [d.strip().lower() for d in rest.split(",") if d.strip()],
                    "allow_partial": True}


def create_benchmark(name: str, **options: Any) -> Benchmark:
    """Build a benchmark by registry name (see :func:`list_benchmarks`).

    Args:
        name: ``split-mnist``, ``split-fashion-mnist``, ``split-cifar10``,
            ``split-cifar100`` (``num_tasks`` 5, 10 or 20), ``split-tiny-imagenet`` or
            ``many``; ``"many:mnist,fashion-mnist"`` is accepted as a partial MANY;
            ``split-folder:PATH`` / ``split-npz:PATH`` split your own data's classes.
        options: ``root``, ``seed``, ``num_tasks``; ``split-folder:``/``split-npz:``:
            ``load_options`` (see :func:`split_benchmark`); MANY: ``datasets``,
            ``allow_partial``, ``image_shape``.
    """
    if name.lower().startswith("split-") and is_user_dataset(name[len("split-"):]):
        kw = {k: v for k, v in options.items() if k in ("root", "seed", "load_options")}
        _no_extra(name, {k: v for k, v in options.items() if k not in kw and k != "num_tasks"})
        return split_benchmark(name[len("split-"):], options.get("num_tasks"), **kw)
    if ":" in name:
        name, extra = parse_benchmark(name)
        options = {**extra, **options}
    return BENCHMARKS.get(name)(**options)
