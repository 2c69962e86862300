"""A model pool: inner networks that live on between outer steps.

With fresh-network unrolls every outer step trains a new network for ``T`` steps from
its initialisation, so it costs ``T`` steps and teaches the memory only what serves the
first ``T`` steps of training (the short-horizon bias). A pool keeps ``P`` networks,
each with its parameters, optimiser state and step count. Outer step ``i`` takes member
``(i * M + j) mod P`` for its unroll ``j`` (``M = outer.meta_batch``), unrolls
``W = outer.pool_unroll`` steps from the member's current state on recalled examples
with the exact meta-gradient through those ``W`` steps, and keeps the advanced state.
So each outer step costs ``W`` steps while the members, together, cover the whole
training trajectory up to ``outer.pool_max_steps``.

Lifetimes: a member is re-initialised (a new draw, from its own random stream) when it
is taken having done at least its lifetime's steps: ``T_max`` (``pool_max_steps``),
except for the first generation of member ``m``, which lives
``ceil(T_max * (m + 1) / P)`` steps, so that from the first re-starts on the members
sit at staggered points of the trajectory instead of moving in lockstep. A member whose
unroll ended in non-finite values is re-initialised at its next use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["Member", "ModelPool"]

Tensors = tuple[torch.Tensor, ...]
NewMember = Callable[[int, int], tuple[Tensors, Tensors]]
"""``new_member(index, generation) -> (params, opt_state)``: a fresh network's draw."""


@dataclass
class Member:
    """One network of the pool: where its next unroll starts."""

    params: Tensors
    state: Tensors
    steps: int = 0  # inner steps done since its initialisation
    generation: int = 0  # re-initialisations so far


@dataclass
class ModelPool:
    """``size`` members (see the module docstring); empty slots are initialised when
    first taken.

    Attributes:
        size: ``P``.
        unroll: ``W``, the inner steps of each unroll from a member.
        max_steps: ``T_max``.
        members: the current members (``None``: to be initialised at next use).
        generations: per member, the generation its next initialisation draws.
    """

    size: int
    unroll: int
    max_steps: int
    members: list[Member | None] = field(default_factory=list)
    generations: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.members:
            self.members = [None] * self.size
            self.generations = [0] * self.size

    def lifetime(self, index: int, generation: int) -> int:
        """Inner steps member ``index`` of ``generation`` lives before it re-starts."""
        if generation == 0:
            return max(1, math.ceil(self.max_steps * (index + 1) / self.size))
        return self.max_steps

    def index(self, iteration: int, sample: int, meta_batch: int) -> int:
        """The member unroll ``sample`` of outer step ``iteration`` takes."""
        return (iteration * meta_batch + sample) % self.size

    def take(self, index: int, new_member: NewMember) -> Member:
        """Member ``index`` as the next unroll starts from it: re-initialised first when
        it has lived its lifetime (or is empty)."""
        member = self.members[index]
        if member is None or member.steps >= self.lifetime(index, member.generation):
            generation = self.generations[index]
            params, state = new_member(index, generation)
            member = Member(tuple(params), tuple(state), 0, generation)
            self.members[index] = member
            self.generations[index] = generation + 1
        return member

    def advance(self, index: int, params: Tensors, state: Tensors) -> None:
        """Member ``index`` after an unroll of ``unroll`` steps ended at ``(params, state)``
        (non-finite values: it is re-initialised at its next use)."""
        member = self.members[index]
        if member is None:
            raise ValueError(f"pool member {index} advanced before it was taken")
        if not all(bool(torch.isfinite(t).all()) for t in (*params, *state) if t.is_floating_point()):
            self.members[index] = None
            return
        self.members[index] = Member(tuple(params), tuple(state), member.steps + self.unroll, member.generation)

    def state_dict(self) -> dict[str, Any]:
        """A detached copy (what checkpoints and rollback snapshots hold)."""
        members = []
        for m in self.members:
            members.append(None if m is None else {
                "params": [p.detach().clone() for p in m.params], "state": [s.detach().clone() for s in m.state],
                "steps": m.steps, "generation": m.generation})
        return {"size": self.size, "members": members, "generations": list(self.generations)}

    def load_state_dict(self, snap: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Return to ``snap`` (a :meth:`state_dict` of a pool of the same size)."""
        if snap["size"] != self.size:
            raise ValueError(f"a pool of {snap['size']} members cannot be loaded into one of {self.size}")

        def place(ts):
            return tuple(t.clone().to(device) if device is not None else t.clone() for t in ts)

        self.members = [None if m is None else Member(place(m["params"]), place(m["state"]), int(m["steps"]),
                                                      int(m["generation"])) for m in snap["members"]]
        self.generations = [int(g) for g in snap["generations"]]
