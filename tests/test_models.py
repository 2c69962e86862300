"""Contract tests for every registered network, plus the factory's errors and init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from memdistill.errors import ConfigError, UnknownNameError
from memdistill.models import (
    MODELS,
    create_model,
    default_options,
    functional_forward,
    init_parameters,
    list_models,
    parameter_dict,
)

NAMES = list_models()
# (in_channels, image_size): MNIST-like and CIFAR-like inputs.
SHAPES = [(1, 28), (3, 32)]
NUM_CLASSES = 5
# Big networks get a batch of 2 to keep the file fast.
HEAVY = {"resnet18", "vgg11"}
# Narrower variants for the tests that train for many steps.
LIGHT = {"convnet": {"width": 32}, "vgg11": {"width": 8}, "resnet18": {"width": 8}}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(name: str, in_channels: int, size: int, seed: int = 0):
    n = 2 if name in HEAVY else 4
    g = seeded(seed)
    x = torch.randn(n, in_channels, size, size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return x, y


def test_registry_lists_the_cross_architecture_set():
    assert list_models() == ["alexnet", "convnet", "lenet", "mlp", "resnet18", "vgg11"]
    assert len(MODELS) == 6 and "ConvNet" in MODELS


@pytest.mark.parametrize("in_channels,size", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, in_channels, size):
    model = create_model(name, in_channels, NUM_CLASSES, size, generator=seeded(0))
    x, y = batch(name, in_channels, size)
    out = model(x)
    assert out.shape == (x.shape[0], NUM_CLASSES)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("in_channels,size", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_functional_double_backward(name, in_channels, size):
    model = create_model(name, in_channels, NUM_CLASSES, size, generator=seeded(0))
    x, y = batch(name, in_channels, size)
    x.requires_grad_(True)
    params = parameter_dict(model)
    out = functional_forward(model, params, x)
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    grads = torch.autograd.grad(F.cross_entropy(out, y), list(params.values()), create_graph=True)
    grad_norm = sum(g.pow(2).sum() for g in grads)
    (grad_x,) = torch.autograd.grad(grad_norm, x)
    assert torch.isfinite(grad_x).all()
    assert grad_x.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is None, f"the functional path touched the module's {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_no_buffers_and_no_mode_dependence(name):
    model = create_model(name, 3, NUM_CLASSES, (28, 32), generator=seeded(0))
    assert list(model.buffers()) == []
    x = torch.randn(2, 3, 28, 32, generator=seeded(1))
    train_out = model(x)
    model.eval()
    torch.testing.assert_close(model(x), train_out, rtol=0, atol=0)
    assert train_out.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", NAMES)
def test_weights_depend_only_on_the_generator(name):
    rng_before = torch.get_rng_state()
    a = create_model(name, 1, NUM_CLASSES, 28, generator=seeded(7))
    b = create_model(name, 1, NUM_CLASSES, 28, generator=seeded(7))
    c = create_model(name, 1, NUM_CLASSES, 28, generator=seeded(8))
    d = create_model(name, 1, NUM_CLASSES, 28)
    e = create_model(name, 1, NUM_CLASSES, 28)
    assert torch.equal(torch.get_rng_state(), rng_before), "create_model used the global RNG"
    for (pname, pa), pb, pc, pd, pe in zip(
        a.named_parameters(), b.parameters(), c.parameters(), d.parameters(), e.parameters()
    ):
        assert torch.equal(pa, pb), pname
        assert torch.equal(pd, pe), pname
        if pa.unique().numel() > 1:  # norm weights/biases are constant by design
            assert not torch.equal(pa, pc), pname


@pytest.mark.parametrize("name", NAMES)
def test_init_reproduces_pytorch_default_initialisation(name):
    # Reference: the same network built eagerly by PyTorch after torch.manual_seed.
    entry = MODELS.get(name)
    options = default_options(name, image_size=28)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        reference = entry.build(1, NUM_CLASSES, (28, 28), **options)
    model = create_model(name, 1, NUM_CLASSES, 28, generator=seeded(3))
    ours = dict(model.named_parameters())
    assert ours.keys() == dict(reference.named_parameters()).keys()
    for pname, p in reference.named_parameters():
        torch.testing.assert_close(ours[pname], p, rtol=0, atol=0, msg=pname)


def test_create_model_honours_dtype_and_keeps_weights_across_dtypes():
    single = create_model("convnet", 1, 3, 16, generator=seeded(0), width=8)
    double = create_model("convnet", 1, 3, 16, generator=seeded(0), width=8, dtype=torch.float64)
    for p32, p64 in zip(single.parameters(), double.parameters()):
        assert p64.dtype == torch.float64 and p64.device.type == "cpu"
        torch.testing.assert_close(p64.float(), p32, rtol=0, atol=0)


def test_init_parameters_refuses_unknown_parameterised_modules():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Embedding(4, 3))
    with pytest.raises(TypeError, match="1.weight"):
        init_parameters(model, seeded(0))


def test_parameter_dict_is_a_detached_copy():
    model = create_model("mlp", 1, 3, 8, generator=seeded(0), width=4)
    params = parameter_dict(model)
    assert list(params) == [n for n, _ in model.named_parameters()]
    for (pname, p), q in zip(model.named_parameters(), params.values()):
        assert q.requires_grad and q.is_leaf and torch.equal(p, q)
        assert q.data_ptr() != p.data_ptr(), pname
    with pytest.raises(RuntimeError):
        partial = dict(list(params.items())[1:])
        functional_forward(model, partial, torch.zeros(1, 1, 8, 8))


def _sgd_losses(name, functional: bool, steps: int = 30, lr: float = 0.02, momentum: float = 0.9):
    """Loss curve of ``steps`` SGD steps (momentum) on a fixed batch of 8 images."""
    g = seeded(1)
    x = torch.randn(8, 1, 20, 20, generator=g)
    y = torch.arange(8) % 4
    model = create_model(name, 1, 4, 20, generator=seeded(0), **LIGHT.get(name, {}))
    losses = []
    if not functional:
        optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        return losses
    params = parameter_dict(model)
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    for _ in range(steps):
        loss = F.cross_entropy(functional_forward(model, params, x), y)
        grads = torch.autograd.grad(loss, list(params.values()))
        velocity = {k: momentum * velocity[k] + g for k, g in zip(params, grads)}
        params = {
            k: (v - lr * velocity[k]).detach().requires_grad_(True) for k, v in params.items()
        }
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", NAMES)
def test_training_lowers_the_loss_as_module_and_functionally(name):
    module_losses = _sgd_losses(name, functional=False)
    functional_losses = _sgd_losses(name, functional=True)
    assert all(math.isfinite(v) for v in module_losses + functional_losses)
    assert module_losses[-1] < 0.85 * module_losses[0], module_losses
    # The functional loop is the same algorithm as torch.optim.SGD: same curve. Only the
    # first 3 steps are compared tightly: float32 rounding differences between the two
    # paths' kernels grow step by step (with one torch thread ResNet-18 and VGG-11 drift
    # apart by 4e-3 relative at step 5, with two by less than 1e-4).
    assert functional_losses[:3] == pytest.approx(module_losses[:3], rel=1e-4, abs=1e-5)
    assert functional_losses[:5] == pytest.approx(module_losses[:5], rel=1e-2)
    assert functional_losses[-1] < 0.85 * functional_losses[0], functional_losses


@pytest.mark.parametrize("norm", ["instance", "batch", "layer", "group", "none"])
def test_convnet_double_backward_matches_finite_differences(norm):
    options = {"num_groups": 2} if norm == "group" else {}
    model = create_model(
        "convnet", 1, 3, 8, generator=seeded(0), dtype=torch.float64, width=4, norm=norm, **options
    )
    names = [n for n, _ in model.named_parameters()]
    x = torch.randn(2, 1, 8, 8, generator=seeded(1), dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]

    def logits(x, *params):
        return functional_forward(model, dict(zip(names, params)), x)

    assert torch.autograd.gradgradcheck(logits, (x, *params))


@pytest.mark.parametrize("norm", ["instance", "batch", "layer", "group", "none"])
@pytest.mark.parametrize("pooling", ["avg", "max", "none"])
def test_convnet_norm_and_pooling_variants(norm, pooling):
    model = create_model(
        "convnet", 3, NUM_CLASSES, 16, generator=seeded(0), width=8, norm=norm, pooling=pooling
    )
    x = torch.randn(3, 3, 16, 16, generator=seeded(1))
    out = model(x)
    assert out.shape == (3, NUM_CLASSES) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())
    assert list(model.buffers()) == []


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "gelu", "sigmoid", "tanh", "elu"])
def test_convnet_activations(activation):
    model = create_model(
        "convnet", 1, NUM_CLASSES, 16, generator=seeded(0), width=8, activation=activation
    )
    out = model(torch.randn(3, 1, 16, 16, generator=seeded(1)))
    assert out.shape == (3, NUM_CLASSES) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())


def _convs(model):
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def test_convnet_depth_follows_the_image_size():
    assert _convs(create_model("convnet", 3, 10, 64, width=8)) == 4
    assert _convs(create_model("convnet", 3, 10, 32, width=8)) == 3
    assert _convs(create_model("convnet", 3, 10, (64, 128), width=8)) == 4
    assert _convs(create_model("convnet", 3, 10, 64, width=8, depth=2)) == 2
    assert default_options("convnet")["depth"] is None
    assert default_options("convnet", image_size=64)["depth"] == 4
    assert default_options("convnet", image_size=32)["depth"] == 3


def test_convnet_depth_four_at_64_px():
    model = create_model("convnet", 3, NUM_CLASSES, 64, generator=seeded(0), width=16)
    x = torch.randn(2, 3, 64, 64, generator=seeded(1))
    assert model(x).shape == (2, NUM_CLASSES)
    assert model.classifier.in_features == 16 * 4 * 4


def _feature_maps(model, x):
    """Spatial sizes after each convolution of a ConvNet on ``x``."""
    sizes = []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            sizes.append(tuple(x.shape[2:]))
    return sizes


def test_convnet_geometry_is_the_fields():
    """DC/DSA/MTT pad a 1-channel input's first convolution by 3: 28 px digits give the
    32/16/8/4 maps of a 3-channel 32 px image and a 2048-wide classifier at width 128;
    ``first_pad=1`` keeps the compact geometry (28/14/7/3, 1152 wide)."""
    digits = create_model("convnet", 1, 10, 28, generator=seeded(0))
    assert _feature_maps(digits, torch.zeros(2, 1, 28, 28)) == [(32, 32), (16, 16), (8, 8)]
    assert digits.features[0].padding == (3, 3) and digits.classifier.in_features == 2048
    assert digits(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    colour = create_model("convnet", 3, 10, 32, generator=seeded(0))
    assert _feature_maps(colour, torch.zeros(2, 3, 32, 32)) == [(32, 32), (16, 16), (8, 8)]
    assert colour.features[0].padding == (1, 1) and colour.classifier.in_features == 2048
    compact = create_model("convnet", 1, 10, 28, generator=seeded(0), first_pad=1)
    assert _feature_maps(compact, torch.zeros(2, 1, 28, 28)) == [(28, 28), (14, 14), (7, 7)]
    assert compact.classifier.in_features == 128 * 3 * 3
    assert create_model("convnet", 3, 10, 32, width=8, first_pad=3).classifier.in_features == 8 * 4 * 4
    with pytest.raises(ConfigError, match="first_pad=-1.*integer >= 0"):
        create_model("convnet", 1, 10, 28, first_pad=-1)


def test_first_pad_reaches_the_network_through_the_options():
    from memdistill.config import EvalConfig, resolve

    assert "first_pad" not in EvalConfig().arch_options()  # -1: the network's default
    assert EvalConfig(first_pad=1).arch_options()["first_pad"] == 1
    assert "first_pad" not in EvalConfig(arch="mlp", first_pad=1).arch_options()
    cfg = resolve("cpu-quick", "mnist", 1, flags={"inner.first_pad": 1, "evaluation.first_pad": 0})
    assert (cfg.inner.first_pad, cfg.evaluation.first_pad) == (1, 0)
    with pytest.raises(ConfigError, match="inner.first_pad must be >= 0"):
        resolve("cpu-quick", "mnist", 1, flags={"inner.first_pad": -2})


def test_default_options():
    assert default_options("convnet") == {
        "width": 128,
        "depth": None,
        "norm": "instance",
        "activation": "relu",
        "pooling": "avg",
        "num_groups": 4,
        "first_pad": None,
    }
    assert default_options("MLP") == {"width": 128, "depth": 3, "activation": "relu"}
    assert default_options("alexnet")["norm"] == "none"
    assert default_options("vgg11")["norm"] == "instance"
    assert default_options("resnet18")["width"] == 64
    for name in NAMES:
        assert isinstance(default_options(name), dict)


def test_width_and_depth_are_options():
    assert create_model("mlp", 1, 10, 28, width=16, depth=1).layers[0].in_features == 784
    assert len(create_model("mlp", 1, 10, 28, width=16, depth=4).layers) == 7
    assert create_model("vgg11", 3, 10, 32, width=8).classifier.in_features == 64
    assert create_model("resnet18", 3, 10, 32, width=8).classifier.in_features == 64


def test_unknown_network_lists_the_valid_ones():
    with pytest.raises(UnknownNameError) as info:
        create_model("convnet3", 1, 10, 28)
    message = str(info.value)
    assert all(name in message for name in NAMES)
    assert "Did you mean 'convnet'" in message


def test_unknown_option_names_it_and_lists_valid_options():
    with pytest.raises(ConfigError) as info:
        create_model("convnet", 1, 10, 28, widht=64)
    message = str(info.value)
    assert "'widht'" in message and "width=128" in message and "norm='instance'" in message
    assert "'width'" in message  # suggestion
    with pytest.raises(ConfigError, match="'width'.*activation='relu'"):
        create_model("lenet", 1, 10, 28, width=64)


@pytest.mark.parametrize(
    "name,options,expected",
    [
        ("convnet", {"norm": "foo"}, "'instance', 'batch', 'layer', 'group', 'none'"),
        ("convnet", {"pooling": "sum"}, "'avg', 'max', 'none'"),
        ("convnet", {"activation": "swish"}, "'leaky_relu'"),
        ("convnet", {"width": 0}, "width=0 .*integer >= 1"),
        ("convnet", {"width": 1.5}, "width=1.5"),
        ("convnet", {"depth": True}, "depth=True"),
        ("mlp", {"depth": 0}, "depth=0"),
        ("vgg11", {"norm": "Instance"}, "'instance'"),
        ("resnet18", {"width": -8}, "width=-8"),
        ("alexnet", {"num_groups": 0}, "num_groups=0"),
        ("convnet", {"norm": "group", "width": 6}, "divisible by num_groups"),
        ("convnet", {"depth": 5, "norm": "none"}, "too small"),
        ("vgg11", {}, "1x1 feature maps"),
    ],
)
def test_invalid_option_values_say_what_is_valid(name, options, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        create_model(name, 1, 10, 12, **options)
    assert name in str(info.value)


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"in_channels": 0}, "in_channels=0"),
        ({"num_classes": 2.0}, "num_classes=2.0"),
        ({"image_size": (0, 28)}, r"image_size=\(0, 28\)"),
        ({"image_size": "28"}, "image_size='28'"),
        ({"dtype": torch.int64}, "floating-point"),
    ],
)
def test_invalid_arguments(kwargs, expected):
    arguments = {"name": "mlp", "in_channels": 1, "num_classes": 10, "image_size": 28} | kwargs
    with pytest.raises(ConfigError, match=expected):
        create_model(**arguments)


@pytest.mark.parametrize("name", NAMES)
def test_too_small_images_fail_at_construction(name):
    try:
        model = create_model(name, 1, 3, 4, **LIGHT.get(name, {}))
    except ConfigError as error:
        assert name in str(error)
    else:  # a network that accepts 4 px images must actually run on them
        assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
