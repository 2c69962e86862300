"""Derived tasks: train a classifier for a new labelling of a memory's classes from the
memory alone, and compare it with real data.

A *task* maps the memory's classes to new classes:

- ``groups``: every new class is a group of original classes (MNIST odd/even,
  Fashion-MNIST tops/bottoms/footwear/bags, CIFAR-100 fine to coarse);
- ``subset``: a few original classes kept as they are (a 3-way classifier from a
  10-class memory); the others are dropped.

Task specs (:func:`parse_task`):

- named: ``odd-even``, ``lt5`` (digits ``< 5`` vs ``>= 5``), ``tops-bottoms-footwear-bags``
  (Fashion-MNIST; ``Dress`` counts as a top), ``coarse`` (the dataset's coarse labelling,
  CIFAR-100: 20 superclasses);
- ``groups:0,2,4,6,8/1,3,5,7,9``: groups separated by ``/``, members by ``,``; class names
  or indices; a group may be named ``name=0,2,4``;
- ``subset:0,1,2``: the listed classes.

The derived training set (:func:`derive_training_set`) is built *only by querying the
memory*: for every new class, the recalled examples of each member class (relabelled)
and, for groups of more than one class, the ``r`` examples recalled by the group query
(the normalised mixture of its members). No real image is read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ._container import FileFormat, TensorSpec, check_tensors, read_container, write_container
from .errors import ConfigError, IntegrityError
from .labels import label_space_of, reference_ipc
from .queries import group_query, resolve_class

__all__ = [
    "DerivedTask",
    "DerivedSet",
    "DeriveResult",
    "NAMED_TASKS",
    "parse_task",
    "derive_training_set",
    "relabel_dataset",
    "run_derived_task",
    "save_derived",
    "load_derived",
]

DERIVED_FORMAT = "memdistill-derived"
DERIVED_FILE = FileFormat(DERIVED_FORMAT, 1, "derived training set")

# named task -> groups of class names (None: from the dataset, see parse_task)
NAMED_TASKS: dict[str, Any] = {
    "odd-even": [("even", ["0", "2", "4", "6", "8"]), ("odd", ["1", "3", "5", "7", "9"])],
    "lt5": [("<5", ["0", "1", "2", "3", "4"]), (">=5", ["5", "6", "7", "8", "9"])],
    "tops-bottoms-footwear-bags": [
        ("tops", ["T-shirt/top", "Pullover", "Dress", "Coat", "Shirt"]),
        ("bottoms", ["Trouser"]),
        ("footwear", ["Sandal", "Sneaker", "Ankle boot"]),
        ("bags", ["Bag"]),
    ],
    "coarse": None,
}


@dataclass(frozen=True)
class DerivedTask:
    """A new labelling of some of the original classes.

    Attributes:
        spec: the text it was parsed from.
        kind: ``"groups"`` or ``"subset"``.
        names: the new class names (``M`` of them).
        members: for each new class, the original class indices it holds.
        num_original: ``C``, the number of original classes.
    """

    spec: str
    kind: str
    names: tuple[str, ...]
    members: tuple[tuple[int, ...], ...]
    num_original: int

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def mapping(self) -> torch.Tensor:
        """``(C,)`` new label of every original class, ``-1`` for classes left out."""
        out = torch.full((self.num_original,), -1, dtype=torch.long)
        for j, group in enumerate(self.members):
            out[list(group)] = j
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "names": list(self.names),
                "members": [list(m) for m in self.members], "num_original": self.num_original}


def parse_task(spec: str, class_names: Sequence[str], dataset=None) -> DerivedTask:
    """Parse a task spec against the original ``class_names``.

    Args:
        spec: see the module docstring.
        dataset: an :class:`~memdistill.ImageDataset` of these classes, needed only by
            ``coarse`` (its ``coarse`` labelling).

    Raises:
        ConfigError: unknown spec, unknown class, empty group, a class in two groups,
            fewer than two new classes.
    """
    names = [str(c) for c in class_names]
    text = spec.strip()
    if text in NAMED_TASKS:
        if text == "coarse":
            return _coarse_task(text, names, dataset)
        groups = NAMED_TASKS[text]
        missing = [m for _, ms in groups for m in ms if m not in names]
        if missing:
            raise ConfigError(f"task {text!r} needs the classes {missing}, which this memory does not have "
                              f"(its classes: {', '.join(names)}); use groups:... with its own classes")
        return _build(text, "groups", [(g, [names.index(m) for m in ms]) for g, ms in groups], names)
    kind, sep, body = text.partition(":")
    if not sep or kind not in ("groups", "subset"):
        raise ConfigError(f"unknown task {spec!r}; valid: {', '.join(NAMED_TASKS)}, "
                          "groups:A,B/C,D (e.g. groups:0,2,4,6,8/1,3,5,7,9) or subset:A,B,C")
    if kind == "subset":
        items = [m.strip() for m in body.split(",")]
        if not body.strip() or any(not m for m in items):
            raise ConfigError(f"task {spec!r}: empty class in the subset; list classes as subset:0,1,2")
        idx = [resolve_class(names, m) for m in items]
        return _build(text, "subset", [(names[i], [i]) for i in idx], names)
    groups = []
    for k, part in enumerate(body.split("/")):
        label, eq, members = part.partition("=")
        if not eq:
            label, members = "", part
        items = [m.strip() for m in members.split(",")] if members.strip() else []
        if not items or any(not m for m in items):
            raise ConfigError(f"task {spec!r}: group {k + 1} ({part!r}) is empty or has an empty member; "
                              "each group needs at least one class, e.g. groups:0,2,4/1,3,5")
        idx = [resolve_class(names, m) for m in items]
        groups.append((label.strip() or "+".join(names[i] for i in idx), idx))
    return _build(text, "groups", groups, names)


def _coarse_task(spec: str, names: list[str], dataset) -> DerivedTask:
    if dataset is None or "coarse" not in getattr(dataset, "extra_labels", {}):
        raise ConfigError("task 'coarse' needs a dataset with a coarse labelling (cifar100); "
                          "use groups:... to define the groups yourself")
    fine, coarse = dataset.labels, dataset.extra_labels["coarse"]
    coarse_names = dataset.extra_classes["coarse"]
    groups = [(str(n), sorted(int(c) for c in torch.unique(fine[coarse == s]))) for s, n in enumerate(coarse_names)]
    return _build(spec, "groups", [g for g in groups if g[1]], names)


def _build(spec: str, kind: str, groups: list[tuple[str, list[int]]], names: list[str]) -> DerivedTask:
    seen: dict[int, str] = {}
    for label, idx in groups:
        for i in idx:
            if i in seen:
                raise ConfigError(f"task {spec!r}: class {names[i]!r} is in two groups ({seen[i]!r} and {label!r}); "
                                  "each class may belong to one group only")
            seen[i] = label
    if len(groups) < 2:
        raise ConfigError(f"task {spec!r} has {len(groups)} new class; a classifier needs at least two")
    labels = [g for g, _ in groups]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"task {spec!r}: two groups have the same name; names: {labels}")
    return DerivedTask(spec, kind, tuple(labels), tuple(tuple(i) for _, i in groups), len(names))


@dataclass
class DerivedSet:
    """A training set derived from a memory: ``images`` ``(N, C, H, W)`` in the memory's
    normalised space and ``labels`` ``(N,)`` new-class indices."""

    images: torch.Tensor
    labels: torch.Tensor
    task: DerivedTask
    meta: dict[str, Any] = field(default_factory=dict)

    def training_set(self, device: torch.device | str = "cpu"):
        from .evaluate import TrainingSet

        return TrainingSet(self.images, self.labels, device=device)


def derive_training_set(mem_file, task: DerivedTask, group_queries: bool = True) -> DerivedSet:
    """Build the training set of ``task`` by querying ``mem_file`` only.

    For each new class ``j``: the ``r`` recalled examples of every member class,
    labelled ``j``; with ``group_queries`` and more than one member, also the ``r``
    examples recalled by the group query (normalised mixture of the members).
    """
    space = label_space_of(mem_file)
    if task.num_original != space.num_classes:
        raise ConfigError(f"the task is for {task.num_original} classes, the memory has {space.num_classes}")
    xs, ys = [], []
    for j, members in enumerate(task.members):
        queries = [space.table[c] for c in members]
        if group_queries and len(members) > 1:
            queries.append(group_query(mem_file, list(members)))
        x, _ = mem_file.recall(query=torch.stack(queries))
        xs.append(x)
        ys.append(torch.full((x.shape[0],), j, dtype=torch.long))
    meta = {"group_queries": bool(group_queries), "examples": int(sum(len(y) for y in ys))}
    return DerivedSet(torch.cat(xs).float(), torch.cat(ys), task, meta)


def relabel_dataset(dataset, task: DerivedTask):
    """The real ``dataset`` restricted to the task's classes and relabelled."""
    mapping = task.mapping()
    if dataset.num_classes != task.num_original:
        raise ConfigError(f"the task is for {task.num_original} classes, {dataset.name!r} has {dataset.num_classes}")
    new = mapping[dataset.labels]
    keep = torch.nonzero(new >= 0).flatten()
    sub = dataset.subset(keep)
    return dataclasses.replace(sub, labels=new[keep], classes=tuple(task.names))


