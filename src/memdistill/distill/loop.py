"""The outer distillation loop: :class:`Distiller`.

Each outer iteration: a freshly initialised network is trained for ``T`` inner steps on
examples recalled from the memory, its loss on a batch of real images is differentiated
with respect to the memory (:mod:`.step`), and the memory takes one optimiser step.
Everything the loop carries from one iteration to the next is one :class:`RunState`;
its snapshots are what rollbacks return to and what checkpoints hold
(:mod:`.checkpoint`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .._progress import progress_bar
from ..augment import create_augmentation
from ..config import DistillConfig, OuterConfig
from ..data import ImageDataset, fit_zca, train_val_split
from ..distributed import DistContext, single_process
from ..engine import check_precision, create_inner_optimizer
from ..errors import ConfigError
from ..evaluate import TrainingSet, evaluate
from ..labels import create_label_space
from ..memory import Memory
from ..models import supported_options
from .checkpoint import append_metrics, load_checkpoint, read_metrics, reset_metrics, save_checkpoint
from .pool import Member, ModelPool
from .regression import feature_network, regression_step
from .step import (StepInputs, StepResult, check_class_split, inner_model, inner_network, meta_step, outer_gradient,
                   real_chunk)
from .streams import sample_generator, stream

__all__ = ["Distiller", "DistillResult", "RunState"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
POOL_STREAM = 0x706F6F6C  # names the random streams of pool members' initialisations
REGRESSION_STREAM = 0x66727270  # names those of the feature-regression pool's networks


@dataclass
class DistillResult:
    memory: Memory
    iterations: int
    skipped: int
    rollbacks: int
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: dict[str, Any] | None = None
    start_eval: dict[str, Any] | None = None  # the starting point's, on the same split
    last_iterate: Memory | None = None  # with outer.average: the memory of the last update (memory is the average)

    @property
    def below_start(self) -> bool:
        """The last evaluation scored below the starting point's (the distillation did harm)."""
        return (self.start_eval is not None and self.last_eval is not None
                and self.last_eval["mean"] < self.start_eval["mean"])


def outer_optimizer(oc: OuterConfig, memory: Memory, lr: float) -> torch.optim.Optimizer:
    """The optimiser of ``memory``'s tensors (``outer.optimizer``): its content at ``lr``
    and, with learned labels, the label logits in a group of their own at
    ``outer.label_lr``. Each group keeps its own rate in ``base_lr``: the schedule scales
    it, a rollback halves it."""
    groups = [{"params": [memory.tensors[n] for n in memory.names if n != "label_logits"], "base_lr": lr}]
    if memory.learned_labels:
        groups.append({"params": [memory.tensors["label_logits"]], "base_lr": oc.label_lr})
    for group in groups:
        group["lr"] = group["base_lr"]
    if oc.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=oc.momentum)


