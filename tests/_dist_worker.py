"""One rank of the multi-process tests, launched by ``python -m torch.distributed.run``.

Usage: ``_dist_worker.py SPEC.json``. The spec names the tasks to run in order and the
folder to write results into; rank 0 writes ``<task>.pt`` files the tests compare with
single-process references computed from the same :func:`tiny_setup`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import torch

from memdistill.config import DistillConfig, apply_overrides
from memdistill.data import ImageDataset
from memdistill.distill import Distiller
from memdistill.distributed import exit_process, init_distributed
from memdistill.evaluate import TrainConfig, evaluate


def tiny_dataset(classes: int = 4, per_class: int = 40, size: int = 16, seed: int = 0) -> ImageDataset:
    """A small synthetic training split (the distributed logic does not depend on real data)."""
    g = torch.Generator().manual_seed(seed)
    n = classes * per_class
    labels = torch.arange(n) % classes
    base = torch.randint(0, 256, (classes, 1, size, size), generator=g)
    noise = torch.randint(-40, 41, (n, 1, size, size), generator=g)
    images = (base[labels] + noise).clamp(0, 255).to(torch.uint8)
    return ImageDataset(name="synthetic", split="train", images=images, labels=labels,
                        classes=tuple(f"c{i}" for i in range(classes)), mean=(0.5,), std=(0.3,))


def tiny_config(**over) -> DistillConfig:
    cfg = DistillConfig(dataset="synthetic", seed=3, checkpoint_every=1)
    apply_overrides(cfg, {
        "memory": {"budget_ipc": 1, "num_bases": 4, "downsample": 2},
        "inner": {"width": 8, "steps": 3, "n_per_class": 2, "augment": "flip_rotate"},
        "outer": {"iterations": 4, "real_per_class": 4, "meta_batch": 2},
        "evaluation": {"every": 0, "width": 8, "epochs": 2},
    })
    apply_overrides(cfg, over)
    return cfg


def use_float64() -> None:
    """Everything in float64: default dtype and the normalisation of real batches."""
    torch.set_default_dtype(torch.float64)
    ImageDataset.normalize = functools.partialmethod(ImageDataset.normalize, dtype=torch.float64)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    torch.set_num_threads(1)
    dist, _ = init_distributed(os.environ, "cpu", timeout_s=spec.get("timeout", 60.0))
    train = tiny_dataset()
    for task in spec["tasks"]:
        kind, over = task["kind"], task.get("config", {})
        if kind == "gradient":  # the reduced meta-gradient of one outer iteration, float64
            use_float64()
            d = Distiller(tiny_config(**over), train, dist=dist)
            mem = d.new_memory()
            mem.tensors = {k: v.detach().double().requires_grad_() for k, v in mem.tensors.items()}
            loss, grads, _ = d.outer_gradient(mem, task.get("iteration", 0))
            result = {"loss": loss, "grads": [g.detach() for g in grads]}
        elif kind == "distill":
            d = Distiller(tiny_config(**over), train, dist=dist)
            if task.get("fail_at") is not None and dist.rank == task.get("fail_rank", 1):
                real_step, fail_at = d.meta_step, task["fail_at"]

                def failing(memory, iteration, sample=0, real_step=real_step, fail_at=fail_at):
                    if iteration == fail_at:
                        os._exit(7)  # a hard crash: no cleanup, no goodbye to the other ranks
                    return real_step(memory, iteration, sample)

                d.meta_step = failing
            res = d.run(checkpoint=task.get("checkpoint"), metrics=task.get("metrics"),
                        resume=task.get("resume", False), stop_after=task.get("stop_after"))
            if task.get("copy_checkpoint") and dist.is_main:  # keep this state for later tests
                Path(task["copy_checkpoint"]).write_bytes(Path(task["checkpoint"]).read_bytes())
            result = {"iterations": res.iterations,
                      "memory": {k: v.detach() for k, v in res.memory.tensors.items()},
                      "losses": [r["loss"] for r in res.history]}
        elif kind == "evaluate":
            x = torch.randn(12, 1, 16, 16, generator=torch.Generator().manual_seed(5))
            y = torch.arange(12) % 4
            from memdistill.evaluate import TrainingSet

            res = evaluate(TrainingSet(x, y), train, TrainConfig(arch="convnet", arch_options={"width": 8},
                           epochs=3, batch_size=8), runs=task["runs"], seed=1, dist=dist)
            result = {"accuracies": res.accuracies, "per_class": res.per_class}
        else:
            raise ValueError(f"unknown task {kind!r}")
        if dist.is_main:
            torch.save(result, out / f"{task['name']}.pt")
    dist.close(synchronize=True)
    return 0


if __name__ == "__main__":
    exit_process(main(sys.argv[1]))  # as the memdistill program ends a torchrun run
