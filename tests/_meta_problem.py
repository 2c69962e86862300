"""A small whole meta-gradient problem through a ConvNet, for the tests that check a
hand-written layer against PyTorch's own (the instance norm, the pooling): the same
memory, real data, plans and outer loss, with the model's layers swapped by the caller."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from memdistill.engine import draw_plans, memory_recall
from memdistill.memory import create_memory
from memdistill.models import create_model, functional_forward


def convnet_meta_problem(swap: Callable[[nn.Module], None] | None = None, dtype=torch.float64):
    """``(memory, recall, forward, init, plans, outer, model)`` for ``meta_gradient``;
    ``swap(model)`` may replace layers in place before anything reads the model."""
    shape, classes = (1, 8, 8), 3
    g = torch.Generator().manual_seed(0)
    real_x = torch.randn(classes * 4, *shape, generator=g, dtype=dtype)
    real_y = torch.arange(classes).repeat_interleave(4)

    class Real:
        num_classes = classes
        x, labels = real_x, real_y

        def indices_of_class(self, c):
            return torch.nonzero(real_y == c).flatten()

        def batch(self, idx):
            return real_x[idx], real_y[idx]

    mem = create_memory("bases", shape, classes, 2, generator=g, real=Real(), num_bases=3, downsample=2)
    mem.tensors = {k: v.to(dtype) for k, v in mem.tensors.items()}
    model = create_model("convnet", 1, classes, 8, width=4, depth=2, generator=g, dtype=dtype)
    if swap is not None:
        swap(model)
    names = [n for n, _ in model.named_parameters()]
    init = tuple(p.detach() for p in model.parameters())
    forward = lambda params, x: functional_forward(model, dict(zip(names, params)), x)  # noqa: E731
    plans = draw_plans(5, classes, mem.slots, 2, torch.Generator().manual_seed(1), shape, None)

    def outer(params):
        return F.cross_entropy(forward(params, real_x), real_y)

    outer.real = (real_x, real_y)  # type: ignore[attr-defined]
    return mem, memory_recall(mem, None), forward, init, plans, outer, model


def replace_modules(model: nn.Module, match: type, make: Callable[[nn.Module], nn.Module]) -> None:
    """Every child of type ``match`` replaced by ``make(child)``."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, match):
                setattr(module, name, make(child))
