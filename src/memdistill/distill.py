"""The outer distillation loop.

Each outer iteration: a freshly initialised network is trained for ``T`` inner steps on
examples recalled from the memory (:mod:`.engine`), its loss on a batch of real images
is differentiated with respect to the memory, and the memory takes one optimiser step.

All randomness of iteration ``i`` comes from a generator seeded by ``(seed, i)`` (and
``(seed, i, j)`` for its inner unroll ``j > 0`` when ``outer.meta_batch > 1``), so a run
resumed from a checkpoint continues exactly as the uninterrupted run would, with any
number of processes (see :mod:`.distributed`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._io import atomic_write_bytes
from .augment import create_augmentation
from .config import DistillConfig, config_to_dict
from .data import ImageDataset, fit_zca, train_val_split
from .distributed import DistContext, load_bytes, single_process, sum_over_ranks
from .engine import create_inner_optimizer, draw_plans, memory_recall, meta_gradient
from .errors import ConfigError, MemdistillError
from .evaluate import TrainConfig, TrainingSet, evaluate
from .labels import create_label_space, equal_storage_ipc, init_labelled_memory
from .memory import Memory, create_memory
from .models import create_model, functional_forward, supported_options

__all__ = ["Distiller", "DistillResult", "iteration_generator", "sample_generator"]

log = logging.getLogger(__name__)


def iteration_generator(seed: int, iteration: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of outer iteration ``iteration`` (independent of all others)."""
    state = np.random.SeedSequence([int(seed), int(iteration)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state % (2**63)))


