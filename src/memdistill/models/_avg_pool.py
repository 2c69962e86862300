"""2 x 2 average pooling, stride 2, as the sum of four strided views (on the CPU).

PyTorch's CPU ``avg_pool2d`` and its backward are slow on the feature maps of an inner
step: on the `cpu` preset's inner network (width 32, 50 recalled examples) pooling and
its backward took about 13% of an outer step's profiled time. Summing the four strided
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

__all__ = ["AvgPool2x2", "NATIVE_ABOVE", "SMALLEST_MAP", "avg_pool_2x2"]

# Above this many input elements, and on maps smaller than 16 x 16, the native kernel was
# the faster one on the 2-core CPU machine of docs/BENCHMARKS.md ("Pooling as strided
# views": 1 280 real images at width 32, 42 M elements; 8 x 8 maps).
NATIVE_ABOVE = 1 << 24
SMALLEST_MAP = 16 * 16


def _pool(x: Tensor) -> Tensor:
    return (x[:, :, 0::2, 0::2] + x[:, :, 0::2, 1::2] + x[:, :, 1::2, 0::2] + x[:, :, 1::2, 1::2]) * 0.25


def _spread(g: Tensor) -> Tensor:
    n, c, h, w = g.shape
    return (g * 0.25)[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


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


class AvgPool2x2(nn.AvgPool2d):
    """``nn.AvgPool2d(2, 2)`` computed by :func:`avg_pool_2x2` (same values, same module type)."""

    def __init__(self, ceil_mode: bool = False) -> None:
        super().__init__(2, 2, ceil_mode=ceil_mode)

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool_2x2(x, self.ceil_mode)
