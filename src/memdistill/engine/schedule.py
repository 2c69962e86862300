"""Which inner states the checkpointed reverse pass keeps, and where it recomputes.

The reverse pass of the checkpointed unroll needs the state ``(params, opt_state)``
before every inner step it differentiates. Keeping all of them (the default) costs
``W`` states of memory (``W``: the steps differentiated through) and no recomputation.
A sparser schedule keeps fewer and recomputes the others from the nearest kept state,
with the same step function and the same plans, so the meta-gradient is unchanged
(bit for bit: every step is recomputed from identical inputs):

- ``every=k``: keep every ``k``-th state; in the reverse pass, recompute a segment's
  ``k - 1`` states from its first one, once. At most ``ceil(W / k) + k - 1`` states are
  held, for about one extra no-graph forward step per inner step (``k = 1``: today's
  dense storage, no recomputation; ``"auto"``: ``k = ceil(sqrt(W))``, ~``2 sqrt(W)``
  states).
- ``max_states=n`` (or ``memory_mb``, converted to ``n`` with the size of one state):
  a binomial (revolve-like) schedule that never holds more than ``n`` states, whatever
  ``W``: memory flat in the unroll length, for more recomputation (each step is
  recomputed about ``r`` times with ``C(n + r, r) >= W``; e.g. ``n = 10``, ``W = 150``:
  about 2.5 extra forward steps per inner step). Split points minimise the number of
  recomputed steps (dynamic programming, cached per ``(W, n)``).

Positions are relative to the first differentiated step: position ``j`` is the state
before step ``j`` of the window; position 0 (the window's start) is always kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import ConfigError

__all__ = ["Checkpoints", "Schedule"]


@dataclass(frozen=True)
class Checkpoints:
    """The user's choice of schedule (see the module docstring).

    Attributes:
        every: keep every ``every``-th state (an int >= 1; 1: all of them, the default),
            or ``"auto"``: ``ceil(sqrt(W))``.
        max_states: binomial schedule holding at most this many states (>= 1).
        memory_mb: binomial schedule holding at most as many states as fit in this many
            MiB (at least one); overrides ``every``.
    """

    every: int | str = 1
    max_states: int | None = None
    memory_mb: float | None = None

    def __post_init__(self) -> None:
        ok_every = self.every == "auto" or (isinstance(self.every, int) and self.every >= 1)
        if not ok_every:
            raise ConfigError(f"checkpoint segment must be an int >= 1 or 'auto', got {self.every!r}")
        if self.max_states is not None and self.memory_mb is not None:
            raise ConfigError("give the checkpoint budget as max_states or memory_mb, not both")
        if self.max_states is not None and self.max_states < 1:
            raise ConfigError(f"max_states must be >= 1 (the window's first state is always kept), "
                              f"got {self.max_states}")
        if self.memory_mb is not None and not self.memory_mb > 0:
            raise ConfigError(f"checkpoint memory_mb must be > 0, got {self.memory_mb}")
        if self.every != 1 and (self.max_states is not None or self.memory_mb is not None):
            raise ConfigError("a checkpoint budget (max_states / memory_mb) chooses the schedule itself: "
                              "leave every at 1")

    def schedule(self, W: int, state_bytes: int) -> "Schedule":
        """The schedule for a window of ``W`` steps whose states take ``state_bytes`` each."""
        n = self.max_states
        if self.memory_mb is not None:
            n = max(1, int(self.memory_mb * 2**20 // max(state_bytes, 1)))
        if n is not None:
            return Schedule(W, every=1 if n >= W else None, max_states=min(n, W))
        k = math.ceil(math.sqrt(W)) if self.every == "auto" else int(self.every)
        return Schedule(W, every=min(k, W), max_states=None)


@dataclass(frozen=True)
class Schedule:
    """Where to keep states in a window of ``W`` steps: fixed segments of ``every``
    steps, or (``every=None``) a binomial schedule holding at most ``max_states``."""

    W: int
    every: int | None
    max_states: int | None

    def next_position(self, p: int, t: int, held: int) -> int:
        """From the state at position ``p``, on the way to the state at ``t > p`` (the
        step to differentiate next) with ``held`` states kept: the next position to keep
        (``< t``), or ``t`` when nothing is to be kept on the way."""
        if self.every is not None:
            k = self.every
            if p // k == t // k:  # inside t's segment: keep every state of it
                return p + 1
            return min((p // k + 1) * k, t)
        free = self.max_states - held
        if free <= 0:
            return t
        length = t - p + 1
        if free >= length - 1:
            return p + 1
        return p + int(_recompute_table(self.W, self.max_states - 1)[1][free, length])


@lru_cache(maxsize=32)
def _recompute_table(W: int, S: int) -> tuple[np.ndarray, np.ndarray]:
    """``cost[s, l]``: fewest no-graph steps to reverse ``l`` steps from a kept state with
    ``s`` more states allowed; ``split[s, l]``: the offset of the next kept state that
    achieves it. ``cost[s, l] = min_m m + cost[s - 1, l - m] + cost[s, m]``: advance ``m``
    steps and keep that state, reverse the right part with one state fewer, then the
    left part with the state freed again (``cost[0, l] = l (l - 1) / 2``)."""
    ls = np.arange(W + 1, dtype=np.int64)
    cost = np.zeros((S + 1, W + 1), dtype=np.int64)
    split = np.ones((S + 1, W + 1), dtype=np.int64)
    cost[0] = np.maximum(ls * (ls - 1) // 2, 0)
    for s in range(1, S + 1):
        for length in range(2, W + 1):
            m = np.arange(1, length)
            total = m + cost[s - 1, length - m] + cost[s, m]
            i = int(np.argmin(total))
            cost[s, length], split[s, length] = total[i], m[i]
    return cost, split
