"""The unrolled inner loop and its meta-gradient.

Inner problem: a freshly initialised network is trained for ``T`` steps on examples
recalled from the memory. Outer objective: the loss of the trained network on real
data. This module differentiates the outer loss with respect to the memory tensors.

All modes are derived from one pure step function
``inner_step(params, opt_state, batch) -> (params, opt_state)``:

- ``full``: plain autograd through the whole unroll (the reference; memory grows with
  ``T`` x activations).
- ``checkpointed``: the forward unroll keeps only ``(params, opt_state)`` per step; the
  reverse pass recomputes each step with a graph and takes its vector-Jacobian product,
  carrying the adjoints of parameters *and* optimiser state (momentum, Adam moments)
  backwards (reverse-mode in the style of Maclaurin et al. 2015). Memory grows with
  ``T`` x (parameters + optimiser state). Since the backward pass differentiates the
  same step function, any differentiable optimiser or augmentation is handled correctly.
- ``window``: back-propagate only through the last ``window`` steps (truncated BPTT;
  random truncation is the caller drawing the unroll length ``N`` in ``[W, T]``).

Randomness (which slots, which classes, augmentation parameters) is drawn *before*
the unroll into one plan per step, so a recomputed step replays it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["MetaGradient", "inner_loss", "inner_step", "meta_gradient", "UNROLL_MODES"]

Tensors = tuple[torch.Tensor, ...]
Forward = Callable[[Tensors, torch.Tensor], torch.Tensor]
Recall = Callable[[Tensors, Any], tuple[torch.Tensor, torch.Tensor]]
UNROLL_MODES = ("checkpointed", "full")


def inner_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for hard ``(N,)`` or soft ``(N, L)`` targets."""
    if target.ndim == 2:
        return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    return F.cross_entropy(logits, target)


def inner_step(
    params: Tensors,
    opt_state: Tensors,
    batch: tuple[torch.Tensor, torch.Tensor],
    forward: Forward,
    optimizer: Any,
    create_graph: bool,
) -> tuple[Tensors, Tensors, torch.Tensor]:
    """One inner training step: ``(params, opt_state, batch) -> (params, opt_state)``.

    Also returns the step's training loss (detached). With ``create_graph`` the result
    stays differentiable in ``params``, ``opt_state`` and the batch.
    """
    x, y = batch
    loss = inner_loss(forward(params, x), y)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    new_params, new_state = optimizer.update(grads, opt_state, params)
    return tuple(new_params), tuple(new_state), loss.detach()


@dataclass
class MetaGradient:
    """The outer loss and its gradient with respect to each memory tensor."""

    loss: torch.Tensor
    grads: Tensors
    inner_losses: list[float]
    steps: int
    backprop_steps: int


def _leaves(ts: Sequence[torch.Tensor]) -> Tensors:
    return tuple(t.detach().requires_grad_(t.is_floating_point()) for t in ts)


def _pack(ts: Tensors) -> torch.Tensor:
    dtype = ts[0].dtype
    if any(t.dtype != dtype for t in ts):
        raise ConfigError("inner parameters and optimiser state must share one dtype")
    return torch.cat([t.detach().reshape(-1) for t in ts])


def _unpack(flat: torch.Tensor, layout) -> Tensors:
    out, start = [], 0
    for shape, _ in layout:
        n = int(torch.Size(shape).numel())
        out.append(flat[start : start + n].view(shape))
        start += n
    return tuple(out)


