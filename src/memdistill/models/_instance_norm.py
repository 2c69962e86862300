"""Instance normalisation with a hand-derived double backward.

The meta-gradient differentiates every inner step's gradient once more (a Hessian-vector
product per step). PyTorch's ``group_norm`` gets there by re-expressing its backward in
dozens of elementwise operations when the graph is kept (``create_graph=True``), and
autograd then differentiates those: about a quarter of an outer step's time at width 128.
Here the backward is one native kernel (``native_group_norm_backward``, as in plain
training) and its own backward is derived by hand, written so that it makes about a dozen
passes over the feature maps and never forms the normalised activations.

Derivation, for one instance (one sample, one channel) of ``M`` values ``x``, mean ``m``,
``r = 1 / sqrt(var + eps)``, ``xh = (x - m) r``, ``y = w xh + b``, and means ``<.>`` over
the instance: the backward of an upstream ``g`` is

    gx = r w (g - <g> - xh <g xh>),   gw = sum(g xh),   gb = sum(g).

For cotangents ``(u, vw, vb)`` of ``(gx, gw, gb)``, with ``L = sum(u gx) + vw gw + vb gb``:

    dL/dg = r w (u - <u> - xh <u xh>) + vw xh + vb
    dL/dw = M r (<u g> - <g><u> - <g xh><u xh>)                (summed over the batch)
    dL/dx = r (G - <G> - xh <G xh>) - r xh L_inst / M,   with
    G = vw g - r w (g <u xh> + <g xh> u)   (the cotangent of xh)

where ``L_inst = sum(u gx) = M r w (<u g> - <g><u> - <g xh><u xh>)`` carries the explicit
dependence of ``gx`` on ``r``. Every
``<. xh>`` is a per-instance scalar computed from ``<. x>`` and ``m``, so the results are
affine combinations of ``x``, ``g`` and ``u`` with per-instance coefficients (see the code).
The float64 tests check it against autograd through ``group_norm`` (values, gradients,
second derivatives, and whole meta-gradients).

Under autocast (``inner.precision = "bfloat16"``) a convolution's bfloat16 output meets
float32 affine parameters: it is normalised in float32 by the same functions and cast back,
as ``group_norm`` itself computes that mix.

Third derivatives are refused with a clear error (:class:`_NoThirdOrder`): nothing in this
library takes them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
import torch.nn.functional as F

__all__ = ["InstanceNorm2d", "instance_norm"]


class _InstanceNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        n, c, h, w = x.shape
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, h * w, c, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight, mean, rstd = ctx.saved_tensors
        gx, gw, gb = _InstanceNormBackward.apply(g, x, weight, mean, rstd)
        return gx, gw, gb, None


class _InstanceNormBackward(torch.autograd.Function):
    """``(g, x, weight, mean, rstd) -> (gx, gw, gb)``: the first backward, differentiable
    once more in ``g``, ``x`` and ``weight`` (``mean`` and ``rstd`` are functions of ``x``
    that the hand-derived formulas account for)."""

    @staticmethod
    def forward(ctx, g: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor):
        n, c, h, w = x.shape
        g = g.contiguous()
        gx, gw, gb = torch.ops.aten.native_group_norm_backward(g, x, mean, rstd, weight, n, c, h * w, c,
                                                               [True, True, True])
        ctx.save_for_backward(g, x, weight, mean, rstd)
        return gx, gw, gb

    @staticmethod
    def backward(ctx, u: Tensor | None, vw: Tensor | None, vb: Tensor | None):
        g, x, weight, mean, rstd = ctx.saved_tensors
        with torch.no_grad():
            d_g, d_x, d_weight = _second_order(g, x, weight, mean, rstd, u, vw, vb)
        graph = [t for t in (g, x, weight, u, vw, vb) if t is not None and t.requires_grad]
        if torch.is_grad_enabled() and graph:  # a graph was asked for: a third derivative
            d_g, d_x, d_weight = _NoThirdOrder.apply(d_g, d_x, d_weight, *graph)
        return d_g, d_x, d_weight, None, None


class _NoThirdOrder(torch.autograd.Function):
    """Passes the second-order results through; differentiating them raises."""

    @staticmethod
    def forward(ctx, d_g: Tensor, d_x: Tensor, d_weight: Tensor, *graph: Tensor):
        return d_g.clone(), d_x.clone(), d_weight.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("memdistill's instance norm has first and second derivatives only (the "
                           "meta-gradient needs no more); a third derivative was asked for. Use "
                           "norm='group' with num_groups equal to the width for plain torch group_norm")


def _second_order(g: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, u: Tensor | None,
                  vw: Tensor | None, vb: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """The cotangents of ``(g, x, weight)`` for cotangents ``(u, vw, vb)`` of the first
    backward's ``(gx, gw, gb)`` (the module docstring's formulas)."""
    n, c, h, w = x.shape
    size = h * w
    u = torch.zeros_like(x) if u is None else u.contiguous()
    vw = torch.zeros_like(weight) if vw is None else vw
    vb = torch.zeros_like(weight) if vb is None else vb
    m = mean.view(n, c, 1, 1)
    r = rstd.view(n, c, 1, 1)
    dims = (2, 3)
    # the per-instance means, one product buffer reused: <g x>, <u x>, <u g>, <g>, <u>
    buf = torch.mul(g, x)
    gx_mean = buf.mean(dims, keepdim=True)
    torch.mul(u, x, out=buf)
    ux_mean = buf.mean(dims, keepdim=True)
    torch.mul(u, g, out=buf)
    ug_mean = buf.mean(dims, keepdim=True)
    del buf
    g_mean = g.mean(dims, keepdim=True)
    u_mean = u.mean(dims, keepdim=True)
    g_xh = r * (gx_mean - m * g_mean)  # <g xh>
    u_xh = r * (ux_mean - m * u_mean)  # <u xh>
    inner = ug_mean - g_mean * u_mean - g_xh * u_xh  # L_inst / (r w M)
    alpha = r * weight.view(1, c, 1, 1)
    d_weight = (r * inner).sum((0, 2, 3)) * size
    # dL/dg = alpha u + beta xh + gamma, xh = r (x - m)
    beta = vw.view(1, c, 1, 1) - alpha * u_xh
    gamma = vb.view(1, c, 1, 1) - alpha * u_mean
    beta_r = beta * r
    d_g = torch.addcmul(gamma - beta_r * m, beta_r, x).addcmul_(alpha, u)
    # G = beta g + delta u; dL/dx = r G - r <G> + eps_xh xh
    delta = -alpha * g_xh
    eps_xh = -r * (beta * g_xh + delta * u_xh) - r * alpha * inner
    zeta = -r * (beta * g_mean + delta * u_mean)
    eps_r = eps_xh * r
    d_x = torch.addcmul(zeta - eps_r * m, eps_r, x).addcmul_(r * beta, g).addcmul_(r * delta, u)
    return d_g, d_x, d_weight


def instance_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """``F.group_norm(x, C, weight, bias, eps)`` for ``x`` of shape (N, C, H, W): the same
    values, with the double backward of this module.

    A reduced-precision ``x`` (bfloat16 or float16, what autocast makes of a convolution's
    output) with float32 affine parameters is normalised in float32 and the result cast
    back to ``x``'s dtype: ``F.group_norm`` also computes such mixed inputs in float32,
    and its double backward would otherwise run as dozens of reduced-precision
    elementwise operations. Other shapes, other dtype mixes and affine-free calls take
    ``F.group_norm``."""
    if x.ndim != 4 or weight is None or bias is None or weight.dtype != bias.dtype:
        return F.group_norm(x, x.shape[1], weight, bias, eps)
    if x.dtype == weight.dtype:
        return _InstanceNorm.apply(x.contiguous(), weight, bias, eps)
    if x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == torch.float32:
        return _InstanceNorm.apply(x.float().contiguous(), weight, bias, eps).to(x.dtype)
    return F.group_norm(x, x.shape[1], weight, bias, eps)


class InstanceNorm2d(nn.GroupNorm):
    """``GroupNorm(C, C)`` (per-sample, per-channel statistics, a learned per-channel
    affine) computed by :func:`instance_norm`: same parameters, names and values as
    ``nn.GroupNorm(C, C)``, a faster double backward."""

    def __init__(self, channels: int, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(channels, channels, eps=eps, affine=True, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return instance_norm(x, self.weight, self.bias, self.eps)