def _equal_storage_subset(train, task: DerivedTask, floats: int, seed: int):
    """Random real images of the task's classes holding at most ``floats`` floats,
    spread evenly over the member classes (at least one per class)."""
    c, h, w = train.image_shape
    members = [i for m in task.members for i in m]
    total = max(len(members), floats // (c * h * w))
    per_class = max(1, total // len(members))
    g = torch.Generator().manual_seed(int(seed))
    picks = []
    for i in members:
        idx = train.indices_of_class(i)
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return train.subset(torch.cat(picks)), per_class


@dataclass
class DeriveResult:
    """Accuracies (in ``[0, 1]``) on the relabelled real test split."""

    task: DerivedTask
    memory: dict[str, Any]
    random_real: dict[str, Any] | None
    all_real: dict[str, Any] | None
    chance: float

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task.as_dict(), "memory": self.memory, "random_real": self.random_real,
                "all_real": self.all_real, "chance": self.chance}


def run_derived_task(
    mem_file,
    task: DerivedTask,
    test,
    config=None,
    *,
    train=None,
    all_real_config=None,
    runs: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    derived: DerivedSet | None = None,
) -> DeriveResult:
    """Train on the memory-derived set (and, given ``train``, on a random real subset of
    the memory's storage and on all real data of the task) and test on ``test``
    relabelled the same way.

    Args:
        mem_file: the :class:`~memdistill.MemoryFile`.
        test: the real test split of the memory's dataset.
        config: :class:`~memdistill.TrainConfig` of the classifiers (memory-derived and
            random real); ``all_real_config`` for all real data (default: ``config``).
        train: the real training split; ``None`` skips both real references.
    """
    from .evaluate import TrainConfig, TrainingSet, evaluate

    config = config or TrainConfig()
    derived = derived or derive_training_set(mem_file, task)
    zca = mem_file.zca
    test_t = relabel_dataset(test.with_zca(zca), task)
    counts = torch.bincount(test_t.labels, minlength=task.num_classes).float()
    chance = float(counts.max() / counts.sum())

    def summary(res, extra):
        return {"mean": res.mean, "std": res.std, "std_ddof": 1, "accuracies": res.accuracies,
                "examples": res.num_train_examples,
                "seconds": res.wall_seconds, "epochs": res.config["epochs"], **extra}

    mem_res = evaluate(TrainingSet(derived.images, derived.labels, device=device), test_t, config, runs=runs,
                       seed=seed, device=device)
    floats = mem_file.memory.floats_stored()
    out = DeriveResult(task, summary(mem_res, {"floats_stored": floats}), None, None, chance)
    if train is not None:
        train_t = train.with_zca(zca)
        c, h, w = train_t.image_shape  # the run's budget (see labels.reference_ipc), not the memory's floats
        budget = reference_ipc(mem_file) * c * h * w * label_space_of(mem_file).num_classes
        sub, per_class = _equal_storage_subset(train_t, task, budget, seed)
        sub_t = relabel_dataset(sub, task)
        ref = evaluate(sub_t, test_t, config, runs=runs, seed=seed, device=device)
        out.random_real = summary(ref, {"per_original_class": per_class, "floats_stored": len(sub_t) * c * h * w})
        full = evaluate(relabel_dataset(train_t, task), test_t, all_real_config or config, runs=runs, seed=seed,
                        device=device)
        out.all_real = summary(full, {"floats_stored": full.num_train_examples * c * h * w})
    return out


# ---------------------------------------------------------------------- the file
def save_derived(path: str | Path, derived: DerivedSet, mem_file) -> Path:
    """Write a derived training set as one ``.safetensors`` file, atomically.

    Tensors ``images`` ``(N, C, H, W)`` float32 (the memory's normalised space) and
    ``labels`` ``(N,)`` int64, in the container of the memory file (format
    ``memdistill-derived``, library version, date; see :mod:`memdistill._container`);
    the JSON document holds the task, the new class names, the source memory's dataset,
    mean/std and whether it was ZCA-whitened (pixels: ``x * std + mean`` after undoing
    the ZCA of the source memory).

    Raises:
        ConfigError: ``path`` is not a ``.safetensors`` file, the images are not
            ``(N, C, H, W)`` with one label each, or they hold NaN/Inf (nothing written).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"the derived training set is written as .safetensors, got {path}")
    x, y = derived.images, derived.labels
    if x.ndim != 4 or tuple(y.shape) != (x.shape[0],):
        raise ConfigError(f"a derived set needs images (N, C, H, W) and labels (N,), got {tuple(x.shape)} and "
                          f"{tuple(y.shape)}")
    meta = {"task": derived.task.as_dict(), "classes": list(derived.task.names),
            "source": str(mem_file.path) if mem_file.path else None, "dataset": mem_file.dataset,
            "mean": list(mem_file.mean), "std": list(mem_file.std), "zca": mem_file.zca is not None,
            **derived.meta}
    return write_container(path, {"images": x.float(), "labels": y.long()}, meta, DERIVED_FILE)


def load_derived(path: str | Path) -> DerivedSet:
    """Read a file written by :func:`save_derived` (files from before the shared
    container, without ``library_version`` and ``created``, read the same).

    Raises:
        ConfigError: the file does not exist.
        IntegrityError: not a derived training set, a newer format, an invalid task,
            tensors of the wrong dtype or shape, NaN/Inf images, or labels out of range.
    """
    stored = read_container(path, DERIVED_FILE)
    path, meta = stored.path, stored.meta
    task = _task_from_meta(meta.get("task"), path)
    tensors = stored.tensors()
    check_tensors(path, tensors, {"images": TensorSpec(torch.float32, role="images"),
                                  "labels": TensorSpec(torch.int64, role="labels")})
    x, y = tensors["images"], tensors["labels"]
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise IntegrityError(f"{path}: images {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= task.num_classes):
        raise IntegrityError(f"{path}: labels outside 0..{task.num_classes - 1}")
    return DerivedSet(x, y, task, {k: v for k, v in meta.items() if k not in ("task",)})


def _task_from_meta(t: Any, path: Path) -> DerivedTask:
    try:
        task = DerivedTask(str(t["spec"]), str(t["kind"]), tuple(str(n) for n in t["names"]),
                           tuple(tuple(int(i) for i in m) for m in t["members"]), int(t["num_original"]))
    except (TypeError, KeyError, ValueError):
        raise IntegrityError(f"{path}: invalid memdistill metadata: the task is malformed") from None
    if len(task.members) != task.num_classes or any(not 0 <= i < task.num_original for m in task.members for i in m):
        raise IntegrityError(f"{path}: invalid memdistill metadata: the task's groups do not fit its classes")
    return task
