"""A batch-mean loss whose first derivatives are computed a chunk of rows at a time.

The outer loss of an unroll is a mean over the real batch (640 images in the reference
protocol). Its forward and backward in one piece keep every activation of every image at
once: at width 128 and 32 x 32 maps one feature map of 640 images is 335 MB, and the real
batch's activations are most of an outer step's peak memory. On a CPU such blocks are
also fresh pages on every outer step (glibc maps blocks that large anew each time), and
faulting them in costs as much as the arithmetic.

:func:`chunked_mean` returns the same loss with the same first derivatives, computed
chunk by chunk inside the forward: for each chunk of rows the chunk's loss and its
gradient in the parameters, weighted by the chunk's share of the batch, summed over the
chunks. Only one chunk's activations are alive at a time. The backward then multiplies the
summed gradient by the incoming one. Exact for a network that treats rows independently
(instance, layer or group norm, no norm; **not** batch norm, whose statistics depend on
the whole batch: the caller must not chunk such a network); the sums differ from the
one-piece loss only in float rounding. First derivatives only: asking for a graph of the
gradient (``create_graph=True``) raises (the engine differentiates the outer loss once).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["chunked_mean"]

Loss = Callable[[tuple[Tensor, ...], Tensor, Tensor], Tensor]


def chunked_mean(loss: Loss, params: Sequence[Tensor], x: Tensor, y: Tensor, chunk: int,
                 row_weight: Tensor | None = None) -> Tensor:
    """``loss(params, x, y)`` computed ``chunk`` rows at a time.

    Args:
        loss: ``loss(params, x, y) -> scalar``, a mean over the rows of ``x`` (a weighted
            mean ``sum(w_i l_i) / sum(w_i)`` when ``row_weight`` gives the ``w_i``), with rows
            independent of each other.
        params: the (floating-point) tensors the result is differentiated in.
        x, y: the batch (``y`` indexed along its first dimension as ``x``); ``x`` is data
            (its gradient is not computed).
        chunk: rows per chunk; a batch of at most ``chunk`` rows, or a differentiable ``x``,
            is computed in one piece by ``loss`` itself.
        row_weight: ``(N,)`` the weight of each row in ``loss``'s weighted mean (``None``:
            a plain mean).
    """
    params = tuple(params)
    n = x.shape[0]
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if n <= chunk or x.requires_grad:
        return loss(params, x, y)
    if row_weight is None:
        shares = [min(chunk, n - i) / n for i in range(0, n, chunk)]
    else:
        sums = torch.stack([row_weight[i : i + chunk].sum() for i in range(0, n, chunk)])
        shares = (sums / sums.sum()).tolist()  # one read-back per call (the weights are data)
    return _ChunkedMean.apply(loss, x, y, chunk, shares, *params)


class _ChunkedMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss: Loss, x: Tensor, y: Tensor, chunk: int, shares: list[float], *params: Tensor):
        leaves = tuple(p.detach().requires_grad_() for p in params)
        total = None
        grads: list[Tensor | None] = [None] * len(params)
        with torch.enable_grad():
            for k, i in enumerate(range(0, x.shape[0], chunk)):
                if shares[k] == 0.0:  # a chunk without weight (its weighted mean is 0 / 0)
                    continue
                part = loss(leaves, x[i : i + chunk], y[i : i + chunk]) * shares[k]
                for j, g in enumerate(torch.autograd.grad(part, leaves, allow_unused=True)):
                    if g is not None:
                        grads[j] = g if grads[j] is None else grads[j].add_(g)
                part = part.detach()
                total = part if total is None else total + part
        ctx.present = [g is not None for g in grads]
        ctx.save_for_backward(*[g for g in grads if g is not None])
        return total if total is not None else x.new_zeros(())

    @staticmethod
    def backward(ctx, g_out: Tensor):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative would be asked of constants
            raise RuntimeError("a chunked outer loss (outer.real_chunk) has first derivatives only, and a graph "
                               "of its gradient was asked for (create_graph=True): set outer.real_chunk=-1 to "
                               "compute the loss in one piece")
        saved = iter(ctx.saved_tensors)
        out = [g_out * next(saved) if present else None for present in ctx.present]
        return (None, None, None, None, None, *out)
