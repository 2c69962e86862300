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
  ``T`` x (parameters + optimiser state) by default; a sparser schedule
  (:class:`~.schedule.Checkpoints`: every ``k``-th state, or at most ``n`` states)
  recomputes the states it did not keep, for the same result. Since the backward pass
  differentiates the same step function, any differentiable optimiser or augmentation
  is handled correctly.
- ``window``: back-propagate only through the last ``window`` steps (truncated BPTT;
  random truncation is the caller drawing the unroll length ``N`` in ``[W, T]``).

The checkpointed skeleton (forward keeping ``(params, opt_state)`` per step, then the
reverse sweep of vector-Jacobian products) is shared by the single-process unroll and
the unroll split over processes by class (:class:`ClassSplit`); they differ only in how
one step is taken and differentiated (:class:`_WholeBatch`, :class:`_SplitBatch`).

Randomness (which slots, which classes, augmentation parameters) is drawn *before*
the unroll into one plan per step, so a recomputed step replays it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .optim import InnerOptimizer
from .schedule import Checkpoints, Schedule

__all__ = ["ClassSplit", "MetaGradient", "inner_loss", "inner_step", "meta_gradient", "UNROLL_MODES"]

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
    optimizer: InnerOptimizer,
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
    """The outcome of one unroll; the same meaning whether or not it is split.

    Attributes:
        loss: the outer loss of the whole unroll (0-dim, detached; with a
            :class:`ClassSplit` the shares are already summed over the processes).
        grads: this process's contribution to the gradient of ``loss`` with respect to
            each memory tensor (same shapes, same order). The gradient is the sum of
            the contributions of the processes taking part in the unroll: one process
            alone contributes the whole gradient; with a :class:`ClassSplit` the caller
            sums them over the processes.
        inner_losses: ``(T,)``, the training loss of each inner step (with a split:
            summed), detached, on the unroll's device: the unroll never reads a value
            back to the host (``.tolist()`` it once per outer step).
        steps: ``T``, the unroll length.
        backprop_steps: ``W``, the steps differentiated through.
        final: ``(params, opt_state)`` of the inner network after the unroll (detached):
            where a network that lives on between outer steps (a model pool) continues.
    """

    loss: torch.Tensor
    grads: Tensors
    inner_losses: torch.Tensor
    steps: int
    backprop_steps: int
    final: tuple[Tensors, Tensors] | None = None


@dataclass(frozen=True)
class ClassSplit:
    """One unroll split over processes by class.

    ``recall`` then gives this process's share of each inner batch and ``outer_loss``
    its share of the outer loss (weighted so that the shares add up to the whole
    loss).

    Attributes:
        reduce: sums a list of tensors over the processes (an all-reduce).
        weights: the weight of this process's inner loss at each step (its share of
            the step's examples); ``None``: 1 at every step.
    """

    reduce: Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]
    weights: Sequence[float] | None = None


def _leaves(ts: Sequence[torch.Tensor]) -> Tensors:
    return tuple(t.detach().requires_grad_(t.is_floating_point()) for t in ts)


def _zero(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


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
    optimizer: InnerOptimizer,
    plans: Sequence[Any],
    outer_loss: Callable[[Tensors], torch.Tensor],
    mode: str = "checkpointed",
    window: int | None = None,
    split: ClassSplit | None = None,
    init_state: Sequence[torch.Tensor] | None = None,
    checkpoints: Checkpoints | None = None,
) -> MetaGradient:
    """Gradient of the outer loss after ``len(plans)`` inner steps w.r.t. ``memory``.

    Args:
        memory: the memory tensors (bases, addressing, labels, ...), any shapes.
        recall: ``recall(memory, plan) -> (x, target)``: the inner batch of one step,
            differentiable in ``memory`` (augmentation included, replayed from ``plan``).
        forward: ``forward(params, x) -> logits``, pure (e.g. ``functional_call``).
        init_params: the network parameters the unroll starts from (freshly
            initialised, or a pool member's current ones).
        optimizer: an inner optimiser (``init``/``update``), see :mod:`.optim`.
        plans: one plan per inner step (the random choices of that step).
        outer_loss: ``outer_loss(params) -> scalar`` on real data.
        mode: ``"checkpointed"`` (default) or ``"full"``.
        window: back-propagate through the last ``window`` steps only (``None``: all).
        split: the unroll is split over processes by class (checkpointed mode only);
            see :class:`ClassSplit` and :class:`MetaGradient` for what is returned.
        init_state: the optimiser state the unroll starts from (``None``:
            ``optimizer.init(init_params)``, a fresh optimiser).
        checkpoints: which states the checkpointed reverse pass keeps
            (:class:`~.schedule.Checkpoints`; ``None``: all of them, no recomputation);
            any schedule gives the same result.
    """
    W, weights = _check_unroll(mode, len(plans), window, split)
    memory = tuple(memory)
    start = _start(init_params, init_state, optimizer)
    if mode == "full":
        if checkpoints is not None and checkpoints != Checkpoints():
            raise ConfigError("a checkpoint schedule needs mode 'checkpointed' (mode 'full' keeps every graph)")
        return _full(memory, recall, forward, start, optimizer, plans, outer_loss, W)
    if split is None:
        rule: _StepRule = _WholeBatch(forward, optimizer)
    else:
        rule = _SplitBatch(forward, optimizer, split.reduce, weights)
    return _checkpointed(memory, recall, start, plans, outer_loss, W, rule, checkpoints or Checkpoints())


