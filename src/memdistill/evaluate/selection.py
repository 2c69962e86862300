"""Reference selections of real images at a given number per class.

Every later result (a distilled memory) stands beside these at the same storage:
``random`` (k random real images per class), ``herding`` (k per class chosen greedily so
that their running mean tracks the class mean; Welling 2009, as used by iCaRL and the
dataset-distillation baselines) and ``all`` (the whole training split).
"""

from __future__ import annotations

from typing import Callable

import torch

from .._registry import Registry
from ..data import ImageDataset
from ..errors import ConfigError

__all__ = ["SELECTIONS", "select_subset", "list_selections", "herding_order"]

SelectionFn = Callable[[ImageDataset, int, torch.Generator], torch.Tensor]
SELECTIONS: Registry[SelectionFn] = Registry("selection")


def list_selections() -> list[str]:
    return SELECTIONS.names()


def select_subset(
    dataset: ImageDataset, ipc: int | None, method: str = "random", seed: int = 0
) -> torch.Tensor:
    """Indices into ``dataset`` of ``ipc`` images per class chosen by ``method``.

    Args:
        dataset: the training split to select from.
        ipc: images per class (ignored, may be ``None``, for ``"all"``).
        method: a name from :data:`SELECTIONS` (``random``, ``herding``, ``all``).
        seed: seeds the explicit generator used by randomised selections.

    Returns:
        ``int64`` indices, sorted by class then selection order.
    """
    fn = SELECTIONS.get(method)
    if method != "all":
        if ipc is None or int(ipc) < 1:
            raise ConfigError(f"selection {method!r} needs ipc >= 1 images per class, got {ipc}")
        counts = dataset.class_counts()
        if int(counts.min()) < ipc:
            worst = int(torch.argmin(counts))
            raise ConfigError(
                f"ipc={ipc} is more than class {dataset.classes[worst]!r} has "
                f"({int(counts[worst])} images); choose ipc <= {int(counts.min())}"
            )
    g = torch.Generator().manual_seed(int(seed))
    return fn(dataset, 0 if ipc is None else int(ipc), g)


@SELECTIONS.register("all")
def _select_all(dataset: ImageDataset, ipc: int, generator: torch.Generator) -> torch.Tensor:
    return torch.arange(len(dataset))


@SELECTIONS.register("random")
def _select_random(dataset: ImageDataset, ipc: int, generator: torch.Generator) -> torch.Tensor:
    out = []
    for c in range(dataset.num_classes):
        idx = dataset.indices_of_class(c)
        out.append(idx[torch.randperm(len(idx), generator=generator)[:ipc]])
    return torch.cat(out)


def herding_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy herding: indices of ``k`` rows of ``features`` ``(n, d)`` whose running
    mean stays closest to the mean of all rows. Deterministic."""
    features = features.to(torch.float64)
    mu = features.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(features.shape[0], dtype=torch.bool)
    for t in range(1, k + 1):
        # the candidate whose addition moves the running mean closest to mu
        target = mu * t - running
        dist = (features - target).pow(2).sum(1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        running = running + features[i]
    return torch.tensor(chosen, dtype=torch.long)


@SELECTIONS.register("herding")
def _select_herding(dataset: ImageDataset, ipc: int, generator: torch.Generator) -> torch.Tensor:
    # Herding in the space of normalised pixels: needs no trained feature extractor, so
    # the reference does not depend on a network we would have to train first.
    out = []
    for c in range(dataset.num_classes):
        idx = dataset.indices_of_class(c)
        feats, _ = dataset.batch(idx)
        out.append(idx[herding_order(feats.flatten(1), ipc)])
    return torch.cat(out)
