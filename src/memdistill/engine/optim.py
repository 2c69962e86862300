"""Inner optimisers as small pure, differentiable transforms.

``update(grads, state, params) -> (new_params, new_state)`` never mutates its inputs, so
the distillation engine can differentiate through it and recompute any step exactly.
Semantics follow ``torch.optim.SGD`` and ``torch.optim.Adam`` (tested against them).
Options are validated when the optimiser is built, not mid-run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import torch

from .._registry import Registry
from ..errors import ConfigError

__all__ = ["INNER_OPTIMIZERS", "InnerOptimizer", "InnerSGD", "InnerAdam", "create_inner_optimizer", "OptState"]

Tensors = tuple[torch.Tensor, ...]
OptState = tuple[torch.Tensor, ...]
"""Flat tuple of tensors: the optimiser's state (momentum buffers, Adam moments, step)."""



@runtime_checkable
class InnerOptimizer(Protocol):
    """What the unroll needs of an inner optimiser: two pure functions.

    ``init(params)`` gives the initial state (a flat tuple of tensors, possibly empty);
    ``update(grads, state, params) -> (new_params, new_state)`` takes one step without
    mutating its inputs, differentiably in all three (the engine takes its
    vector-Jacobian product). A new optimiser registers a frozen dataclass with these
    two methods in :data:`INNER_OPTIMIZERS`; ``tests/test_engine.py`` then checks it
    against the full unroll.
    """

    def init(self, params: Tensors) -> OptState: ...

    def update(self, grads: Tensors, state: OptState, params: Tensors) -> tuple[Tensors, OptState]: ...


INNER_OPTIMIZERS: Registry[type] = Registry("inner optimizer")


def create_inner_optimizer(name: str, **options) -> InnerOptimizer:
    """The registered inner optimiser ``name`` (``sgd``, ``adam``) with ``options``,
    validated now (unknown options and bad values raise :class:`ConfigError`)."""
    cls = INNER_OPTIMIZERS.get(name)
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(
            f"inner optimizer {name!r} has no option {unknown[0]!r}; valid options: {', '.join(sorted(valid))}"
        )
    return cls(**options)


@INNER_OPTIMIZERS.register("sgd")
@dataclass(frozen=True)
class InnerSGD:
    """SGD with optional momentum, dampening, Nesterov and weight decay (as torch.optim).

    State: one momentum buffer per parameter, plus a step counter (so the first step
    initialises the buffer with the gradient, as torch.optim does).
    """

    lr: float = 0.01
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"inner sgd: lr must be > 0, got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"inner sgd: momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.dampening <= 1.0:
            raise ConfigError(f"inner sgd: dampening must be in [0, 1], got {self.dampening}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ConfigError("inner sgd: nesterov needs momentum > 0 and dampening = 0")
        if self.weight_decay < 0:
            raise ConfigError(f"inner sgd: weight_decay must be >= 0, got {self.weight_decay}")

    def init(self, params: Tensors) -> OptState:
        if self.momentum == 0:
            return ()
        return tuple(torch.zeros_like(p) for p in params) + (torch.zeros((), dtype=params[0].dtype, device=params[0].device),)

    def update(self, grads: Tensors, state: OptState, params: Tensors) -> tuple[Tensors, OptState]:
        if self.weight_decay:
            grads = tuple(g + self.weight_decay * p for g, p in zip(grads, params))
        if self.momentum == 0:
            return tuple(p - self.lr * g for p, g in zip(params, grads)), ()
        bufs, step = state[:-1], state[-1]
        first = step == 0
        # torch.optim: the first step's buffer is the gradient itself (no dampening)
        new_bufs = tuple(
            torch.where(first, g, self.momentum * b + (1.0 - self.dampening) * g) for b, g in zip(bufs, grads)
        )
        if self.nesterov:
            directions = tuple(g + self.momentum * b for g, b in zip(grads, new_bufs))
        else:
            directions = new_bufs
        new_params = tuple(p - self.lr * d for p, d in zip(params, directions))
        return new_params, new_bufs + (step + 1,)


@INNER_OPTIMIZERS.register("adam")
@dataclass(frozen=True)
class InnerAdam:
    """Adam (as torch.optim.Adam, ``amsgrad=False``).

    ``eps_root`` is added inside the square root of the second moment so that its
    derivative stays finite where a gradient is exactly zero; at the default 1e-16 the
    step differs from torch.optim by far less than float32 rounding.
    """

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    eps_root: float = 1e-16
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"inner adam: lr must be > 0, got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"inner adam: {name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0 or self.eps_root < 0 or self.weight_decay < 0:
            raise ConfigError("inner adam: eps must be > 0, eps_root and weight_decay >= 0")

    def init(self, params: Tensors) -> OptState:
        zeros = tuple(torch.zeros_like(p) for p in params)
        return zeros + tuple(torch.zeros_like(p) for p in params) + (
            torch.zeros((), dtype=params[0].dtype, device=params[0].device),
        )

    def update(self, grads: Tensors, state: OptState, params: Tensors) -> tuple[Tensors, OptState]:
        n = len(params)
        m, v, step = state[:n], state[n : 2 * n], state[-1]
        if self.weight_decay:
            grads = tuple(g + self.weight_decay * p for g, p in zip(grads, params))
        t = step + 1
        m = tuple(self.beta1 * mi + (1 - self.beta1) * g for mi, g in zip(m, grads))
        v = tuple(self.beta2 * vi + (1 - self.beta2) * g * g for vi, g in zip(v, grads))
        bc1 = 1 - self.beta1**t
        bc2_sqrt = torch.sqrt(1 - self.beta2**t)
        new_params = tuple(
            p - (self.lr / bc1) * mi / (torch.sqrt(vi + self.eps_root) / bc2_sqrt + self.eps)
            for p, mi, vi in zip(params, m, v)
        )
        return new_params, m + v + (t,)
