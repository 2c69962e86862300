"""Retrain-and-test: the evaluation protocol of the field.

Train ``runs`` freshly initialised networks on a given set of images (hard or soft
labels), test each on the real test split, report the mean and sample standard deviation
of accuracy, per-class accuracy and wall time. Defaults are the reference protocol of METHOD.md: SGD lr 0.01,
momentum 0.9, batch 640, 300 epochs, no schedule.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .._progress import progress_bar
from ..augment import create_augmentation
from ..config import TrainOptions
from ..data import ImageDataset
from ..errors import ConfigError
from ..models import create_model

if TYPE_CHECKING:  # pragma: no cover
    from ..distributed import DistContext

__all__ = [
    "TrainConfig",
    "EvaluationResult",
    "TrainingSet",
    "train_network",
    "fit_network",
    "test_network",
    "evaluate",
    "run_seeds",
    "sample_std",
    "format_accuracy",
    "SCHEDULES",
    "converged",
]


def sample_std(values: Any) -> float:
    """The sample standard deviation of ``values`` (ddof = 1, the unbiased variance's root).

    The spread of one value is undefined; it is reported as ``0.0`` (so JSON stays valid)
    and shown as no spread at all by :func:`format_accuracy`.
    """
    values = np.asarray(values, dtype=np.float64)
    return float(np.std(values, ddof=1)) if values.size >= 2 else 0.0


def format_accuracy(mean: float, std: float, runs: int, pm: str = "±") -> str:
    """``"81.23 ± 1.01"`` (percent; the spread a sample std) or ``"81.23"`` for one run."""
    if runs < 2:
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} {pm} {100 * std:.2f}"


SCHEDULES = ("fixed", "converge")
LR_SCHEDULES = ("constant", "step", "cosine")


def epoch_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of epoch ``epoch`` (from 0) of ``epochs`` under ``schedule``:
    ``constant``; ``step``, divided by 10 from epoch ``epochs // 2`` on (the evaluation
    protocol of DC, DSA and MTT); ``cosine``, from ``lr`` towards 0 over the epochs."""
    if schedule == "constant":
        return lr
    if schedule == "step":
        return lr * 0.1 if epoch >= epochs // 2 else lr
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    raise ConfigError(f"lr_schedule={schedule!r} is invalid; valid: {', '.join(map(repr, LR_SCHEDULES))}")


def converged(losses: list[float], window: int = 10, tol: float = 0.01, target: float = 0.1,
              floor: float = 0.0) -> bool:
    """The ``converge`` schedule's stopping rule, on the mean training loss of each epoch
    so far (the batches as trained; no extra passes).

    ``floor`` is the lowest loss the labels allow (their mean entropy: 0 for one-hot
    labels), so ``loss - floor`` is the divergence from the labels. With ``w = window``
    and ``m`` the mean of ``loss - floor`` over the last ``w`` epochs, training has
    converged once

    - ``m < target`` (default 0.1 nats: the network puts on average about 90% of its
      probability where the labels do; it fits its examples), or
    - at least ``2 w`` epochs ran and ``m`` is less than ``tol`` (relative) below the
      same mean over the ``w`` epochs before (a plateau, for labels it cannot fit).
    """
    if len(losses) < window:
        return False
    last = sum(losses[-window:]) / window - floor
    if last < target:
        return True
    if len(losses) < 2 * window:
        return False
    before = sum(losses[-2 * window:-window]) / window - floor
    return last > (1 - tol) * before


@dataclass
class TrainConfig:
    """How each evaluation network is built and trained (reference defaults): the
    resolved protocol :func:`train_network` follows. :meth:`from_options` builds it from
    the user-facing :class:`~memdistill.config.TrainOptions` (``EvalConfig``, ...).

    ``schedule``: ``"fixed"`` (the reference) trains exactly ``epochs`` epochs;
    ``"converge"`` stops at the end of the first epoch where :func:`converged` holds
    for the per-epoch training losses (``converge_window`` epochs, relative tolerance
    ``converge_tol``, target ``converge_loss`` nats above the labels' entropy), and after
    ``epochs`` epochs at the latest: the schedule for a few hundred recalled examples,
    where an epoch is one or two optimiser steps.
    """

    arch: str = "convnet"
    arch_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 640
    augment: str = "none"
    test_batch_size: int = 2000
    schedule: str = "fixed"
    lr_schedule: str = "constant"
    converge_window: int = 10
    converge_tol: float = 0.01
    converge_loss: float = 0.1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "test_batch_size", "converge_window"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r} is invalid; valid: {', '.join(map(repr, SCHEDULES))} "
                              "(fixed: train `epochs` epochs; converge: stop once the training loss plateaus, "
                              "at most `epochs` epochs)")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule={self.lr_schedule!r} is invalid; valid: "
                              f"{', '.join(map(repr, LR_SCHEDULES))} (constant: lr throughout; step: lr / 10 "
                              "from half the epochs on, as DC/DSA/MTT evaluate; cosine: decayed to 0)")
        if not 0 < self.converge_tol < 1:
            raise ConfigError(f"converge_tol must be in (0, 1), got {self.converge_tol}")
        if not self.converge_loss > 0:
            raise ConfigError(f"converge_loss must be > 0 (nats), got {self.converge_loss}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.arch_options.get("norm") == "batch":
            # networks keep no running statistics: a batch-norm network would be tested with
            # each test batch's own statistics, so its accuracy would depend on the batching
            raise ConfigError(f"evaluation networks cannot use norm='batch' ({self.arch}): they keep no "
                              "running statistics, so test accuracy would depend on how the test set is "
                              "batched; use norm='instance' (the reference), 'group', 'layer' or 'none'")

    @classmethod
    def from_options(cls, options: TrainOptions) -> "TrainConfig":
        """The protocol of ``options``: its fields that ``TrainConfig`` has too (``arch``,
        ``lr``, ``batch_size``, and ``epochs``, ``augment``, ``momentum`` where it has
        them), its :meth:`~memdistill.config.TrainOptions.arch_options`, and the
        reference defaults for the rest."""
        mine = {f.name for f in dataclasses.fields(options)}
        shared = {f.name: getattr(options, f.name) for f in dataclasses.fields(cls) if f.name in mine}
        return cls(**shared, arch_options=options.arch_options())


@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate`.

    ``accuracies`` holds one test accuracy in ``[0, 1]`` per run; ``per_class`` is
    ``runs x num_classes``; times are seconds; ``epochs_run`` holds the epochs each run
    trained (``epochs`` under the fixed schedule, fewer where ``converge`` stopped early). ``std`` is the *sample* standard deviation
    of ``accuracies`` (ddof = 1; ``0.0`` for a single run, whose spread is undefined);
    :meth:`to_dict` records ``std_ddof: 1`` beside it.
    """

    accuracies: list[float]
    per_class: list[list[float]]
    train_seconds: list[float]
    wall_seconds: float
    num_train_examples: int
    num_test_examples: int
    config: dict[str, Any]
    epochs_run: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return sample_std(self.accuracies)

    def summary(self, pm: str = "±") -> str:
        """Mean ± sample std in percent (``"81.23 ± 1.01"``; the mean alone for one run)."""
        return format_accuracy(self.mean, self.std, len(self.accuracies), pm)

    @property
    def per_class_mean(self) -> list[float]:
        return [float(v) for v in np.mean(np.asarray(self.per_class), axis=0)]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(mean=self.mean, std=self.std, std_ddof=1, per_class_mean=self.per_class_mean)
        return d


class TrainingSet:
    """Training examples for the evaluator: either a real :class:`ImageDataset`
    (uint8, normalised per batch) or float tensors already in normalised space
    (e.g. recalled from a memory) with hard ``(N,)`` or soft ``(N, L)`` labels."""

    def __init__(
        self,
        images: torch.Tensor | ImageDataset,
        labels: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        if isinstance(images, ImageDataset):
            if labels is not None:
                raise ConfigError("pass labels only with image tensors, not with a dataset")
            self._dataset: ImageDataset | None = dataclasses.replace(
                images, images=images.images.to(self.device), labels=images.labels.to(self.device)
            )
            self.labels = self._dataset.labels
            self.images = None
        else:
            if labels is None:
                raise ConfigError("image tensors need labels: (N,) class indices or (N, L) soft labels")
            if images.ndim != 4 or not images.is_floating_point():
                raise ConfigError(
                    f"images must be a float tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
                )
            if labels.shape[0] != images.shape[0] or labels.ndim not in (1, 2):
                raise ConfigError(
                    f"labels must be (N,) or (N, L) with N = {images.shape[0]}, got {tuple(labels.shape)}"
                )
            if not torch.isfinite(images).all() or (labels.is_floating_point() and not torch.isfinite(labels).all()):
                raise ConfigError("training images or labels contain NaN or Inf")
            if labels.ndim == 2:
                _check_distributions(labels)
            self._dataset = None
            self.images = images.detach().to(self.device)
            self.labels = labels.detach().to(self.device)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> "TrainingSet":
        """This set with its tensors on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        if device == self.device:
            return self
        if self._dataset is not None:
            return TrainingSet(self._dataset, device=device)
        return TrainingSet(self.images, self.labels, device=device)

    @property
    def soft(self) -> bool:
        return self.labels.ndim == 2

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._dataset is not None:
            return self._dataset.batch(idx)
        return self.images[idx], self.labels[idx]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        src = self._dataset.images if self._dataset is not None else self.images
        return tuple(int(s) for s in src.shape[1:])  # type: ignore[return-value]


def _check_distributions(labels: torch.Tensor, tol: float = 1e-4) -> None:
    """Soft ``(N, L)`` labels must be distributions (entries >= 0, rows summing to 1):
    the soft cross-entropy ``-sum_l y_l log p_l`` is then >= 0, bounded below."""
    if not labels.is_floating_point():
        raise ConfigError(f"soft labels (N, L) must be floating point, got {labels.dtype}")
    low, sums = float(labels.min()) if labels.numel() else 0.0, labels.double().sum(1)
    off = float((sums - 1).abs().max()) if sums.numel() else 0.0
    if low < -tol or off > tol:
        raise ConfigError(
            f"soft labels (N, L) must be distributions over the classes (entries >= 0, each row summing to 1); "
            f"got a smallest entry of {low:.4g} and row sums up to {off:.3g} away from 1. Recall them from a "
            f"memory (its learned labels are softmax distributions) or pass (N,) class indices"
        )


def _label_entropy(labels: torch.Tensor) -> float:
    """Mean entropy (nats) of soft labels ``(N, L)``, the least the soft loss can reach; 0
    for class indices."""
    if labels.ndim != 2:
        return 0.0
    p = labels.double().clamp_min(0)
    return float(-(p * p.clamp_min(1e-300).log()).sum(1).mean())


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.ndim == 2:  # soft labels
        return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    return F.cross_entropy(logits, target)


def train_network(
    data: TrainingSet,
    num_classes: int,
    config: TrainConfig,
    generator: torch.Generator,
    progress: Callable[[int], None] | None = None,
    on_step: Callable[[int, torch.nn.Module], bool] | None = None,
) -> torch.nn.Module:
    """Train one freshly initialised network on ``data``; returns it in eval mode.

    All randomness (initial weights, batch order, augmentation) comes from
    ``generator``, so the same generator state gives the same network on CPU.
    ``progress`` is called with the number of finished optimiser steps.
    ``on_step(step, model)`` is called after every optimiser step (``step`` counts
    from 1); training stops early when it returns ``True``. It must leave ``model``
    in train mode (e.g. wrap a test in ``model.eval()`` ... ``model.train()``).
    ``config.schedule`` decides how many epochs run (see :class:`TrainConfig`).
    """
    return fit_network(data, num_classes, config, generator, progress, on_step)[0]


def fit_network(
    data: TrainingSet,
    num_classes: int,
    config: TrainConfig,
    generator: torch.Generator,
    progress: Callable[[int], None] | None = None,
    on_step: Callable[[int, torch.nn.Module], bool] | None = None,
) -> tuple[torch.nn.Module, list[float]]:
    """:func:`train_network`, also returning the mean training loss of every epoch run
    (its length is the number of epochs trained, the last one possibly cut short by
    ``on_step``)."""
    c, h, w = data.image_shape
    model = create_model(
        config.arch, c, num_classes, (h, w), generator=generator, device=data.device, **config.arch_options
    )
    aug = create_augmentation(config.augment)
    opt = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    n = len(data)
    steps_per_epoch = math.ceil(n / config.batch_size)
    model.train()
    done, stop, losses = 0, False, []
    floor = _label_entropy(data.labels) if config.schedule == "converge" else 0.0
    for epoch in range(config.epochs):
        for group in opt.param_groups:
            group["lr"] = epoch_lr(config.lr, config.lr_schedule, epoch, config.epochs)
        order = torch.randperm(n, generator=generator).to(data.device)
        total = torch.zeros((), device=data.device)
        for s in range(steps_per_epoch):
            idx = order[s * config.batch_size : (s + 1) * config.batch_size]
            x, y = data.get(idx)
            x = aug.apply(x, aug.sample(x.shape, generator))
            loss = _loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * idx.numel()
            done += 1
            if on_step is not None and on_step(done, model):
                stop = True
                break
        losses.append(float(total) / min(n, (s + 1) * config.batch_size))
        if progress is not None:
            progress(steps_per_epoch)
        if stop or (config.schedule == "converge" and converged(
                losses, config.converge_window, config.converge_tol, config.converge_loss, floor)):
            break
    model.eval()
    return model, losses


@torch.no_grad()
def test_network(
    model: torch.nn.Module, test: ImageDataset, batch_size: int = 2000, device: torch.device | str = "cpu"
) -> tuple[float, list[float]]:
    """Accuracy of ``model`` on ``test`` and accuracy per class (NaN for empty classes)."""
    correct = torch.zeros(test.num_classes, dtype=torch.long)
    total = test.class_counts()
    for start in range(0, len(test), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(test)))
        x, y = test.batch(idx, device=device)
        pred = model(x).argmax(1)
        correct += torch.bincount(y[pred == y].cpu(), minlength=test.num_classes)
    acc = float(correct.sum()) / max(len(test), 1)
    per_class = [float(c) / float(t) if t > 0 else float("nan") for c, t in zip(correct, total)]
    return acc, per_class


def run_seeds(seed: int, runs: int) -> list[int]:
    """Independent, reproducible seeds for ``runs`` runs derived from one ``seed``."""
    ss = np.random.SeedSequence(int(seed))
    return [int(s.generate_state(1, dtype=np.uint64)[0] % (2**63)) for s in ss.spawn(runs)]


def evaluate(
    train: TrainingSet | ImageDataset,
    test: ImageDataset,
    config: TrainConfig | TrainOptions | None = None,
    runs: int = 5,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    dist: "DistContext | None" = None,
) -> EvaluationResult:
    """Train ``runs`` fresh networks on ``train`` and test each on ``test``.

    Args:
        train: a real dataset (or subset) or a :class:`TrainingSet` of recalled images.
        test: the real split to test on (``test``, or ``val`` while choosing settings).
        config: network and training protocol (a :class:`TrainConfig`, or options such
            as ``DistillConfig.evaluation`` turned into one by :meth:`TrainConfig.from_options`);
            reference defaults when ``None``.
        runs: number of independently initialised networks.
        seed: the one seed every run's generator is derived from.
        progress: show a progress bar (steps over all runs, with ETA).
        dist: a multi-process group (:mod:`memdistill.distributed`): rank ``k`` trains
            runs ``k, k + world_size, ...`` and every rank gets all results, in run
            order, the same numbers as one process computes (on the same kind of device).
    """
    config = config or TrainConfig()
    if isinstance(config, TrainOptions):
        config = TrainConfig.from_options(config)
    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    data = train if isinstance(train, TrainingSet) else TrainingSet(train, device=device)
    if data.image_shape != test.image_shape:
        raise ConfigError(
            f"training images have shape {data.image_shape} but the test split {test.name!r} "
            f"has {test.image_shape}; evaluate against the dataset the images came from"
        )
    if data.soft and data.labels.shape[1] != test.num_classes:
        raise ConfigError(
            f"soft labels have {data.labels.shape[1]} columns but {test.name!r} has {test.num_classes} classes"
        )
    steps = math.ceil(len(data) / config.batch_size) * config.epochs
    mine = range(runs) if dist is None else dist.shard(runs)
    bar = progress_bar(steps * len(mine), desc="evaluate", unit="step", enabled=progress, leave=False)
    accs, per_class, times, epochs_run = [], [], [], []
    start = time.perf_counter()
    try:
        for r, s in enumerate(run_seeds(seed, runs)):
            if r not in mine:
                continue
            g = torch.Generator().manual_seed(s)
            t0 = time.perf_counter()
            model, losses = fit_network(data, test.num_classes, config, g, progress=bar.update)
            times.append(time.perf_counter() - t0)
            epochs_run.append(len(losses))
            acc, pc = test_network(model, test, config.test_batch_size, device=data.device)
            accs.append(acc)
            per_class.append(pc)
            bar.set_postfix(run=f"{r + 1}/{runs}", acc=f"{acc:.4f}")
    finally:
        bar.close()
    if dist is not None and dist.distributed:
        # every rank's runs, back in run order
        parts = dist.all_gather_object((list(mine), accs, per_class, times, epochs_run))
        fields = [[v for part in parts for v in part[i]] for i in range(5)]  # each field, over the ranks
        order = sorted(zip(*fields), key=lambda row: row[0])
        accs, per_class, times, epochs_run = ([o[i] for o in order] for i in (1, 2, 3, 4))
    return EvaluationResult(
        accuracies=accs,
        per_class=per_class,
        train_seconds=times,
        wall_seconds=time.perf_counter() - start,
        num_train_examples=len(data),
        num_test_examples=len(test),
        config={**dataclasses.asdict(config), "runs": runs, "seed": seed},
        epochs_run=epochs_run,
    )