def _start(init_params, init_state, optimizer: InnerOptimizer) -> tuple[Tensors, Tensors]:
    """The unroll's starting ``(params, opt_state)`` as fresh leaves."""
    params = _leaves(init_params)
    if init_state is None:
        return params, _leaves(optimizer.init(params))
    state = _leaves(init_state)
    expected = len(optimizer.init(params))
    if len(state) != expected:
        raise ConfigError(f"init_state has {len(state)} tensors; this inner optimiser's state has {expected}")
    return params, state


def _check_unroll(mode: str, T: int, window: int | None, split: ClassSplit | None) -> tuple[int, list[float]]:
    """``(W, inner-loss weights)`` of a valid unroll of ``T`` steps, else :class:`ConfigError`."""
    if mode not in UNROLL_MODES:
        raise ConfigError(f"unknown unroll mode {mode!r}; valid: {', '.join(UNROLL_MODES)}")
    if T < 1:
        raise ConfigError("the inner loop needs at least one step")
    W = T if window is None else int(window)
    if not 1 <= W <= T:
        raise ConfigError(f"window must be in [1, {T}] (the unroll length), got {window}")
    weights = [1.0] * T
    if split is not None:
        if mode != "checkpointed":
            raise ConfigError("an unroll split over processes needs mode 'checkpointed', not " + repr(mode))
        if split.weights is not None:
            weights = [float(w) for w in split.weights]
        if len(weights) != T:
            raise ConfigError(f"ClassSplit.weights needs one weight per inner step ({T}), got {len(weights)}")
    return W, weights


def _full(memory, recall, forward, start, optimizer, plans, outer_loss, W) -> MetaGradient:
    """Plain autograd through the last ``W`` steps (the reference)."""
    T = len(plans)
    params, state = start
    inner_losses: list[torch.Tensor] = []
    frozen = tuple(m.detach() for m in memory)
    for t in range(T - W):  # steps before the window: plain training, no graph to the memory
        with torch.no_grad():
            batch = recall(frozen, plans[t])
        params, state, loss = inner_step(params, state, batch, forward, optimizer, create_graph=False)
        params, state = _leaves(params), _leaves(state)
        inner_losses.append(loss)
    mem = _leaves(memory)
    for t in range(T - W, T):
        params, state, loss = inner_step(params, state, recall(mem, plans[t]), forward, optimizer, create_graph=True)
        inner_losses.append(loss)
    out = outer_loss(params)
    grads = torch.autograd.grad(out, mem, allow_unused=True)
    final = (tuple(p.detach() for p in params), tuple(s.detach() for s in state))
    return MetaGradient(out.detach(), tuple(_zero(g, m) for g, m in zip(grads, mem)), torch.stack(inner_losses), T, W,
                        final)


