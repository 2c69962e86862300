"""2 x 2 average pooling by strided views (models/_avg_pool.py), against ``F.avg_pool2d``
in float64: values, gradients, second derivatives, whole meta-gradients; and which inputs
keep the native kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import memdistill.models._avg_pool as ap
from _meta_problem import convnet_meta_problem, replace_modules
from memdistill.engine import create_inner_optimizer, meta_gradient
from memdistill.models import create_model
from memdistill.models._avg_pool import AvgPool2x2, avg_pool_2x2, relu_avg_pool_2x2


@pytest.fixture(autouse=True)
def _small_maps_too(request, monkeypatch):
    """The float64 checks run on small maps, which the library leaves to the native kernel
    (``SMALLEST_MAP``); here every even map takes the views, except where a test says."""
    if "real_smallest_map" not in request.keywords:
        monkeypatch.setattr(ap, "SMALLEST_MAP", 1)


def _x(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).requires_grad_()


def _native(x):
    return F.avg_pool2d(x, 2, 2)


def _uses_views(y) -> bool:
    return type(y.grad_fn).__name__ == "_PoolBackward"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (5, 4, 32, 32), (1, 1, 2, 6)])
def test_values_and_gradients_equal_avg_pool2d_bitwise(dtype, shape):
    """The same sums in the same order: forward, backward and the backward's backward
    are bit for bit the native kernel's, so a distillation's memory does not change."""
    out = []
    for pool in (avg_pool_2x2, _native):
        x = _x(shape, dtype=dtype)
        g = _x((shape[0], shape[1], shape[2] // 2, shape[3] // 2), seed=1, dtype=dtype)
        y = pool(x)
        (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
        (gg,) = torch.autograd.grad(gx, g, _x(shape, seed=2, dtype=dtype))
        out.append((y, gx, gg))
    assert _uses_views(out[0][0]) and not _uses_views(out[1][0])
    for ours, ref in zip(*out):
        assert torch.equal(ours, ref)


def test_gradients_and_second_derivatives_pass_gradcheck():
    x = _x((2, 3, 6, 4), seed=3)
    assert _uses_views(avg_pool_2x2(x))
    assert torch.autograd.gradcheck(avg_pool_2x2, (x,))
    assert torch.autograd.gradgradcheck(avg_pool_2x2, (x,))


def test_second_derivatives_equal_the_native_kernels():
    """A Hessian-vector product of a non-linear loss through the pooling, in the input and
    in the upstream gradient, against the same product through ``F.avg_pool2d``."""
    results = []
    for pool in (avg_pool_2x2, _native):
        x = _x((3, 4, 6, 6), seed=7)
        w = _x((3, 4, 3, 3), seed=8)
        y = pool(x.sin() * x)
        (gx,) = torch.autograd.grad((y * w).sum() + (y ** 3).sum(), (x,), create_graph=True)
        v = torch.randn(gx.shape, generator=torch.Generator().manual_seed(2), dtype=gx.dtype)
        hvp = torch.autograd.grad(gx, (x, w), grad_outputs=v)
        results.append([gx, *hvp])
    for ours, ref in zip(*results):
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)
        assert float(ref.detach().abs().sum()) > 0


def test_third_derivatives_exist_too():
    """Pooling is linear, so its two functions differentiate into each other to any order."""
    def third(pool):
        x = _x((2, 2, 4, 4), seed=1)
        (g1,) = torch.autograd.grad((pool(x) ** 4).sum(), (x,), create_graph=True)
        (g2,) = torch.autograd.grad((g1 ** 2).sum(), (x,), create_graph=True)
        return torch.autograd.grad(g2.sum(), (x,))[0]

    assert torch.allclose(third(avg_pool_2x2), third(_native), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["odd", "ceil_odd", "bfloat16", "3d", "large"])
def test_other_inputs_keep_the_native_kernel(case, monkeypatch):
    shape, dtype, ceil = (2, 3, 8, 8), torch.float32, False
    if case == "odd":
        shape = (2, 3, 7, 8)
    elif case == "ceil_odd":
        shape, ceil = (2, 3, 7, 7), True
    elif case == "bfloat16":
        dtype = torch.bfloat16
    elif case == "large":
        monkeypatch.setattr(ap, "NATIVE_ABOVE", 2 * 3 * 8 * 8 - 1)
    x = _x(shape, dtype=dtype)
    if case == "3d":
        x = _x((3, 8, 8))
    y = avg_pool_2x2(x, ceil_mode=ceil)
    assert not _uses_views(y)
    assert torch.equal(y, F.avg_pool2d(x, 2, 2, ceil_mode=ceil))


def test_even_sizes_with_ceil_mode_use_the_views_and_match():
    x = _x((2, 3, 6, 6), dtype=torch.float32)
    y = AvgPool2x2(ceil_mode=True)(x)
    assert _uses_views(y)
    assert torch.allclose(y, F.avg_pool2d(x, 2, 2, ceil_mode=True), rtol=1e-6, atol=1e-7)


@pytest.mark.real_smallest_map
def test_maps_below_16_by_16_keep_the_native_kernel():
    assert ap.SMALLEST_MAP == 256
    assert not _uses_views(avg_pool_2x2(_x((2, 3, 8, 8), dtype=torch.float32)))
    assert not _uses_views(avg_pool_2x2(_x((2, 3, 14, 16), dtype=torch.float32)))
    assert _uses_views(avg_pool_2x2(_x((2, 3, 16, 16), dtype=torch.float32)))


def test_autocast_keeps_the_native_kernel():
    x = _x((2, 3, 8, 8), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _uses_views(avg_pool_2x2(x))


def test_the_convnet_pools_with_it():
    model = create_model("convnet", 1, 10, 28, width=4, depth=3)
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 3 and all(isinstance(m, AvgPool2x2) for m in pools)


def _meta(native: bool, dtype=torch.float64):
    """A meta-gradient through a ConvNet with the view pooling or the native one."""
    swap = (lambda model: replace_modules(model, AvgPool2x2, lambda child: nn.AvgPool2d(2, 2))) if native else None
    mem, recall, forward, init, plans, outer, model = convnet_meta_problem(swap, dtype)
    optimizer = create_inner_optimizer("sgd", lr=0.05, momentum=0.9)
    return model, meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_meta_gradient_equals_the_one_through_the_native_kernel_bitwise(dtype):
    m_views, views = _meta(native=False, dtype=dtype)
    assert _fuses(m_views(torch.randn(2, 1, 8, 8, dtype=dtype)))
    m_native, native = _meta(native=True, dtype=dtype)
    assert any(isinstance(m, AvgPool2x2) for m in m_views.modules())
    assert not any(isinstance(m, AvgPool2x2) for m in m_native.modules())
    assert float(views.loss) == float(native.loss)
    for a, b in zip(views.grads, native.grads):
        assert torch.equal(a, b)
        assert float(b.abs().sum()) > 0


def _fuses(y) -> bool:
    """Whether the graph behind ``y`` holds the fused ReLU + pooling."""
    seen, todo = set(), [y.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == "_ReluPoolBackward":
            return True
        todo += [f for f, _ in fn.next_functions]
    return False


def _relu_native(x):
    return F.avg_pool2d(torch.relu(x), 2, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (5, 4, 32, 32), (1, 1, 2, 6)])
def test_fused_relu_pooling_equals_relu_then_avg_pool2d_bitwise(dtype, shape):
    """ReLU and the pooling after it in one function: values, backward and the backward's
    backward (in the upstream gradient, as a meta-gradient takes it) are bit for bit
    ReLU's then ``F.avg_pool2d``'s; some inputs are exactly 0 (ReLU's kink)."""
    out = []
    for fn in (relu_avg_pool_2x2, _relu_native):
        x = _x(shape, dtype=dtype)
        with torch.no_grad():
            x.view(-1)[::7] = 0.0
        g = _x((shape[0], shape[1], shape[2] // 2, shape[3] // 2), seed=1, dtype=dtype)
        y = fn(x)
        (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
        v = _x(shape, seed=2, dtype=dtype)
        (gg,) = torch.autograd.grad(gx, g, v, create_graph=True)
        (ggg,) = torch.autograd.grad(gg, v, _x(g.shape, seed=4, dtype=dtype))  # the third order
        out.append((y, gx, gg, ggg))
    assert _fuses(out[0][0]) and not _fuses(out[1][0])
    for ours, ref in zip(*out):
        assert torch.equal(ours, ref)
        assert float(ref.detach().abs().sum()) > 0


def test_fused_relu_pooling_passes_gradcheck_and_gives_a_loss_the_native_hessian():
    x = _x((2, 3, 6, 4), seed=3)
    assert _fuses(relu_avg_pool_2x2(x))
    assert torch.autograd.gradcheck(relu_avg_pool_2x2, (x,))
    assert torch.autograd.gradgradcheck(relu_avg_pool_2x2, (x,))
    results = []
    for fn in (relu_avg_pool_2x2, _relu_native):
        x = _x((3, 4, 6, 6), seed=7)
        y = fn(x.sin() * x - 0.2)
        (gx,) = torch.autograd.grad((y ** 3).sum(), (x,), create_graph=True)
        v = torch.randn(gx.shape, generator=torch.Generator().manual_seed(2), dtype=gx.dtype)
        results.append([gx, *torch.autograd.grad(gx, (x,), grad_outputs=v)])
    for ours, ref in zip(*results):
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_a_channels_last_input_is_not_fused_and_matches():
    x = _x((2, 3, 8, 8)).detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    y = relu_avg_pool_2x2(x)
    assert not _fuses(y) and torch.equal(y, _relu_native(x))
    assert _fuses(relu_avg_pool_2x2(x.detach().contiguous().requires_grad_()))


@pytest.mark.parametrize("case", ["switch", "odd", "bfloat16", "activation", "ceil_mode"])
def test_the_convnet_fuses_relu_and_pooling_only_where_the_views_apply(case, monkeypatch):
    kwargs, size, dtype = {}, 8, torch.float32
    if case == "switch":
        monkeypatch.setattr(ap, "FUSE_RELU", False)
    elif case == "odd":
        size = 9  # 14 x 14 maps, then 7 x 7: the second pooling's input is odd
    elif case == "bfloat16":
        dtype = torch.bfloat16
    elif case == "activation":
        kwargs = {"activation": "gelu"}
    model = create_model("convnet", 1, 3, size, width=4, depth=2, dtype=dtype, **kwargs)
    if case == "ceil_mode":
        for m in model.modules():
            if isinstance(m, AvgPool2x2):
                m.ceil_mode = True
    x = torch.randn(2, 1, size, size, dtype=dtype)
    y = model(x)
    assert torch.equal(y, model.classifier(model.features(x).flatten(1)))
    if case == "odd":  # the first block is fused, the second not
        assert _fuses(y) and model.features(x).grad_fn is not None
    else:
        assert not _fuses(y)
    monkeypatch.setattr(ap, "FUSE_RELU", True)
    assert _fuses(create_model("convnet", 1, 3, 8, width=4, depth=2)(torch.randn(2, 1, 8, 8)))


def test_the_benchmark_script_writes_its_json_and_doc_block(tmp_path):
    """``bench/avg_pool.py`` at a toy size (no outer steps): every shape timed every way,
    the block rendered from the JSON."""
    import json

    from _bench_scripts import doc_block, load_script

    bench = load_script("avg_pool")
    out, doc = tmp_path / "ap.json", tmp_path / "BENCH.md"
    assert bench.main(["--threads", "1", "--reps", "1", "--repeats", "1", "--steps", "0",
                       "--out", str(out), "--doc", str(doc)]) == 0
    res = json.loads(out.read_text())
    assert len(res["shapes"]) == len(bench.SHAPES) and res["outer_step"] is None
    assert all(r[f"{k}_ms"] > 0 for r in res["shapes"] for k in bench.PATHS)
    assert doc_block(doc.read_text(), "avg-pool") == bench.render(res, str(out))


@pytest.mark.real_smallest_map
def test_the_committed_block_is_the_committed_json_rendered():
    import json

    from _bench_scripts import ROOT, doc_block, load_script

    bench = load_script("avg_pool")
    res = json.loads((ROOT / "docs" / "bench" / "avg_pool.json").read_text())
    o = res["outer_step"]
    for k in ("views", "fused", "fused_vs_views"):
        assert o["pairs_faster"][k] == sum(r > 1 for r in o["paired_ratios"][k]) and len(o["paired_ratios"][k]) == 14
    assert res["smallest_map"] == ap.SMALLEST_MAP and res["native_above"] == ap.NATIVE_ABOVE  # the rules measured
    committed = doc_block((ROOT / "docs" / "BENCHMARKS.md").read_text(), "avg-pool")
    assert committed == bench.render(res, "docs/bench/avg_pool.json")
