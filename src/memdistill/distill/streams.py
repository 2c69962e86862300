"""Random streams: one independent generator per path ``(seed, *path)``.

Every random choice of a distillation run comes from a stream named by where it is
used, so any part can be recomputed alone (a resumed run, another process) and draws
exactly what the uninterrupted single-process run drew.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["stream", "iteration_generator", "sample_generator"]


def stream(seed: int, *path: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of ``(seed, *path)``: seeded from ``numpy.random.SeedSequence``
    of the whole path, so distinct paths give independent streams.

    Args:
        seed: the run's seed.
        path: non-negative integers naming the stream (e.g. ``iteration, sample``).
        device: where the generator lives.
    """
    state = np.random.SeedSequence([int(seed), *(int(p) for p in path)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state % (2**63)))


def iteration_generator(seed: int, iteration: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of outer iteration ``iteration``: ``stream(seed, iteration)``."""
    return stream(seed, iteration, device=device)


def sample_generator(seed: int, iteration: int, sample: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of inner unroll ``sample`` of outer iteration ``iteration``.

    Sample 0 is :func:`iteration_generator` itself, so a run with one unroll per outer
    step (``outer.meta_batch = 1``) is unchanged; every other ``(seed, iteration, sample)``
    gets its own independent stream, ``stream(seed, iteration, sample)``, whichever
    process computes it.
    """
    if sample == 0:
        return stream(seed, iteration, device=device)
    return stream(seed, iteration, sample, device=device)
