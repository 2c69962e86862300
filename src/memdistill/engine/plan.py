"""Per-step random choices of the inner loop, drawn up front and replayed exactly."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["draw_plans", "memory_recall"]


def draw_plans(
    steps: int,
    num_classes: int,
    slots: int,
    n_per_class: int,
    generator: torch.Generator,
    image_shape: tuple[int, int, int],
    augmentation: Any = None,
    classes: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> list[dict[str, Any]]:
    """One plan per inner step: which classes, which slots of each, augmentation params.

    Each step draws ``n_per_class`` distinct slots (all of them when the memory holds
    fewer) for every class, or for the given subset ``classes`` only. The draws are made
    on the CPU (``generator`` is a CPU generator); ``classes`` and ``slots`` are then
    moved to ``device`` in one copy (they index the memory and are the inner targets
    there). Augmentation parameters stay on the CPU: each augmentation moves what it needs.
    """
    if n_per_class < 1:
        raise ConfigError(f"n_per_class must be >= 1, got {n_per_class}")
    n = min(n_per_class, slots)
    cls = torch.arange(num_classes) if classes is None else torch.as_tensor(classes, dtype=torch.long)
    slot_ids, augs = [], []
    for _ in range(steps):
        slot_ids.append(torch.stack([torch.randperm(slots, generator=generator)[:n] for _ in range(len(cls))]).flatten())
        if augmentation is not None:
            augs.append(augmentation.sample((len(cls) * n, *image_shape), generator))
    # one host-to-device copy of every step's indices: (steps + 1, N), the last row the classes
    index = torch.stack([*slot_ids, cls.repeat_interleave(n)]).to(device) if steps else None
    plans = []
    for t in range(steps):
        plan = {"classes": index[-1], "slots": index[t]}
        if augmentation is not None:
            plan["aug"] = augs[t]
        plans.append(plan)
    return plans


def memory_recall(memory, augmentation=None):
    """``recall(values, plan) -> (x, target)`` for :func:`..unroll.meta_gradient`:
    pure in the memory tensor ``values`` (ordered as ``memory.names``)."""

    def recall(values, plan):
        x, y = memory.recall_from(memory.as_dict(values), plan["classes"], plan["slots"])
        if augmentation is not None:
            x = augmentation.apply(x, plan["aug"])
        return x, y

    return recall