def meta_gradient(
    memory: Sequence[torch.Tensor],
    recall: Recall,
    forward: Forward,
    init_params: Sequence[torch.Tensor],
    optimizer: Any,
    plans: Sequence[Any],
    outer_loss: Callable[[Tensors], torch.Tensor],
    mode: str = "checkpointed",
    window: int | None = None,
    reduce: Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]] | None = None,
    shard_weights: Sequence[float] | None = None,
) -> MetaGradient:
    """Gradient of the outer loss after ``len(plans)`` inner steps w.r.t. ``memory``.

    Args:
        memory: the memory tensors (bases, addressing, labels, ...), any shapes.
        recall: ``recall(memory, plan) -> (x, target)``: the inner batch of one step,
            differentiable in ``memory`` (augmentation included, replayed from ``plan``).
        forward: ``forward(params, x) -> logits``, pure (e.g. ``functional_call``).
        init_params: the freshly initialised network parameters.
        optimizer: an inner optimiser (``init``/``update``), see :mod:`.optim`.
        plans: one plan per inner step (the random choices of that step).
        outer_loss: ``outer_loss(params) -> scalar`` on real data.
        mode: ``"checkpointed"`` (default) or ``"full"``.
        window: back-propagate through the last ``window`` steps only (``None``: all).
        reduce: for one unroll split over processes by class (see :func:`_sharded`):
            sums tensors over the processes (an all-reduce). ``recall`` then gives
            this process's share of each inner batch and ``outer_loss`` its share of
            the outer loss (weighted so the shares add up to the whole loss); the
            returned memory gradient is this process's share, to be summed by the caller.
        shard_weights: with ``reduce``, the weight of this process's inner loss at
            each step (its share of the step's examples); default 1.
    """
    if mode not in UNROLL_MODES:
        raise ConfigError(f"unknown unroll mode {mode!r}; valid: {', '.join(UNROLL_MODES)}")
    T = len(plans)
    if T < 1:
        raise ConfigError("the inner loop needs at least one step")
    W = T if window is None else int(window)
    if not 1 <= W <= T:
        raise ConfigError(f"window must be in [1, {T}] (the unroll length), got {window}")
    memory = tuple(memory)
    if reduce is not None:
        if mode != "checkpointed":
            raise ConfigError("an unroll split over processes needs mode 'checkpointed', not " + repr(mode))
        weights = [1.0] * T if shard_weights is None else [float(w) for w in shard_weights]
        if len(weights) != T:
            raise ConfigError(f"shard_weights needs one weight per inner step ({T}), got {len(weights)}")
        return _sharded(memory, recall, forward, init_params, optimizer, plans, outer_loss, W, reduce, weights)
    params = _leaves(init_params)
    state = _leaves(optimizer.init(params))
    inner_losses: list[float] = []

    # Steps before the window: plain training, no graph to the memory.
    frozen = tuple(m.detach() for m in memory)
    for t in range(T - W):
        with torch.no_grad():
            batch = recall(frozen, plans[t])
        params, state, loss = inner_step(params, state, batch, forward, optimizer, create_graph=False)
        params, state = _leaves(params), _leaves(state)
        inner_losses.append(float(loss))

    if mode == "full":
        mem = _leaves(memory)
        for t in range(T - W, T):
            params, state, loss = inner_step(
                params, state, recall(mem, plans[t]), forward, optimizer, create_graph=True
            )
            inner_losses.append(float(loss))
        out = outer_loss(params)
        grads = torch.autograd.grad(out, mem, allow_unused=True)
        grads = tuple(torch.zeros_like(m) if g is None else g for m, g in zip(mem, grads))
        return MetaGradient(out.detach(), grads, inner_losses, T, W)

    # checkpointed: forward through the window keeping (params, state) per step only,
    # packed into one flat buffer per step (one allocation instead of dozens)
    layout = [(t.shape, t.dtype) for t in params + state]
    n_p = len(params)
    saved: list[torch.Tensor] = []
    for t in range(T - W, T):
        saved.append(_pack(params + state))
        with torch.no_grad():
            batch = recall(frozen, plans[t])
        params, state, loss = inner_step(params, state, batch, forward, optimizer, create_graph=False)
        params, state = _leaves(params), _leaves(state)
        inner_losses.append(float(loss))

    final = _leaves(params)
    out = outer_loss(final)
    adj_params = torch.autograd.grad(out, final)
    adj_state: Tensors = tuple(torch.zeros_like(s) for s in state)
    mem = _leaves(memory)
    acc = [torch.zeros_like(m) for m in mem]

    for k in range(W - 1, -1, -1):
        unpacked = _leaves(_unpack(saved[k], layout))
        saved[k] = None  # type: ignore[call-overload]  # free as we go
        p_t, s_t = unpacked[:n_p], unpacked[n_p:]
        new_p, new_s, _ = inner_step(
            p_t, s_t, recall(mem, plans[T - W + k]), forward, optimizer, create_graph=True
        )
        # vector-Jacobian product of this step, w.r.t. its inputs and the memory
        n_s = len(s_t)
        g = torch.autograd.grad(
            new_p + new_s, p_t + s_t + mem, grad_outputs=adj_params + adj_state, allow_unused=True
        )
        zero = lambda gi, like: torch.zeros_like(like) if gi is None else gi  # noqa: E731
        adj_params = tuple(zero(gi, p) for gi, p in zip(g[:n_p], p_t))
        adj_state = tuple(zero(gi, s) for gi, s in zip(g[n_p : n_p + n_s], s_t))
        for i, gi in enumerate(g[n_p + n_s :]):
            if gi is not None:
                acc[i] += gi
    return MetaGradient(out.detach(), tuple(acc), inner_losses, T, W)


