"""The outer distillation loop.

Each outer iteration: a freshly initialised network is trained for ``T`` inner steps on
examples recalled from the memory (:mod:`.engine`), its loss on a batch of real images
is differentiated with respect to the memory, and the memory takes one optimiser step.

All randomness of iteration ``i`` comes from a generator seeded by ``(seed, i)``, so a
run resumed from a checkpoint continues exactly as the uninterrupted run would.
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
from .engine import create_inner_optimizer, draw_plans, memory_recall, meta_gradient
from .errors import ConfigError, MemdistillError
from .evaluate import TrainConfig, TrainingSet, evaluate
from .memory import Memory, create_memory
from .models import create_model, functional_forward, supported_options

__all__ = ["Distiller", "DistillResult", "iteration_generator"]

log = logging.getLogger(__name__)


def iteration_generator(seed: int, iteration: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of outer iteration ``iteration`` (independent of all others)."""
    state = np.random.SeedSequence([int(seed), int(iteration)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state % (2**63)))


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
    """

    def __init__(self, config: DistillConfig, train: ImageDataset, device: str | torch.device = "cpu"):
        self.config = config.validate()
        self.device = torch.device(device)
        self.train, self.val = train_val_split(train, config.evaluation.val_fraction, seed=config.seed)
        if config.zca > 0:
            # fitted on the part used for distillation only, then applied to validation too
            zca = fit_zca(self.train, regularization=config.zca)
            self.train, self.val = self.train.with_zca(zca), self.val.with_zca(zca)
        self.class_index = [self.train.indices_of_class(c) for c in range(self.train.num_classes)]
        ic = config.inner
        self.inner_optimizer = create_inner_optimizer(
            ic.optimizer, lr=ic.lr, **({"momentum": ic.momentum} if ic.optimizer == "sgd" else {})
        )
        self.augment = None if ic.augment == "none" else create_augmentation(ic.augment)
        self.arch_options = supported_options(ic.arch, width=ic.width, norm=ic.norm, depth=ic.depth or None)

    # ------------------------------------------------------------ building blocks
    def new_memory(self) -> Memory:
        mc = self.config.memory
        g = torch.Generator().manual_seed(int(self.config.seed))
        opts: dict[str, Any] = {"learned_labels": mc.learned_labels}
        if mc.kind == "bases":
            opts.update(num_bases=mc.num_bases, downsample=mc.downsample)
        mem = create_memory(mc.kind, self.train.image_shape, self.train.num_classes, mc.budget_ipc,
                            generator=g, real=self.train, init=mc.init, **opts)
        mem.tensors = {k: v.to(self.device).requires_grad_() for k, v in mem.tensors.items()}
        return mem

    def _outer_optimizer(self, params, lr: float) -> torch.optim.Optimizer:
        oc = self.config.outer
        if oc.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr)
        return torch.optim.SGD(params, lr=lr, momentum=oc.momentum)

    def meta_step(self, memory: Memory, iteration: int) -> tuple[float, tuple[torch.Tensor, ...], list[float]]:
        """Outer loss and meta-gradient of ``memory`` at ``iteration`` (pure in the memory)."""
        cfg, g = self.config, iteration_generator(self.config.seed, iteration)
        ic, oc = cfg.inner, cfg.outer
        L = self.train.num_classes
        classes = None
        if ic.classes_per_step and ic.classes_per_step < L:
            classes = torch.randperm(L, generator=g)[: ic.classes_per_step].sort().values
        model = create_model(ic.arch, self.train.in_channels, L, self.train.image_shape[1:],
                             generator=g, device=self.device, **self.arch_options)
        names = [n for n, _ in model.named_parameters()]
        init = tuple(p.detach() for p in model.parameters())

        def forward(params, x):
            return functional_forward(model, dict(zip(names, params)), x)

        steps, window = ic.steps, (oc.window or None)
        if oc.random_truncation:
            steps = int(torch.randint(oc.window, ic.steps + 1, (), generator=g))
        plans = draw_plans(steps, L, memory.slots, ic.n_per_class, g, self.train.image_shape,
                           self.augment, classes)
        # the real batch: real_per_class images of each (sampled) class
        cls_list = range(L) if classes is None else classes.tolist()
        idx = torch.cat([
            self.class_index[c][torch.randint(len(self.class_index[c]), (oc.real_per_class,), generator=g)]
            for c in cls_list
        ])
        xr, yr = self.train.batch(idx, device=self.device)
        real_aug = self.augment.sample(xr.shape, g) if self.augment is not None else None
        if real_aug is not None:
            xr = self.augment.apply(xr, real_aug)

        def outer_loss(params):
            return F.cross_entropy(forward(params, xr), yr)

        res = meta_gradient(memory.parameters(), memory_recall(memory, self.augment), forward, init,
                            self.inner_optimizer, plans, outer_loss, mode=oc.unroll, window=window)
        grads = list(res.grads)
        mc = cfg.memory
        if mc.kind == "bases" and mc.coeff_penalty != "none" and mc.coeff_alpha > 0:
            i = memory.names.index("addressing")
            a = memory.tensors["addressing"].detach()
            grads[i] = grads[i] + mc.coeff_alpha * (2 * a if mc.coeff_penalty == "l2" else torch.sign(a))
        return float(res.loss), tuple(grads), res.inner_losses

    def evaluate_memory(self, memory: Memory, split: ImageDataset | None = None) -> dict[str, Any]:
        ec = self.config.evaluation
        x, y = memory.recall()
        tc = TrainConfig(arch=ec.arch, arch_options=supported_options(ec.arch, width=ec.width),
                         epochs=ec.epochs, lr=ec.lr,
                         batch_size=ec.batch_size, augment=ec.augment)
        res = evaluate(TrainingSet(x, y, device=self.device), split or self.val, tc, runs=ec.runs,
                       seed=self.config.seed, device=self.device)
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
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> DistillResult:
        """Run the outer loop.

        Args:
            checkpoint: path of the periodic checkpoint (written atomically).
            metrics: JSONL file, one record per outer iteration.
            resume: continue from ``checkpoint`` when it exists.
            stop_after: stop (after checkpointing) once this many iterations are done,
                as if interrupted; used to test resume.
        """
        cfg, oc = self.config, self.config.outer
        memory = self.new_memory()
        lr = oc.lr
        start, skipped, rollbacks, last_eval = 0, 0, 0, None
        opt = self._outer_optimizer(memory.parameters(), lr)
        if resume and checkpoint and Path(checkpoint).exists():
            start, lr, skipped, rollbacks, last_eval = self._load_checkpoint(checkpoint, memory)
            opt = self._outer_optimizer(memory.parameters(), lr)
            opt.load_state_dict(self._ckpt_opt_state)
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
        bar = tqdm(total=total, initial=start, desc="distill", unit="it", disable=not progress)
        it = start
        try:
            while it < total:
                t0 = time.perf_counter()
                loss, grads, inner_losses = self.meta_step(memory, it)
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
                if callback:
                    callback(record)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", acc="-" if last_eval is None else f"{100 * last_eval['mean']:.1f}")
                if it % cfg.checkpoint_every == 0 or it == total or (stop_after is not None and it >= stop_after):
                    snapshot = self._snapshot(memory, opt, it, lr, skipped, rollbacks, last_eval)
                    if checkpoint:
                        self._save_checkpoint(checkpoint, snapshot)
                if stop_after is not None and it >= stop_after:
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

    def _load_checkpoint(self, path, memory):
        try:
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
