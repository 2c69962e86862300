"""Building blocks shared by the networks: normalisation, activation, pooling, shapes.

Nothing here keeps state between calls: batch normalisation never tracks running
statistics, so every network is a pure function of its parameters and its input.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ._avg_pool import AvgPool2x2
from ._instance_norm import InstanceNorm2d

NORMS = ("instance", "batch", "layer", "group", "none")
ACTIVATIONS = ("relu", "leaky_relu", "gelu", "sigmoid", "tanh", "elu")
POOLINGS = ("avg", "max", "none")

# Norms that subtract a per-channel mean: a bias on the layer before them is cancelled
# exactly (it would only ever receive a zero gradient), so that layer has none.
_CANCELS_BIAS = ("instance", "batch")


def conv_bias(norm: str) -> bool:
    """Whether a convolution followed by ``norm`` should carry a bias."""
    return norm not in _CANCELS_BIAS


def norm_layer(norm: str, channels: int, num_groups: int = 4) -> nn.Module:
    """A normalisation layer over ``channels`` feature maps of shape (N, C, H, W).

    - ``instance``: ``GroupNorm(C, C)``, per-sample per-channel statistics with a learned
      per-channel affine (as in the DC/DSA ConvNet), as :class:`InstanceNorm2d` (same
      parameters and values, a hand-derived double backward for the meta-gradient);
    - ``batch``: ``BatchNorm2d(C, track_running_stats=False)``; it always normalises with
      the statistics of the current batch, in training and evaluation mode alike, and has
      no buffers, so ``torch.func.functional_call`` sees no hidden state. It needs more
      than one value per channel (batch size times H times W > 1);
    - ``layer``: ``GroupNorm(1, C)``, statistics over (C, H, W) of each sample;
    - ``group``: ``GroupNorm(num_groups, C)``; ``C`` must be divisible by ``num_groups``;
    - ``none``: identity.
    """
    if norm == "instance":
        return InstanceNorm2d(channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=False)
    if norm == "layer":
        return nn.GroupNorm(1, channels, affine=True)
    if norm == "group":
        if channels % num_groups:
            raise ConfigError(
                f"norm='group' needs the channel count to be divisible by num_groups; "
                f"{channels} channels, num_groups={num_groups}. Change num_groups or the width."
            )
        return nn.GroupNorm(num_groups, channels, affine=True)
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {norm!r}; valid values: {', '.join(map(repr, NORMS))}")


def activation_layer(activation: str) -> nn.Module:
    """A parameter-free elementwise non-linearity (never in place)."""
    if activation == "relu":
        return nn.ReLU()
    if activation == "leaky_relu":
        return nn.LeakyReLU(0.01)
    if activation == "gelu":
        return nn.GELU()
    if activation == "sigmoid":
        return nn.Sigmoid()
    if activation == "tanh":
        return nn.Tanh()
    if activation == "elu":
        return nn.ELU()
    raise ConfigError(
        f"unknown activation {activation!r}; valid values: {', '.join(map(repr, ACTIVATIONS))}"
    )


def pool_layer(pooling: str, ceil_mode: bool = False) -> nn.Module:
    """A 2x2, stride-2 pooling layer (``none``: identity; ``avg``: :class:`AvgPool2x2`)."""
    if pooling == "avg":
        return AvgPool2x2(ceil_mode=ceil_mode)
    if pooling == "max":
        return nn.MaxPool2d(2, 2, ceil_mode=ceil_mode)
    if pooling == "none":
        return nn.Identity()
    raise ConfigError(
        f"unknown pooling {pooling!r}; valid values: {', '.join(map(repr, POOLINGS))}"
    )


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution along one spatial axis."""
    return (size + 2 * padding - kernel) // stride + 1


def pool_out(size: int, ceil_mode: bool = False) -> int:
    """Output length of a 2x2, stride-2 pooling along one spatial axis (PyTorch's rule)."""
    if not ceil_mode:
        return (size - 2) // 2 + 1
    out = -(-(size - 2) // 2) + 1
    # PyTorch drops a last window that would start entirely in the (implicit) padding.
    if (out - 1) * 2 >= size:
        out -= 1
    return out


def check_norm_size(norm: str, height: int, width: int) -> None:
    """Refuse instance norm on 1x1 feature maps, which it would turn into constants."""
    if norm == "instance" and height * width == 1:
        raise ConfigError(
            "norm='instance' normalises each channel over its H x W values, and this "
            "image_size leaves a normalised layer with 1x1 feature maps, whose output would "
            "be constant; use a larger image_size, a smaller depth or another norm "
            "('batch', 'layer', 'group')"
        )