class _StepRule(Protocol):
    """How the checkpointed skeleton takes one inner step and differentiates it."""

    optimizer: InnerOptimizer

    def step(self, params: Tensors, state: Tensors, batch, t: int) -> tuple[Tensors, Tensors, torch.Tensor]:
        """The step without a graph to the memory: new params, new state, inner loss."""
        ...

    def outer(self, out: torch.Tensor, final: Tensors) -> tuple[Tensors, torch.Tensor]:
        """The adjoint of the final parameters and the (whole) outer loss."""
        ...

    def reverse(self, p_t: Tensors, s_t: Tensors, batch, mem: Tensors, adj_params: Tensors, adj_state: Tensors,
                t: int) -> tuple[Tensors, Tensors, Sequence[torch.Tensor | None]]:
        """The vector-Jacobian product of step ``t`` (recomputed from ``p_t, s_t``):
        the adjoints of its input parameters and state, and its memory gradient."""
        ...


def _checkpointed(memory: Tensors, recall: Recall, start: tuple[Tensors, Tensors], plans, outer_loss, W: int,
                  rule: _StepRule, checkpoints: Checkpoints) -> MetaGradient:
    """Forward through the unroll keeping the states ``(params, opt_state)`` of the last
    ``W`` steps that ``checkpoints`` chooses (all of them by default), each packed into
    one flat buffer (one allocation instead of dozens); then backwards, recompute each
    step with a graph (and, first, its state from the nearest kept one where it was not
    kept) and take its vector-Jacobian product, carrying the adjoints of the parameters
    *and* the optimiser state. The first pass through each step records its loss."""
    T = len(plans)
    sweep = _Sweep(memory, recall, plans, rule, start)
    cur = sweep.start
    for t in range(T - W):  # steps before the window: plain training, nothing kept
        cur = sweep.advance(cur, t)
    state_bytes = sum(x.numel() * x.element_size() for x in cur)
    schedule = checkpoints.schedule(W, state_bytes)
    kept: list[tuple[int, torch.Tensor]] = [(0, _pack(cur))]  # (window position, packed state)
    del cur  # kept packed: do not hold it twice

    mem = _leaves(memory)
    acc = [torch.zeros_like(m) for m in mem]
    adj_params: Tensors = ()
    adj_state: Tensors = ()
    for k in range(W - 1, -1, -1):
        cur = sweep.recover(kept, k, T - W, schedule)
        t = T - W + k
        if k == W - 1:  # the last step: finish the forward pass, seed the adjoints
            end = sweep.advance(cur, t)
            final = end[: sweep.n_p]
            ends = (tuple(p.detach() for p in final), tuple(s.detach() for s in end[sweep.n_p :]))
            adj_params, out = rule.outer(outer_loss(final), final)
            adj_state = tuple(torch.zeros_like(s) for s in end[sweep.n_p :])
            del end
        adj_params, adj_state, g_mem = rule.reverse(cur[: sweep.n_p], cur[sweep.n_p :], recall(mem, plans[t]), mem,
                                                    adj_params, adj_state, t)
        for i, gi in enumerate(g_mem):
            if gi is not None:
                acc[i] += gi
    return MetaGradient(out, tuple(acc), torch.stack(sweep.losses), T, W, ends)


class _Sweep:
    """Forward steps of the checkpointed unroll without a graph to the memory, and the
    recovery of a state from the nearest kept one (:class:`.schedule.Schedule`)."""

    def __init__(self, memory: Tensors, recall: Recall, plans, rule: _StepRule, start: tuple[Tensors, Tensors]):
        self.frozen = tuple(m.detach() for m in memory)
        self.recall, self.plans, self.rule = recall, plans, rule
        self.start = start[0] + start[1]
        self.n_p = len(start[0])
        self.layout = [(x.shape, x.dtype) for x in self.start]
        self.losses: list[torch.Tensor] = []  # device tensors: no host synchronisation per step

    def advance(self, cur: Tensors, t: int) -> Tensors:
        """The state after step ``t`` from the state ``cur`` before it (fresh leaves)."""
        with torch.no_grad():
            batch = self.recall(self.frozen, self.plans[t])
        params, state, loss = self.rule.step(cur[: self.n_p], cur[self.n_p :], batch, t)
        if t == len(self.losses):  # the first pass through step t
            self.losses.append(loss)
        return _leaves(tuple(params) + tuple(state))

    def recover(self, kept: list[tuple[int, torch.Tensor]], k: int, offset: int, schedule: Schedule) -> Tensors:
        """The state at window position ``k`` (absolute step ``offset + k``): the kept one
        (then released), else recomputed from the last kept one, keeping on the way the
        positions ``schedule`` asks for. ``kept`` holds positions ``<= k``, in order."""
        p, packed = kept[-1]
        if p == k:
            kept.pop()
            return _leaves(_unpack(packed, self.layout))
        cur = _leaves(_unpack(packed, self.layout))
        while p < k:
            q = schedule.next_position(p, k, len(kept))
            for i in range(p, q):
                cur = self.advance(cur, offset + i)
            p = q
            if p < k:
                kept.append((p, _pack(cur)))
        return cur


