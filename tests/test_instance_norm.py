"""The instance norm with a hand-derived double backward (models/_instance_norm.py),
against autograd through PyTorch's own ``group_norm`` in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _meta_problem import convnet_meta_problem, replace_modules
from memdistill.engine import create_inner_optimizer, meta_gradient
from memdistill.models import create_model
from memdistill.models._instance_norm import InstanceNorm2d, instance_norm


def _inputs(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 2 + 0.5).requires_grad_()
    w = (torch.randn(shape[1], generator=g, dtype=dtype)).requires_grad_()
    b = torch.randn(shape[1], generator=g, dtype=dtype).requires_grad_()
    return x, w, b


def _reference(x, w, b, eps=1e-5):
    return F.group_norm(x, x.shape[1], w, b, eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_equal_group_norm_bitwise(dtype):
    x, w, b = _inputs((4, 6, 5, 7), dtype=dtype)
    assert torch.equal(instance_norm(x, w, b), _reference(x, w, b))


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (3, 2, 5, 3), (1, 4, 2, 1)])
def test_first_and_second_derivatives_pass_gradcheck(shape):
    x, w, b = _inputs(shape, seed=sum(shape))
    assert torch.autograd.gradcheck(instance_norm, (x, w, b))
    assert torch.autograd.gradgradcheck(instance_norm, (x, w, b))


def test_second_derivatives_equal_autograd_through_group_norm():
    """A Hessian-vector product of a loss through the norm, in every argument, against
    the same product through ``F.group_norm``; a bias-free upstream loss as well, so a
    missing cotangent (``None``) is covered."""
    for fn in (lambda y: (y.sin() * y).sum(), lambda y: (y * y).sum()):
        results = []
        for norm in (instance_norm, _reference):
            x, w, b = _inputs((3, 4, 6, 5), seed=7)
            grads = torch.autograd.grad(fn(norm(x, w, b) ** 2), (x, w, b), create_graph=True)
            gen = torch.Generator().manual_seed(2)
            vs = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in grads]
            hvp = torch.autograd.grad(grads, (x, w, b), grad_outputs=vs)
            results.append([*grads, *hvp])
        for ours, ref in zip(*results):
            assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)
            assert float(ref.detach().abs().sum()) > 0


def _meta_problem(norm_cls):
    def swap(model):
        def plain(child):
            layer = norm_cls(child.num_groups, child.num_channels).double()
            layer.load_state_dict(child.state_dict())
            return layer

        replace_modules(model, InstanceNorm2d, plain)

    return convnet_meta_problem(swap if norm_cls is not None else None)


@pytest.mark.parametrize("opt", [dict(name="sgd", lr=0.05, momentum=0.9), dict(name="adam", lr=0.01)])
def test_meta_gradient_equals_the_one_through_torch_group_norm(opt):
    kw = dict(opt)
    optimizer = create_inner_optimizer(kw.pop("name"), **kw)
    ours = _meta_problem(None)
    plain = _meta_problem(nn.GroupNorm)
    assert sum(isinstance(m, InstanceNorm2d) for m in ours[6].modules()) == 2
    assert not any(isinstance(m, InstanceNorm2d) for m in plain[6].modules())
    a = meta_gradient(ours[0].parameters(), ours[1], ours[2], ours[3], optimizer, ours[4], ours[5])
    b = meta_gradient(plain[0].parameters(), plain[1], plain[2], plain[3], optimizer, plain[4], plain[5])
    assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-12)
    for ga, gb in zip(a.grads, b.grads):
        assert torch.allclose(ga, gb, rtol=1e-9, atol=1e-13)
        assert float(gb.abs().sum()) > 0


def test_a_third_derivative_is_refused_clearly():
    x, w, b = _inputs((2, 3, 4, 4))
    (gx,) = torch.autograd.grad((instance_norm(x, w, b) ** 3).sum(), (x,), create_graph=True)
    (gxx,) = torch.autograd.grad((gx ** 2).sum(), (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="a third derivative was asked for"):
        torch.autograd.grad(gxx.sum(), (x,))


def test_other_inputs_fall_back_to_group_norm():
    x, w, b = _inputs((2, 3, 5), dtype=torch.float32)  # 3-d: not (N, C, H, W)
    assert torch.equal(instance_norm(x, w, b), _reference(x, w, b))
    x4, _, _ = _inputs((2, 3, 4, 4), dtype=torch.float32)
    assert torch.equal(instance_norm(x4, None, None), F.group_norm(x4, 3))  # no affine parameters


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_inputs_are_normalised_in_float32(dtype):
    # what autocast gives: a bfloat16 (or float16) convolution output, float32 parameters.
    # F.group_norm computes that mix in float32 too: equal values, and first and second
    # derivatives equal to those of group_norm up to the inputs' rounding.
    x, w, b = _inputs((3, 4, 6, 6), dtype=torch.float32)
    low = x.detach().to(dtype).requires_grad_()
    y = instance_norm(low, w, b)
    assert y.dtype == dtype
    assert torch.equal(y, _reference(low, w, b))
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(x.shape, generator=gen)
    results = []
    for f in (instance_norm, _reference):
        out = f(low, w, b).float()
        gx, gw = torch.autograd.grad((out ** 2 * u).sum(), (low, w), create_graph=True)
        hx, hw = torch.autograd.grad((gx.float() ** 2).sum() + (gw * u[0, :, 0, 0]).sum(), (low, w))
        results.append([t.detach().float() for t in (gx, gw, hx, hw)])
    for ours, ref in zip(*results):
        assert float((ours - ref).norm() / ref.norm()) < 2e-2


def test_the_layer_is_a_group_norm_with_the_same_parameters():
    layer = InstanceNorm2d(5)
    ref = nn.GroupNorm(5, 5)
    assert isinstance(layer, nn.GroupNorm)
    assert layer.state_dict().keys() == ref.state_dict().keys()
    model = create_model("convnet", 1, 10, 28, width=8, generator=torch.Generator().manual_seed(0))
    assert sum(isinstance(m, InstanceNorm2d) for m in model.modules()) == 3
