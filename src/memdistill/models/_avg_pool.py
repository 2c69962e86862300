"""2 x 2 average pooling, stride 2, as the sum of four strided views (on the CPU).

PyTorch's CPU ``avg_pool2d`` and its backward are slow on the feature maps of an inner
step: on the `cpu` preset's inner network (width 32, 50 recalled examples) pooling and
its backward took 13 to 17% of an outer step's profiled time. Summing the four strided
views of each 2 x 2 window, and spreading a gradient back with one broadcast copy, was
faster on maps of that size, and slower on small maps and on very large tensors (the outer
loss's 1 280 real images at width 32); see ``docs/BENCHMARKS.md``, "Pooling as strided
views".

Pooling is linear. Its backward is its adjoint (each output's gradient spread over its
2 x 2 window, times 1/4), and the adjoint's backward is the pooling again, so the two
functions below differentiate into each other to any order: the meta-gradient's double
backward needs no extra derivation. The sums are the native kernel's, in its order, so
values, gradients and second derivatives are bit for bit ``F.avg_pool2d``'s in float32
and float64 (tests/test_avg_pool.py, down to whole meta-gradients).

The spread repeats each gradient along W and broadcasts the result along H, so its copy runs
over contiguous rows (faster than broadcasting both axes on the `cpu` preset's maps).

ReLU fused (:func:`relu_avg_pool_2x2`, used by the ConvNet for each ReLU followed by its
pooling): ``pool(relu(x))`` whose backward applies ReLU's mask to the spread gradient in the
same pass (``threshold_backward`` on the broadcast view), instead of materialising the spread
and then masking it. Given ReLU's output, that backward is linear in the gradient; its
adjoint is the pooling of the masked input, and the two again differentiate into each other
(ReLU's output gets no gradient from its backward, as in PyTorch). Same ops on the same
values, so the same bits as ``relu`` then ``F.avg_pool2d``, to the third derivative.

Everything else keeps ``F.avg_pool2d``: odd feature-map sizes (``ceil_mode`` or a dropped
last row), maps smaller than ``SMALLEST_MAP`` pixels, tensors above ``NATIVE_ABOVE``
elements, devices other than the CPU (not measured there), dtypes other than float32 and
float64 (a bfloat16 sum of four could round differently from the native kernel's) and
autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AvgPool2x2", "FUSE_RELU", "NATIVE_ABOVE", "SMALLEST_MAP", "avg_pool_2x2", "relu_avg_pool_2x2"]

# Above this many input elements, and on maps smaller than 16 x 16, the native kernel was
# the faster one on the 2-core CPU machine of docs/BENCHMARKS.md ("Pooling as strided
# views": 1 280 real images at width 32, 42 M elements; 8 x 8 maps).
NATIVE_ABOVE = 1 << 24
SMALLEST_MAP = 16 * 16
# Switch for benchmarks (bench/avg_pool.py) and tests: False gives ReLU and pooling apart.
FUSE_RELU = True


def _pool(x: Tensor) -> Tensor:
    return (x[:, :, 0::2, 0::2] + x[:, :, 0::2, 1::2] + x[:, :, 1::2, 0::2] + x[:, :, 1::2, 1::2]) * 0.25


def _spread(g: Tensor) -> Tensor:
    n, c, h, w = g.shape
    return _wide(g).reshape(n, c, 2 * h, 2 * w)


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return _pool(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return _Spread.apply(g)


class _Spread(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: Tensor) -> Tensor:
        return _spread(g)

    @staticmethod
    def backward(ctx, u: Tensor) -> Tensor:
        return _Pool.apply(u)


def _wide(g: Tensor) -> Tensor:
    """``g * 0.25`` repeated along W, then broadcast (a stride-0 view) along H: the
    spread's values as an (n, c, h, 2, 2w) view with a contiguous last dimension."""
    n, c, h, w = g.shape
    return (g * 0.25).repeat_interleave(2, dim=-1)[:, :, :, None, :].expand(n, c, h, 2, 2 * w)


def _relu_spread(g: Tensor, z: Tensor) -> Tensor:
    """ReLU's backward of the spread ``g`` at ReLU output ``z``, in one pass over the map."""
    n, c, h, w = g.shape
    return torch.ops.aten.threshold_backward(_wide(g), z.view(n, c, h, 2, 2 * w), 0).view(n, c, 2 * h, 2 * w)


class _ReluPool(torch.autograd.Function):
    """``pool(relu(x))``; its backward is ReLU's backward of the spread, fused."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        z = torch.relu(x)
        ctx.save_for_backward(z)
        return _pool(z)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (z,) = ctx.saved_tensors
        return _ReluSpread.apply(g, z)


class _ReluSpread(torch.autograd.Function):
    """``threshold_backward(spread(g), z, 0)``: linear in ``g``; ``z`` gets no gradient
    (as ReLU's backward gives none to its saved output)."""

    @staticmethod
    def forward(ctx, g: Tensor, z: Tensor) -> Tensor:
        ctx.save_for_backward(z)
        return _relu_spread(g, z)

    @staticmethod
    def backward(ctx, u: Tensor):
        (z,) = ctx.saved_tensors
        return _ReluPoolOf.apply(u, z), None


class _ReluPoolOf(torch.autograd.Function):
    """The adjoint of :class:`_ReluSpread`: ``pool(threshold_backward(u, z, 0))``."""

    @staticmethod
    def forward(ctx, u: Tensor, z: Tensor) -> Tensor:
        ctx.save_for_backward(z)
        return _pool(torch.ops.aten.threshold_backward(u, z, 0))

    @staticmethod
    def backward(ctx, g: Tensor):
        (z,) = ctx.saved_tensors
        return _ReluSpread.apply(g, z), None


def _views_apply(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4
            and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0 and x.numel() <= NATIVE_ABOVE
            and x.shape[-2] * x.shape[-1] >= SMALLEST_MAP
            and not torch.is_autocast_enabled("cpu"))


def avg_pool_2x2(x: Tensor, ceil_mode: bool = False) -> Tensor:
    """``F.avg_pool2d(x, 2, 2, ceil_mode=ceil_mode)``, by strided views where that is faster."""
    if _views_apply(x):  # even sizes: ceil_mode changes nothing
        return _Pool.apply(x)
    return F.avg_pool2d(x, 2, 2, ceil_mode=ceil_mode)


def relu_avg_pool_2x2(x: Tensor) -> Tensor:
    """``avg_pool_2x2(relu(x))``, the two fused where the views apply (same values and
    derivatives, bit for bit); a non-contiguous ``x`` (e.g. channels-last) is not fused."""
    if FUSE_RELU and _views_apply(x) and x.is_contiguous():
        return _ReluPool.apply(x)
    return avg_pool_2x2(torch.relu(x))


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` computed by :func:`avg_pool_2x2` (same values, same module type)."""

    def __init__(self, ceil_mode: bool = False) -> None:
        super().__init__(2, 2, ceil_mode=ceil_mode)

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool_2x2(x, self.ceil_mode)