class _WholeBatch:
    """One process computes each step on its whole batch."""

    def __init__(self, forward: Forward, optimizer: InnerOptimizer):
        self.forward, self.optimizer = forward, optimizer

    def step(self, params, state, batch, t):
        return inner_step(params, state, batch, self.forward, self.optimizer, create_graph=False)

    def outer(self, out, final):
        return torch.autograd.grad(out, final), out.detach()

    def reverse(self, p_t, s_t, batch, mem, adj_params, adj_state, t):
        new_p, new_s, _ = inner_step(p_t, s_t, batch, self.forward, self.optimizer, create_graph=True)
        # vector-Jacobian product of this step, w.r.t. its inputs and the memory
        n_p, n_s = len(p_t), len(s_t)
        g = torch.autograd.grad(new_p + new_s, p_t + s_t + mem, grad_outputs=adj_params + adj_state,
                                allow_unused=True)
        return (tuple(_zero(gi, p) for gi, p in zip(g[:n_p], p_t)),
                tuple(_zero(gi, s) for gi, s in zip(g[n_p : n_p + n_s], s_t)), g[n_p + n_s :])


class _SplitBatch:
    """Each process computes each step on its share of the batch (:class:`ClassSplit`).

    Every process holds the same parameters; at each step it computes the gradient of
    its weighted share of the inner loss and ``reduce`` sums the shares, so all take the
    same step as one process on the whole batch. Backwards, a step's vector-Jacobian
    product splits in two: the optimiser update's own (same on every process, no
    communication) gives the adjoint of the summed gradient ``a_g``; the Hessian-vector
    product ``d(g_share . a_g)/d(params, memory)`` is per share, and its parameter part
    is summed over processes. The memory part stays local: the caller sums it.
    """

    def __init__(self, forward: Forward, optimizer: InnerOptimizer, reduce, weights: Sequence[float]):
        self.forward, self.optimizer, self.reduce, self.weights = forward, optimizer, reduce, weights

    def _local_grad(self, p, batch, t, create_graph):
        x, y = batch
        loss = inner_loss(self.forward(p, x), y) * self.weights[t]
        return torch.autograd.grad(loss, p, create_graph=create_graph), loss

    def step(self, params, state, batch, t):
        g, loss = self._local_grad(params, batch, t, create_graph=False)
        *g, loss = self.reduce([*g, loss.detach()])
        with torch.no_grad():
            new_p, new_s = self.optimizer.update(tuple(g), state, params)
        return new_p, new_s, loss

    def outer(self, out, final):
        *adj_params, out_total = self.reduce([*torch.autograd.grad(out, final), out.detach()])
        return tuple(adj_params), out_total

    def reverse(self, p_t, s_t, batch, mem, adj_params, adj_state, t):
        g_share, _ = self._local_grad(p_t, batch, t, create_graph=True)
        g_sum = _leaves(self.reduce([gi.detach() for gi in g_share]))
        new_p, new_s = self.optimizer.update(g_sum, s_t, p_t)
        n_p, n_s = len(p_t), len(s_t)
        # the update's own VJP: identical on every process
        v = torch.autograd.grad(tuple(new_p) + tuple(new_s), p_t + s_t + g_sum,
                                grad_outputs=adj_params + adj_state, allow_unused=True)
        direct_p = [_zero(gi, p) for gi, p in zip(v[:n_p], p_t)]
        adj_state = tuple(_zero(gi, s) for gi, s in zip(v[n_p : n_p + n_s], s_t))
        adj_g = tuple(_zero(gi, p) for gi, p in zip(v[n_p + n_s :], p_t))
        # Hessian-vector product of this process's share (and its memory part)
        h = torch.autograd.grad(g_share, p_t + mem, grad_outputs=adj_g, allow_unused=True)
        hv = self.reduce([_zero(gi, p) for gi, p in zip(h[:n_p], p_t)])
        return tuple(d + e for d, e in zip(direct_p, hv)), adj_state, h[n_p:]
