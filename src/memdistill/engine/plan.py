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
) -> list[dict[str, Any]]:
    """One plan per inner step: which classes, which slots of each, augmentation params.

    Each step draws ``n_per_class`` distinct slots (all of them when the memory holds
    fewer) for every class, or for the given subset ``classes`` only.
    """
    if n_per_class < 1:
        raise ConfigError(f"n_per_class must be >= 1, got {n_per_class}")
    n = min(n_per_class, slots)
    cls = torch.arange(num_classes) if classes is None else torch.as_tensor(classes, dtype=torch.long)
    plans = []
    for _ in range(steps):
        slot_ids = torch.stack([torch.randperm(slots, generator=generator)[:n] for _ in range(len(cls))])
        plan = {"classes": cls.repeat_interleave(n), "slots": slot_ids.flatten()}
        if augmentation is not None:
            plan["aug"] = augmentation.sample((len(cls) * n, *image_shape), generator)
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
