"""The outer loss computed a chunk of real images at a time (engine/chunked.py,
``outer.real_chunk``): the same loss and first derivatives as in one piece, in float64 and
through whole meta-gradients; its automatic size; its refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memdistill.config import resolve
from memdistill.distill.step import real_chunk
from memdistill.engine import create_inner_optimizer, meta_gradient
from memdistill.engine.chunked import chunked_mean
from memdistill.errors import ConfigError
from memdistill.models import create_model, functional_forward

from _meta_problem import convnet_meta_problem


def _net(norm: str = "instance"):
    g = torch.Generator().manual_seed(0)
    model = create_model("convnet", 1, 4, 8, width=4, depth=2, norm=norm, generator=g, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().requires_grad_() for p in model.parameters())
    return model, (lambda p, x: functional_forward(model, dict(zip(names, p)), x)), params


def _batch(n: int = 11):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(4, (n,), generator=g)


@pytest.mark.parametrize("chunk", [1, 3, 4, 10])
def test_chunked_mean_equals_the_one_piece_loss_and_gradient(chunk):
    _, forward, params = _net()
    x, y = _batch()  # 11 rows: no chunk size here divides them
    loss = lambda p, xb, yb: F.cross_entropy(forward(p, xb), yb)  # noqa: E731
    whole = loss(params, x, y)
    g_whole = torch.autograd.grad(whole, params)
    part = chunked_mean(loss, params, x, y, chunk)
    g_part = torch.autograd.grad(part, params)
    torch.testing.assert_close(part, whole, rtol=1e-13, atol=1e-13)
    for a, b in zip(g_part, g_whole):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_chunked_weighted_mean_with_a_chunk_of_zero_weight():
    _, forward, params = _net()
    x, y = _batch(9)
    y = torch.tensor([0, 0, 0, 1, 2, 3, 1, 2, 3])
    weight = torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=torch.float64)  # class 0 (the first chunk of 3) weighs nothing
    loss = lambda p, xb, yb: F.cross_entropy(forward(p, xb), yb, weight=weight)  # noqa: E731
    whole = loss(params, x, y)
    part = chunked_mean(loss, params, x, y, 3, row_weight=weight[y])
    torch.testing.assert_close(part, whole, rtol=1e-13, atol=1e-13)
    for a, b in zip(torch.autograd.grad(part, params), torch.autograd.grad(whole, params)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    # a plain mean would weigh the rows by count, not by class weight: the weights matter
    plain = chunked_mean(loss, params, x, y, 3)
    assert not torch.allclose(plain, whole)


@pytest.mark.parametrize("mode", ["checkpointed", "full"])
def test_meta_gradient_with_a_chunked_outer_loss_equals_the_one_piece_one(mode):
    mem, recall, forward, init, plans, outer, _ = convnet_meta_problem()
    opt = create_inner_optimizer("sgd", lr=0.1, momentum=0.9)
    ref = meta_gradient(mem.parameters(), recall, forward, init, opt, plans, outer, mode=mode)

    x, y = outer.real  # 12 images: chunks of 5, 5 and 2
    chunked = lambda p: chunked_mean(lambda q, xb, yb: F.cross_entropy(forward(q, xb), yb), p, x, y, 5)  # noqa: E731
    got = meta_gradient(mem.parameters(), recall, forward, init, opt, plans, chunked, mode=mode)
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-13, atol=1e-13)
    for a, b in zip(got.grads, ref.grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_chunked_mean_is_once_differentiable_only():
    _, forward, params = _net()
    x, y = _batch()
    loss = lambda p, xb, yb: F.cross_entropy(forward(p, xb), yb)  # noqa: E731
    with pytest.raises(RuntimeError, match="first derivatives only.*outer.real_chunk=-1"):
        torch.autograd.grad(chunked_mean(loss, params, x, y, 4), params, create_graph=True)
    torch.autograd.grad(chunked_mean(loss, params, x, y, 4), params)  # once is fine


def test_a_batch_no_larger_than_a_chunk_is_the_loss_itself():
    _, forward, params = _net()
    x, y = _batch(4)
    loss = lambda p, xb, yb: F.cross_entropy(forward(p, xb), yb)  # noqa: E731
    assert torch.equal(chunked_mean(loss, params, x, y, 4), loss(params, x, y))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        chunked_mean(loss, params, x, y, 0)


def _config(**outer):
    return resolve("paper", "mnist", 1, flags={"inner": {"width": 128}, "outer": outer}, flags_source="test")


def test_automatic_chunk_keeps_the_largest_activation_within_16_mib():
    model = create_model("convnet", 1, 10, (28, 28), width=128, generator=torch.Generator().manual_seed(0))
    # width 128 at 32 x 32 maps: 512 KiB per image for the first block's maps
    assert real_chunk(_config(), model, (1, 28, 28), torch.device("cpu")) == 32
    assert real_chunk(_config(real_chunk=-1), model, (1, 28, 28), torch.device("cpu")) == 0
    assert real_chunk(_config(real_chunk=100), model, (1, 28, 28), torch.device("cpu")) == 100
    assert real_chunk(_config(), model, (1, 28, 28), torch.device("cuda")) == 0  # a GPU takes the batch whole


def test_batch_norm_is_never_chunked_and_an_explicit_chunk_is_refused():
    model = create_model("convnet", 1, 10, (28, 28), width=8, norm="batch", generator=torch.Generator().manual_seed(0))
    assert real_chunk(_config(), model, (1, 28, 28), torch.device("cpu")) == 0
    with pytest.raises(ConfigError, match="outer.real_chunk=8 needs a network whose images do not interact"):
        real_chunk(_config(real_chunk=8), model, (1, 28, 28), torch.device("cpu"))


def test_a_bad_chunk_setting_is_refused():
    with pytest.raises(ConfigError, match="outer.real_chunk .* must be >= 1, or 0 for automatic"):
        _config(real_chunk=-2).validate()