def _sharded(memory, recall, forward, init_params, optimizer, plans, outer_loss, W, reduce, weights) -> MetaGradient:
    """The checkpointed meta-gradient of one unroll whose batches are split over processes.

    Every process holds the same parameters; at each step it computes the gradient of its
    weighted share of the inner loss and ``reduce`` sums the shares, so all take the same
    step as one process on the whole batch. Backwards, a step's vector-Jacobian product
    splits in two: the optimiser update's own (same on every process, no communication)
    gives the adjoint of the summed gradient ``a_g``; the Hessian-vector product
    ``d(g_share . a_g)/d(params, memory)`` is per share, and its parameter part is
    summed over processes. The memory part stays local: the caller sums it.
    """
    T = len(plans)
    frozen = tuple(m.detach() for m in memory)
    params = _leaves(init_params)
    state = _leaves(optimizer.init(params))
    inner_losses: list[float] = []

    def local_grad(p, batch, w, create_graph):
        x, y = batch
        loss = inner_loss(forward(p, x), y) * w
        return torch.autograd.grad(loss, p, create_graph=create_graph), loss

    layout = [(t.shape, t.dtype) for t in params + state]
    n_p = len(params)
    saved: list[torch.Tensor] = []
    for t in range(T):
        if t >= T - W:
            saved.append(_pack(params + state))
        with torch.no_grad():
            batch = recall(frozen, plans[t])
        g, loss = local_grad(params, batch, weights[t], create_graph=False)
        *g, loss = reduce([*g, loss.detach()])
        with torch.no_grad():
            new_p, new_s = optimizer.update(tuple(g), state, params)
        params, state = _leaves(new_p), _leaves(new_s)
        inner_losses.append(float(loss))

    final = _leaves(params)
    out = outer_loss(final)
    *adj_params, out_total = reduce([*torch.autograd.grad(out, final), out.detach()])
    adj_params = tuple(adj_params)
    adj_state: Tensors = tuple(torch.zeros_like(s) for s in state)
    mem = _leaves(memory)
    acc = [torch.zeros_like(m) for m in mem]
    zero = lambda gi, like: torch.zeros_like(like) if gi is None else gi  # noqa: E731

    for k in range(W - 1, -1, -1):
        unpacked = _leaves(_unpack(saved[k], layout))
        saved[k] = None  # type: ignore[call-overload]
        p_t, s_t = unpacked[:n_p], unpacked[n_p:]
        t = T - W + k
        g_share, _ = local_grad(p_t, recall(mem, plans[t]), weights[t], create_graph=True)
        g_sum = _leaves(reduce([gi.detach() for gi in g_share]))
        new_p, new_s = optimizer.update(g_sum, s_t, p_t)
        n_s = len(s_t)
        # the update's own VJP: identical on every process
        v = torch.autograd.grad(tuple(new_p) + tuple(new_s), p_t + s_t + g_sum,
                                grad_outputs=adj_params + adj_state, allow_unused=True)
        direct_p = [zero(gi, p) for gi, p in zip(v[:n_p], p_t)]
        adj_state = tuple(zero(gi, s) for gi, s in zip(v[n_p : n_p + n_s], s_t))
        adj_g = tuple(zero(gi, p) for gi, p in zip(v[n_p + n_s :], p_t))
        # Hessian-vector product of this process's share (and its memory part)
        h = torch.autograd.grad(g_share, p_t + mem, grad_outputs=adj_g, allow_unused=True)
        hv = reduce([zero(gi, p) for gi, p in zip(h[:n_p], p_t)])
        adj_params = tuple(d + e for d, e in zip(direct_p, hv))
        for i, gi in enumerate(h[n_p:]):
            if gi is not None:
                acc[i] += gi
    return MetaGradient(out_total, tuple(acc), inner_losses, T, W)