def sample_generator(seed: int, iteration: int, sample: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of inner unroll ``sample`` of outer iteration ``iteration``.

    Sample 0 is :func:`iteration_generator` itself, so a run with one unroll per outer
    step (``outer.meta_batch = 1``) is unchanged; every other ``(seed, iteration, sample)``
    gets its own independent stream, whichever process computes it.
    """
    if sample == 0:
        return iteration_generator(seed, iteration, device)
    state = np.random.SeedSequence([int(seed), int(iteration), int(sample)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state % (2**63)))


def _weighted(loss_fn: Callable[..., torch.Tensor], weight: float) -> Callable[..., torch.Tensor]:
    return lambda *args: loss_fn(*args) * weight


@dataclass
class DistillResult:
    memory: Memory
    iterations: int
    skipped: int
    rollbacks: int
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: dict[str, Any] | None = None


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
        self.initial_memory = initial_memory
        self.device = torch.device(device)
        self.train, self.val = train_val_split(train, config.evaluation.val_fraction, seed=config.seed)
        if config.zca > 0:
            # fitted on the part used for distillation only, then applied to validation too
            zca = fit_zca(self.train, regularization=config.zca)
            self.train, self.val = self.train.with_zca(zca), self.val.with_zca(zca)
        self.class_index = [self.train.indices_of_class(c) for c in range(self.train.num_classes)]
        self._real = self._place_real_data(self.train)
        ic = config.inner
        self.inner_optimizer = create_inner_optimizer(
            ic.optimizer, lr=ic.lr, **({"momentum": ic.momentum} if ic.optimizer == "sgd" else {})
        )
        self.augment = None if ic.augment == "none" else create_augmentation(ic.augment)
        self.arch_options = supported_options(ic.arch, width=ic.width, norm=ic.norm, depth=ic.depth or None)
        # None for one-hot targets (the original code path, bit for bit); see labels.py
        self.label_space = None if config.memory.label_space == "onehot" else create_label_space(
            config.memory.label_space, train.classes, dataset=train)
        if self.label_space is not None and (config.memory.learned_labels or ic.classes_per_step):
            raise ConfigError(f"memory.label_space={config.memory.label_space!r} cannot be combined with "
                              "memory.learned_labels or inner.classes_per_step; turn those off")

        self._split = bool(config.outer.split_classes) and self.dist.distributed
        if self._split:
            self._check_class_split()

    # ------------------------------------------------------------ building blocks
    def _check_class_split(self) -> None:
        """``outer.split_classes`` is exact only when examples do not interact inside
        the inner network (no batch norm) and every rank gets at least one class."""
        cfg, W = self.config, self.dist.world_size
        per_unroll = cfg.inner.classes_per_step or self.train.num_classes
        problems = []
        if getattr(self, "label_space", None) is not None:
            problems.append("memory.label_space must be onehot")
        if cfg.outer.unroll != "checkpointed":
            problems.append("outer.unroll must be checkpointed")
        if per_unroll < W:
            problems.append(f"each unroll has {per_unroll} classes, fewer than the {W} ranks")
        probe = create_model(cfg.inner.arch, self.train.in_channels, self.train.num_classes,
                             self.train.image_shape[1:], **self.arch_options)
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in probe.modules()):
            problems.append(f"the inner network ({cfg.inner.arch}) uses batch norm, which mixes the "
                            "classes of a batch; use inner.norm=instance")
        if problems:
            raise ConfigError("outer.split_classes (one unroll split over ranks by class) cannot run: "
                              + "; ".join(problems) + "; or set outer.split_classes=false")

    def _class_share(self, plans, xr, yr, num_classes: int):
        """This rank's share of one unroll: class positions ``p`` with
        ``p mod world_size == rank`` of every inner batch and of the real batch, with
        the weights that make the ranks' losses add up to the whole batch's mean."""
        W, r = self.dist.world_size, self.dist.rank
        rows = len(yr) // num_classes
        keep = (torch.arange(len(yr)) // rows) % W == r
        outer_weight = float(keep.sum()) / len(yr)
        xr, yr = xr[keep.to(xr.device)], yr[keep.to(yr.device)]
        shared, weights = [], []
        for plan in plans:
            n = len(plan["classes"])
            mine = (torch.arange(n) // (n // num_classes)) % W == r
            part = {k: v[mine] for k, v in plan.items() if k != "aug"}
            if "aug" in plan:  # per-image parameters follow their images; per-batch ones stay
                part["aug"] = {k: v[mine] if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n else v
                               for k, v in plan["aug"].items()}
            shared.append(part)
            weights.append(float(mine.sum()) / n)
        split = {"reduce": lambda ts: sum_over_ranks(self.dist, ts), "shard_weights": weights}
        return shared, xr, yr, outer_weight, split

    def _place_real_data(self, data: ImageDataset) -> ImageDataset:
        """The real images the outer loss samples from: kept on the device as uint8
        when ``data_on_device`` allows and they fit (``auto``: at most a quarter of the
        device's free memory), else left on the host and streamed batch by batch."""
        mode = self.config.data_on_device
        if self.device.type == "cpu" or mode == "never":
            return data
        need = data.images.numel() * data.images.element_size()
        if mode == "auto" and self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if need > free // 4:
                log.info("real images (%.2f GB) streamed from the host: more than a quarter of %s's free "
                         "memory", need / 1e9, self.device)
                return data
        import dataclasses

        return dataclasses.replace(data, images=data.images.to(self.device), labels=data.labels.to(self.device))

    def new_memory(self) -> Memory:
        mc = self.config.memory
        if self.initial_memory is not None:
            init = self.initial_memory
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
        g = torch.Generator().manual_seed(int(self.config.seed))
        opts: dict[str, Any] = {"learned_labels": mc.learned_labels}
        if mc.kind == "bases":
            opts.update(num_bases=mc.num_bases, downsample=mc.downsample)
        if self.label_space is not None:  # L rows, the float budget of C classes
            space = self.label_space
            mem = create_memory(mc.kind, self.train.image_shape, space.width, equal_storage_ipc(mc.budget_ipc, space),
                                generator=g, init="random", **opts)
            init_labelled_memory(mem, space, self.train, g, mc.init)
        else:
            mem = create_memory(mc.kind, self.train.image_shape, self.train.num_classes, mc.budget_ipc,
                                generator=g, real=self.train, init=mc.init, **opts)
        mem.tensors = {k: v.to(self.device).requires_grad_() for k, v in mem.tensors.items()}
        return mem

    def _outer_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        oc = self.config.outer
        if oc.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr)
        return torch.optim.SGD(params, lr=lr, momentum=oc.momentum)

    def meta_step(self, memory: Memory, iteration: int,
                  sample: int = 0) -> tuple[float, tuple[torch.Tensor, ...], list[float]]:
        """Outer loss and meta-gradient of ``memory`` at ``iteration`` (pure in the memory)
        for inner unroll ``sample`` of the iteration (its randomness: :func:`sample_generator`)."""
        cfg, g = self.config, sample_generator(self.config.seed, iteration, sample)
        ic, oc = cfg.inner, cfg.outer
        L = self.train.num_classes
        classes = None
        if ic.classes_per_step and ic.classes_per_step < L:
            classes = torch.randperm(L, generator=g)[: ic.classes_per_step].sort().values
        space = self.label_space
        model = create_model(ic.arch, self.train.in_channels, L if space is None else space.width,
                             self.train.image_shape[1:], generator=g, device=self.device, **self.arch_options)
        names = [n for n, _ in model.named_parameters()]
        init = tuple(p.detach() for p in model.parameters())

        channels_last = cfg.channels_last and self.device.type == "cuda"

        def forward(params, x):
            if channels_last:  # NHWC activations for tensor-core convolutions (unmeasured here)
                x = x.contiguous(memory_format=torch.channels_last)
            return functional_forward(model, dict(zip(names, params)), x)

        if space is not None:
            forward = space.wrap_forward(forward)
        steps, window = ic.steps, (oc.window or None)
        if oc.random_truncation:
            steps = int(torch.randint(oc.window, ic.steps + 1, (), generator=g))
        plans = draw_plans(steps, L if space is None else space.rows, memory.slots, ic.n_per_class, g, self.train.image_shape,
                           self.augment, classes)
        # the real batch: real_per_class images of each (sampled) class
        cls_list = range(L) if classes is None else classes.tolist()
        idx = torch.cat([
            self.class_index[c][torch.randint(len(self.class_index[c]), (oc.real_per_class,), generator=g)]
            for c in cls_list
        ])
        xr, yr = self._real.batch(idx, device=self.device)
        real_aug = self.augment.sample(xr.shape, g) if self.augment is not None else None
        if real_aug is not None:
            xr = self.augment.apply(xr, real_aug)
        split: dict[str, Any] = {}
        if self._split:  # outer.split_classes: this rank's share of the classes of the unroll
            plans, xr, yr, outer_weight, split = self._class_share(plans, xr, yr, len(cls_list))

        def outer_loss(params):
            if space is not None:  # forward gives group log-probabilities
                return -(space.table.to(xr)[yr] * forward(params, xr)).sum(1).mean()
            return F.cross_entropy(forward(params, xr), yr)

        recall = memory_recall(memory, self.augment) if space is None else space.recall_rows(memory, self.augment)
        if split:
            outer_loss = _weighted(outer_loss, outer_weight)
        res = meta_gradient(memory.parameters(), recall, forward, init,
                            self.inner_optimizer, plans, outer_loss, mode=oc.unroll, window=window, **split)
        grads = list(res.grads)
        mc = cfg.memory
        if mc.kind == "bases" and mc.coeff_penalty != "none" and mc.coeff_alpha > 0 and (
                not split or self.dist.is_main):  # a split unroll's gradients are summed over ranks
            i = memory.names.index("addressing")
            a = memory.tensors["addressing"].detach()
            grads[i] = grads[i] + mc.coeff_alpha * (2 * a if mc.coeff_penalty == "l2" else torch.sign(a))
        return float(res.loss), tuple(grads), res.inner_losses

    def outer_gradient(self, memory: Memory, iteration: int) -> tuple[float, tuple[torch.Tensor, ...], list[float]]:
        """The meta-gradient the outer step uses: the mean over ``outer.meta_batch``
        inner unrolls, summed over all ranks (each computes unrolls ``j`` with
        ``j mod world_size == rank``). Identical on every rank; with one unroll in one
        process it is :meth:`meta_step` itself."""
        M = self.config.outer.meta_batch
        if M == 1 and not self.dist.distributed:
            return self.meta_step(memory, iteration)
        acc: list[torch.Tensor] | None = None
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, last inner loss sum, unrolls with one
        # split classes: every rank takes part in every unroll (its losses are already totals)
        samples = range(M) if self._split else self.dist.shard(M)
        stats_scale = 1.0 / self.dist.world_size if self._split else 1.0
        for j in samples:
            loss, grads, inner = self.meta_step(memory, iteration, sample=j)
            acc = [g.clone() for g in grads] if acc is None else [a + g for a, g in zip(acc, grads)]
            stats[0] += loss * stats_scale
            if inner:
                stats[1] += inner[-1] * stats_scale
                stats[2] += stats_scale
        if acc is None:  # more ranks than unrolls: this rank contributes nothing
            acc = [torch.zeros_like(p) for p in memory.parameters()]
        acc = sum_over_ranks(self.dist, acc)
        self.dist.all_reduce_sum(stats)
        grads = tuple(a / M for a in acc)
        inner_last = [float(stats[1] / stats[2])] if stats[2] > 0 else []
        return float(stats[0] / M), grads, inner_last

    def evaluate_memory(self, memory: Memory, split: ImageDataset | None = None) -> dict[str, Any]:
        ec = self.config.evaluation
        x, y = memory.recall() if self.label_space is None else self.label_space.class_examples(memory)
        tc = TrainConfig(arch=ec.arch, arch_options=supported_options(ec.arch, width=ec.width),
                         epochs=ec.epochs, lr=ec.lr,
                         batch_size=ec.batch_size, augment=ec.augment)
        res = evaluate(TrainingSet(x, y, device=self.device), split or self.val, tc, runs=ec.runs,
                       seed=self.config.seed, device=self.device, dist=self.dist)
        return {"split": (split or self.val).split, "mean": res.mean, "std": res.std,
                "seconds": res.wall_seconds}

    # ---------------------------------------------------------------- the loop
    def run(
        self,
        checkpoint: str | os.PathLike | None = None,
        metrics: str | os.PathLike | None = None,
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
        cfg, oc = self.config, self.config.outer
        main = self.dist.is_main  # only rank 0 writes files and shows progress
        if not main:
            metrics = None
        memory = self.new_memory()
        lr = oc.lr
        start, skipped, rollbacks, last_eval = 0, 0, 0, None
        opt = self._outer_optimizer(memory.parameters(), lr)
        saved = None
        if resume and checkpoint:
            # rank 0 reads the checkpoint and hands its bytes to every rank (no shared disk needed)
            saved = Path(checkpoint).read_bytes() if main and Path(checkpoint).exists() else None
            saved = self.dist.broadcast_bytes(saved)
        if saved is not None:
            start, lr, skipped, rollbacks, last_eval = self._load_checkpoint(checkpoint, memory, saved)
            opt = self._outer_optimizer(memory.parameters(), lr)
            opt.load_state_dict(self._ckpt_opt_state)
            if main:
                log.info("resumed at iteration %d from %s", start, checkpoint)
        history: list[dict[str, Any]] = []
        if metrics:
            if resume:
                history = self._read_metrics(metrics, start)
            else:
                atomic_write_bytes(metrics, b"")
        snapshot = self._snapshot(memory, opt, start, lr, skipped, rollbacks, last_eval)
        consecutive = 0
        total = oc.iterations
        bar = tqdm(total=total, initial=start, desc="distill", unit="it", disable=not (progress and main))
        it = start
        started = time.perf_counter()
        try:
            while it < total:
                t0 = time.perf_counter()
                loss, grads, inner_losses = self.outer_gradient(memory, it)
                finite = math.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)
                record: dict[str, Any] = {"iteration": it, "loss": loss, "lr": lr}
                if not finite:
                    skipped += 1
                    consecutive += 1
                    record["skipped"] = True
                    if consecutive >= oc.max_failures:
                        memory, opt, it, lr, _, _, last_eval = self._restore(snapshot, memory)
                        lr = lr / 2
                        for group in opt.param_groups:
                            group["lr"] = lr
                        rollbacks += 1
                        consecutive = 0
                        if main:
                            log.warning("%d non-finite meta-gradients in a row: rolled back to iteration %d, "
                                        "lr halved to %g", oc.max_failures, it, lr)
                        continue
                else:
                    consecutive = 0
                    for p, g in zip(memory.parameters(), grads):
                        p.grad = g.to(p.dtype)
                    if oc.clip > 0:
                        record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(memory.parameters(), oc.clip))
                    if oc.schedule == "cosine":
                        for group in opt.param_groups:
                            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * it / max(total, 1)))
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                it += 1
                record["inner_loss_last"] = inner_losses[-1] if inner_losses else None
                record["seconds"] = time.perf_counter() - t0
                ec = cfg.evaluation
                if (ec.every and it % ec.every == 0) or it == total:
                    last_eval = self.evaluate_memory(memory)
                    record["eval"] = last_eval
                history.append(record)
                if metrics:
                    with open(metrics, "a") as fh:
                        fh.write(json.dumps(record) + "\n")
                if callback and main:
                    callback(record)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", acc="-" if last_eval is None else f"{100 * last_eval['mean']:.1f}")
                stop = stop_after is not None and it >= stop_after
                if time_limit is not None:
                    # rank 0's clock decides for all, or the next iteration's collectives hang
                    stop = stop or bool(self.dist.broadcast_object(time.perf_counter() - started > time_limit))
                if it % cfg.checkpoint_every == 0 or it == total or stop:
                    snapshot = self._snapshot(memory, opt, it, lr, skipped, rollbacks, last_eval)
                    if checkpoint and main:
                        self._save_checkpoint(checkpoint, snapshot)
                if stop:
                    break
        finally:
            bar.close()
        for p in memory.parameters():
            p.requires_grad_(False)
        return DistillResult(memory, it, skipped, rollbacks, history, last_eval)

    # ------------------------------------------------------------ checkpoints
    @staticmethod
    def _snapshot(memory, opt, it, lr, skipped, rollbacks, last_eval) -> dict[str, Any]:
        return {
            "iteration": it, "lr": lr, "skipped": skipped, "rollbacks": rollbacks,
            "last_eval": json.dumps(last_eval),
            "memory": {k: v.detach().clone() for k, v in memory.tensors.items()},
            "optimizer": copy.deepcopy(opt.state_dict()),
        }

    def _restore(self, snap, memory):
        for k, v in snap["memory"].items():
            memory.tensors[k] = v.clone().requires_grad_()
        opt = self._outer_optimizer(memory.parameters(), snap["lr"])
        opt.load_state_dict(copy.deepcopy(snap["optimizer"]))
        return memory, opt, snap["iteration"], snap["lr"], snap["skipped"], snap["rollbacks"], json.loads(snap["last_eval"])

    def _save_checkpoint(self, path, snap) -> None:
        import io

        buf = io.BytesIO()
        torch.save({**snap, "config": json.dumps(config_to_dict(self.config))}, buf)
        atomic_write_bytes(path, buf.getvalue())

    def _load_checkpoint(self, path, memory, data: bytes | None = None):
        try:
            if data is not None:
                snap = load_bytes(data, map_location=self.device)
            else:
                snap = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint
            raise MemdistillError(f"checkpoint {path} cannot be read ({exc}); delete it to start afresh") from None
        saved_cfg = json.loads(snap["config"])
        now = config_to_dict(self.config)
        for key in ("dataset", "seed", "zca", "memory"):
            if saved_cfg.get(key) != now.get(key):
                raise ConfigError(
                    f"checkpoint {path} was written with a different {key} ({saved_cfg.get(key)!r} vs "
                    f"{now.get(key)!r}); resume with the same configuration or start afresh without --resume"
                )
        for k, v in snap["memory"].items():
            if k not in memory.tensors or memory.tensors[k].shape != v.shape:
                raise ConfigError(f"checkpoint {path} does not match this memory (tensor {k!r})")
            memory.tensors[k] = v.clone().requires_grad_()
        self._ckpt_opt_state = snap["optimizer"]
        return snap["iteration"], snap["lr"], snap["skipped"], snap["rollbacks"], json.loads(snap["last_eval"])

    @staticmethod
    def _read_metrics(path, upto: int) -> list[dict[str, Any]]:
        """Keep the records of iterations before ``upto`` (rewritten atomically)."""
        p = Path(path)
        if not p.exists():
            return []
        kept = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        kept = [r for r in kept if r.get("iteration", 0) < upto]
        atomic_write_bytes(p, "".join(json.dumps(r) + "\n" for r in kept).encode())
        return kept