@dataclass
class RunState:
    """Everything the outer loop carries from one iteration to the next.

    Attributes:
        memory: the memory being distilled (its tensors require grad).
        optimizer: the outer optimiser of ``memory``'s tensors (:func:`outer_optimizer`).
        iteration: outer iterations done.
        lr: the outer learning rate of the memory's content (halved by each rollback,
            as is the label logits' own rate).
        skipped: updates skipped for a non-finite meta-gradient.
        rollbacks: returns to the last snapshot after too many of those in a row.
        last_eval: the latest evaluation on the validation split.
        start_eval: the evaluation of the starting point (before the first outer step).
        pool: the model pool (``outer.pool_size > 0``), else ``None``.
        regression_pool: the networks of the feature-regression steps
            (``outer.regression_steps > 0``, :mod:`.regression`), else ``None``.
        failures_in_a_row: non-finite meta-gradients since the last finite one (not
            part of a snapshot).
        average: with ``outer.average > 0``, the moving average of ``memory``'s
            tensors (detached), else ``None``.
        averaged: updates taken into ``average``.
    """

    memory: Memory
    optimizer: torch.optim.Optimizer
    iteration: int = 0
    lr: float = 0.0
    skipped: int = 0
    rollbacks: int = 0
    last_eval: dict[str, Any] | None = None
    start_eval: dict[str, Any] | None = None
    pool: ModelPool | None = None
    regression_pool: ModelPool | None = None
    failures_in_a_row: int = 0
    average: dict[str, torch.Tensor] | None = None
    averaged: int = 0

    def snapshot(self) -> dict[str, Any]:
        """A detached copy of the state (the checkpoint payload)."""
        return {
            "iteration": self.iteration, "lr": self.lr, "skipped": self.skipped, "rollbacks": self.rollbacks,
            "last_eval": json.dumps(self.last_eval), "start_eval": json.dumps(self.start_eval),
            "memory": {k: v.detach().clone() for k, v in self.memory.tensors.items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "pool": None if self.pool is None else self.pool.state_dict(),
            "regression_pool": None if self.regression_pool is None else self.regression_pool.state_dict(),
            "average": None if self.average is None else {k: v.clone() for k, v in self.average.items()},
            "averaged": self.averaged,
        }

    def averaged_memory(self) -> Memory:
        """``memory`` with the moving average's tensors (``memory`` itself without one)."""
        if self.average is None:
            return self.memory
        out = copy.copy(self.memory)
        out.tensors = {k: v.clone() for k, v in self.average.items()}
        return out

    def update_average(self, decay: float) -> None:
        """Take the memory's current tensors into the moving average."""
        d = min(decay, (1 + self.averaged) / (10 + self.averaged))
        with torch.no_grad():
            for k, v in self.memory.tensors.items():
                self.average[k].mul_(d).add_(v.detach(), alpha=1 - d)
        self.averaged += 1

    def restore(self, snap: dict[str, Any], new_optimizer: Callable[..., torch.optim.Optimizer],
                counters: bool = True) -> None:
        """Return to ``snap`` (the memory tensors in place); ``counters=False`` keeps
        ``skipped`` and ``rollbacks`` as they are."""
        for k, v in snap["memory"].items():
            self.memory.tensors[k] = v.clone().requires_grad_()
        self.optimizer = new_optimizer(self.memory, snap["lr"])
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        self.iteration, self.lr, self.last_eval = snap["iteration"], snap["lr"], json.loads(snap["last_eval"])
        self.start_eval = json.loads(snap.get("start_eval", "null"))  # absent from older checkpoints
        if counters:
            self.skipped, self.rollbacks = snap["skipped"], snap["rollbacks"]
        device = self.memory.tensors[self.memory.names[0]].device
        if self.pool is not None:
            self.pool.load_state_dict(snap["pool"], device=device)
        if self.regression_pool is not None:
            self.regression_pool.load_state_dict(snap["regression_pool"], device=device)
        if self.average is not None:  # a checkpoint from before averaging: it starts at the memory
            saved = snap.get("average")
            self.average = ({k: v.detach().clone() for k, v in self.memory.tensors.items()} if saved is None
                            else {k: v.clone().to(device) for k, v in saved.items()})
            self.averaged = snap.get("averaged", 0) if saved is not None else 0


class Distiller:
    """Distill ``train`` into a memory following ``config``.

    Args:
        config: the resolved run configuration (validated here).
        train: the real training split; a validation split is carved from it for the
            evaluations during distillation (the test split is never read here).
        device: where everything runs.
        initial_memory: start from (a copy of) this memory instead of a new one; it must
            have the configured kind and fit ``train``'s image shape and classes (used by
            continual learning to start a task from the previous task's bases).
        dist: this process's place in a multi-process run (:mod:`.distributed`); each
            rank computes its share of the ``outer.meta_batch`` unrolls, the
            meta-gradients are summed over ranks, only rank 0 writes files. Default: one
            process.
    """

    def __init__(self, config: DistillConfig, train: ImageDataset, device: str | torch.device = "cpu",
                 initial_memory: Memory | None = None, dist: DistContext | None = None):
        self.config = config.validate()
        self.dist = dist or single_process()
        if initial_memory is not None and initial_memory.ragged:
            raise ConfigError("cannot distill from a ragged memory (classes with their own slot counts, the "
                              "'ragged' shared memory of a continual run): the outer loop recalls every slot of "
                              "every class; start from a memory with the same slots for every class")
        self.initial_memory = initial_memory
        self.device = torch.device(device)
        self.train, self.val = train_val_split(train, config.evaluation.val_fraction, seed=config.seed)
        if config.zca > 0:
            # fitted on the part used for distillation only, then applied to validation too
            zca = fit_zca(self.train, regularization=config.zca)
            self.train, self.val = self.train.with_zca(zca), self.val.with_zca(zca)
        ic = config.inner
        check_precision(ic.precision, self.device)  # before any work: refused where the device cannot run it
        self.label_space = create_label_space(config.memory.label_space, train.classes, dataset=train)
        if not self.label_space.is_onehot and (config.memory.learned_labels or ic.classes_per_step):
            raise ConfigError(f"memory.label_space={config.memory.label_space!r} cannot be combined with "
                              "memory.learned_labels or inner.classes_per_step; turn those off")
        self._inputs = StepInputs(
            config=config, train=self.train,
            real=place_real_data(self.train, self.device, config.data_on_device),
            class_index=[self.train.indices_of_class(c) for c in range(self.train.num_classes)],
            space=self.label_space,
            inner_optimizer=create_inner_optimizer(
                ic.optimizer, lr=ic.lr, **({"momentum": ic.momentum} if ic.optimizer == "sgd" else {})),
            augment=None if ic.augment == "none" else create_augmentation(ic.augment),
            arch_options=supported_options(ic.arch, width=ic.width, norm=ic.norm, depth=ic.depth or None,
                                           first_pad=None if ic.first_pad < 0 else ic.first_pad),
            device=self.device, dist=self.dist,
        )
        probe = inner_model(self._inputs, torch.Generator().manual_seed(0))  # its shapes only
        self._inputs = dataclasses.replace(
            self._inputs, real_chunk=real_chunk(config, probe, self.train.image_shape, self.device))
        if config.outer.pool_size:
            forward, _ = inner_network(self._inputs, torch.Generator().manual_seed(0))  # only its forward
            self._inputs = dataclasses.replace(self._inputs, pool_forward=forward)
        if config.outer.regression_steps:
            self._regression_forward = feature_network(self._inputs, torch.Generator().manual_seed(0))[0]
        self._split = bool(config.outer.split_classes) and self.dist.distributed
        if self._split:
            check_class_split(config, self.train, self.label_space, self._inputs.arch_options, self.dist.world_size)

    # ------------------------------------------------------------ building blocks
    def new_memory(self) -> Memory:
        """The memory the run starts from: a copy of ``initial_memory``, or a new one
        of the label space's rows (initialised as ``memory.init`` says), on the
        device, its tensors requiring grad."""
        mc = self.config.memory
        if self.initial_memory is not None:
            return self._copy_initial_memory()
        g = torch.Generator().manual_seed(int(self.config.seed))
        opts: dict[str, Any] = {"learned_labels": mc.learned_labels}
        if mc.learned_labels:
            opts["label_temperature"] = mc.label_temperature
        if mc.kind == "bases":
            opts.update(num_bases=mc.num_bases, downsample=mc.downsample)
        mem = self.label_space.new_memory(mc.kind, self.train, mc.budget_ipc, mc.init, g, **opts)
        mem.tensors = {k: v.to(self.device).requires_grad_() for k, v in mem.tensors.items()}
        return mem

    def _copy_initial_memory(self) -> Memory:
        mc, init = self.config.memory, self.initial_memory
        if (init.kind != mc.kind or tuple(init.image_shape) != self.train.image_shape
                or init.num_classes != self.train.num_classes):
            raise ConfigError(
                f"initial_memory is a {init.kind!r} memory of {init.num_classes} classes at "
                f"{tuple(init.image_shape)}; this run needs {mc.kind!r}, "
                f"{self.train.num_classes} classes at {self.train.image_shape}"
            )
        mem = copy.copy(init)
        mem.tensors = {k: v.detach().clone().to(self.device).requires_grad_() for k, v in init.tensors.items()}
        return mem

    def _outer_optimizer(self, memory: Memory, lr: float) -> torch.optim.Optimizer:
        return outer_optimizer(self.config.outer, memory, lr)

    def meta_step(self, memory: Memory, iteration: int, sample: int = 0, member: Member | None = None) -> StepResult:
        """Outer loss and meta-gradient of ``memory`` at ``iteration`` (pure in the memory
        and ``member``) for inner unroll ``sample`` of the iteration (its randomness:
        :func:`sample_generator`), from a fresh network or from pool ``member``."""
        g = sample_generator(self.config.seed, iteration, sample)
        return meta_step(self._inputs, memory, g, split=self._split, member=member)

    def outer_gradient(self, memory: Memory, iteration: int, members: list[Member] | None = None) -> StepResult:
        """The meta-gradient the outer step uses: the mean over ``outer.meta_batch``
        inner unrolls, summed over all ranks (each computes unrolls ``j`` with
        ``j mod world_size == rank``). Identical on every rank; with one unroll in one
        process it is :meth:`meta_step` itself. ``members``: the pool members the
        unrolls start from (see :func:`.step.outer_gradient`)."""
        return outer_gradient(self.meta_step, memory, iteration, self.config.outer.meta_batch, self.dist,
                              self._split, self.device, members=members)

    def new_pool(self) -> ModelPool | None:
        """An empty model pool as ``outer.pool_*`` say (``None`` without one)."""
        oc = self.config.outer
        return ModelPool(oc.pool_size, oc.pool_unroll, oc.pool_max_steps) if oc.pool_size else None

    def regression_step(self, memory: Memory, iteration: int, sample: int = 0,
                        member: Member | None = None) -> StepResult:
        """Feature-regression loss and gradient of ``memory`` at ``iteration`` on pool
        ``member`` (:mod:`.regression`; randomness: :func:`sample_generator`)."""
        if member is None:
            raise ValueError("a feature-regression step needs a member of the regression pool")
        g = sample_generator(self.config.seed, iteration, sample)
        return regression_step(self._inputs, memory, g, member, self._regression_forward)

    def new_regression_pool(self) -> ModelPool | None:
        """An empty pool of feature-regression networks (``None`` without
        ``outer.regression_steps``): each use trains a member one step."""
        oc = self.config.outer
        return ModelPool(oc.regression_pool, 1, oc.regression_max_steps) if oc.regression_steps else None

    def new_regression_member(self, index: int, generation: int):
        """As :meth:`new_member`, for the regression pool: from the stream
        ``(seed, REGRESSION_STREAM, index, generation)``."""
        return self.new_member(index, generation, REGRESSION_STREAM)

    def new_member(self, index: int, generation: int, name: int = POOL_STREAM):
        """The initial ``(params, opt_state)`` of pool member ``index`` in ``generation``:
        a fresh network drawn from its own stream ``(seed, name, index, generation)``."""
        init = tuple(p.detach() for p in inner_model(self._inputs, stream(self.config.seed, name, index,
                                                                          generation)).parameters())
        return init, tuple(self._inputs.inner_optimizer.init(init))

    def evaluate_memory(self, memory: Memory, split: ImageDataset | None = None) -> dict[str, Any]:
        ec = self.config.evaluation
        x, y = self.label_space.class_examples(memory)
        res = evaluate(TrainingSet(x, y, device=self.device), split or self.val, ec, runs=ec.runs,
                       seed=self.config.seed, device=self.device, dist=self.dist)
        return {"split": (split or self.val).split, "mean": res.mean, "std": res.std,
                "seconds": res.wall_seconds}

    def _scored(self, memory: Memory, iteration: int) -> dict[str, Any] | None:
        """:meth:`evaluate_memory`'s result (``None`` where a subclass evaluates nothing)
        with the outer iteration whose memory it scored."""
        result = self.evaluate_memory(memory)
        return None if result is None else {**result, "iteration": iteration}

    # ---------------------------------------------------------------- the loop
    def run(
        self,
        checkpoint: PathLike | None = None,
        metrics: PathLike | None = None,
        resume: bool = False,
        progress: bool = False,
        stop_after: int | None = None,
        time_limit: float | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> DistillResult:
        """Run the outer loop (in every rank of a multi-process run; rank 0 alone writes
        the checkpoint and metrics, shows progress and calls ``callback``).

        Args:
            checkpoint: path of the periodic checkpoint (written atomically).
            metrics: JSONL file, one record per outer iteration.
            resume: continue from ``checkpoint`` when it exists.
            stop_after: stop (after checkpointing) once this many iterations are done,
                as if interrupted; used to test resume.
            time_limit: stop (after checkpointing) at the end of the first iteration that
                ends more than this many seconds after the loop started (e.g. a
                scheduler's wall-time limit; ``--resume`` continues the run). The
                iteration count is then machine-dependent: for reproducible results,
                fix ``outer.iterations`` instead.
        """
        cfg = self.config
        main = self.dist.is_main  # only rank 0 writes files and shows progress
        if not main:
            metrics = None
        state = self._start(checkpoint if resume else None)
        if cfg.evaluation.at_start and state.iteration == 0 and state.start_eval is None:
            state.start_eval = self._scored(state.memory, 0)  # the reference every result is judged by
        history = self._open_metrics(metrics, resume, state.iteration)
        snapshot = state.snapshot()
        total = cfg.outer.iterations
        bar = progress_bar(total, desc="distill", unit="it", enabled=progress and main, initial=state.iteration)
        started = time.perf_counter()
        try:
            while state.iteration < total:
                record = self._outer_step(state, snapshot)
                if record is None:  # rolled back to the snapshot
                    continue
                history.append(record)
                if metrics:
                    append_metrics(metrics, record)
                if callback and main:
                    callback(record)
                loss, last_eval = record["loss"], state.last_eval
                bar.set_postfix(loss=f"{loss:.3f}", acc="-" if last_eval is None else f"{100 * last_eval['mean']:.1f}")
                bar.update(1)
                stop = self._should_stop(state.iteration, stop_after, time_limit, started)
                if state.iteration % cfg.checkpoint_every == 0 or state.iteration == total or stop:
                    snapshot = state.snapshot()
                    if checkpoint and main:
                        save_checkpoint(checkpoint, snapshot, cfg)
                if stop:
                    break
        finally:
            bar.close()
        for p in state.memory.parameters():
            p.requires_grad_(False)
        last = state.memory if state.average is not None else None
        return DistillResult(state.averaged_memory(), state.iteration, state.skipped, state.rollbacks, history,
                             state.last_eval, state.start_eval, last_iterate=last)

    def _start(self, checkpoint: PathLike | None) -> RunState:
        """A new memory and outer optimiser, continued from ``checkpoint`` when it
        exists (rank 0 reads it and hands its bytes to every rank: no shared disk needed)."""
        memory = self.new_memory()
        lr = self.config.outer.lr
        state = RunState(memory, self._outer_optimizer(memory, lr), lr=lr, pool=self.new_pool(),
                         regression_pool=self.new_regression_pool())
        if self.config.outer.average:
            state.average = {k: v.detach().clone() for k, v in memory.tensors.items()}
        if checkpoint is None:
            return state
        main = self.dist.is_main
        data = self.dist.broadcast_bytes(Path(checkpoint).read_bytes() if main and Path(checkpoint).exists() else None)
        if data is not None:
            snap = load_checkpoint(checkpoint, self.config, memory, data, device=self.device)
            state.restore(snap, self._outer_optimizer)
            if main:
                log.info("resumed at iteration %d from %s", state.iteration, checkpoint)
        return state

    @staticmethod
    def _open_metrics(metrics: PathLike | None, resume: bool, start: int) -> list[dict[str, Any]]:
        """The records kept from before ``start`` (when resuming), else an empty file."""
        if not metrics:
            return []
        if resume:
            return read_metrics(metrics, start)
        reset_metrics(metrics)
        return []

    def _outer_step(self, state: RunState, snapshot: dict[str, Any]) -> dict[str, Any] | None:
        """One outer iteration: its metrics record, or ``None`` when too many non-finite
        meta-gradients in a row sent the run back to ``snapshot`` (lr halved)."""
        oc, ec = self.config.outer, self.config.evaluation
        t0 = time.perf_counter()
        it = state.iteration
        regression = it < oc.regression_steps
        if oc.regression_steps and it == oc.regression_steps:  # the unrolls start with a fresh optimiser
            state.optimizer = self._outer_optimizer(state.memory, state.lr)
        pool = state.regression_pool if regression else state.pool
        members, taken = self._take_members(pool, it, self.new_regression_member if regression else self.new_member)
        if regression:
            result = outer_gradient(self.regression_step, state.memory, it, oc.meta_batch, self.dist, False,
                                    self.device, members=members)
        else:
            result = self.outer_gradient(state.memory, it, members)
        loss, grads, inner_losses = result
        record: dict[str, Any] = {"iteration": it, "loss": loss, "lr": state.lr,
                                  "objective": "regression" if regression else "unroll"}
        if members is not None:
            record["pool_steps"] = [m.steps for m in members]  # where each unroll started
            for index, (params, opt_state) in zip(taken, result.final):
                pool.advance(index, params, opt_state)
        if math.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads):
            state.failures_in_a_row = 0
            self._update(state, grads, record)
            if state.average is not None:
                state.update_average(oc.average)
        else:
            state.skipped += 1
            state.failures_in_a_row += 1
            record["skipped"] = True
            if state.failures_in_a_row >= oc.max_failures:
                self._roll_back(state, snapshot)
                return None
        state.iteration += 1
        record["inner_loss_last"] = inner_losses[-1] if inner_losses else None
        record["seconds"] = time.perf_counter() - t0
        if (ec.every and state.iteration % ec.every == 0) or state.iteration == oc.iterations:
            # what the run delivers; "iteration" says which memory it scored (a run stopped by
            # its time limit writes a later one than its latest evaluation)
            state.last_eval = self._scored(state.averaged_memory(), state.iteration)
            record["eval"] = state.last_eval
        return record

    def _take_members(self, pool: ModelPool | None, iteration: int,
                      new_member: Callable[[int, int], Any]) -> tuple[list[Member] | None, list[int]]:
        """The pool members the unrolls of ``iteration`` start from, and their indices
        (identical on every rank: re-initialisations are drawn from seeded streams)."""
        if pool is None:
            return None, []
        M = self.config.outer.meta_batch
        taken = [pool.index(iteration, j, M) for j in range(M)]
        return [pool.take(i, new_member) for i in taken], taken

    def _update(self, state: RunState, grads, record: dict[str, Any]) -> None:
        """One outer optimiser step along ``grads`` (clipped, on the lr schedule)."""
        oc = self.config.outer
        params = state.memory.parameters()
        for p, g in zip(params, grads):
            p.grad = g.to(p.dtype)
        if oc.clip > 0:
            record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, oc.clip))
        if oc.schedule == "cosine":
            for group in state.optimizer.param_groups:
                factor = 0.5 * (1 + math.cos(math.pi * state.iteration / max(oc.iterations, 1)))
                group["lr"] = group.get("base_lr", state.lr) * factor
        record["lr"] = state.optimizer.param_groups[0]["lr"]  # the content's rate this step used (scheduled)
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)

    def _roll_back(self, state: RunState, snapshot: dict[str, Any]) -> None:
        state.restore(snapshot, self._outer_optimizer, counters=False)
        for group in state.optimizer.param_groups:  # every group's own rate halves
            group["base_lr"] = group["lr"] = group.get("base_lr", state.lr) / 2
        state.lr = state.lr / 2
        state.rollbacks += 1
        state.failures_in_a_row = 0
        if self.dist.is_main:
            log.warning("%d non-finite meta-gradients in a row: rolled back to iteration %d, lr halved to %g",
                        self.config.outer.max_failures, state.iteration, state.lr)

    def _should_stop(self, done: int, stop_after: int | None, time_limit: float | None, started: float) -> bool:
        stop = stop_after is not None and done >= stop_after
        if time_limit is not None:
            # rank 0's clock decides for all, or the next iteration's collectives hang
            stop = stop or bool(self.dist.broadcast_object(time.perf_counter() - started > time_limit))
        return stop


def place_real_data(data: ImageDataset, device: torch.device, mode: str) -> ImageDataset:
    """The real images the outer loss samples from: kept on the device as uint8 when
    ``mode`` (``data_on_device``) allows and they fit (``auto``: at most a quarter of
    the device's free memory), else left on the host and streamed batch by batch."""
    if device.type == "cpu" or mode == "never":
        return data
    need = data.images.numel() * data.images.element_size()
    if mode == "auto" and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > free // 4:
            log.info("real images (%.2f GB) streamed from the host: more than a quarter of %s's free "
                     "memory", need / 1e9, device)
            return data
    return dataclasses.replace(data, images=data.images.to(device), labels=data.labels.to(device))


def starting_point(config: DistillConfig, train: ImageDataset, device: str | torch.device = "cpu"):
    """What the starting point of a run with ``config`` on ``train`` recalls for every
    original class: ``(N, C, H, W)`` images and ``(N,)`` class indices of the memory
    before its first outer step, rebuilt exactly from the seed and configuration (the
    reference a distilled memory is judged against)."""
    # built on the CPU: only the memory is needed, not the real data placed on a device
    distiller = Distiller(config, train, device="cpu")
    x, y = distiller.label_space.class_examples(distiller.new_memory())
    return x.to(device), y.to(device)

