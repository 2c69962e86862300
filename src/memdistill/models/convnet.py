"""ConvNet: the DC/DSA evaluation network, ``depth`` x [conv3x3 -> norm -> act -> pool].

Geometry as in DC, DSA and MTT: the first convolution of a 1-channel input is padded by 3,
so a 28 x 28 digit gives 32 x 32 feature maps (then 16, 8, 4: a 2048-wide classifier at
width 128), the maps of a 3-channel 32 x 32 input; every other convolution is padded by 1.
``first_pad=1`` gives the compact geometry earlier versions used for 1-channel inputs
(maps 28, 14, 7, 3: 1152 wide at width 128).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..errors import ConfigError
from ._avg_pool import AvgPool2x2, relu_avg_pool_2x2
from ._factory import ModelOptions, check_choice, check_int, register_model
from ._layers import (
    ACTIVATIONS,
    NORMS,
    POOLINGS,
    activation_layer,
    check_norm_size,
    conv_bias,
    norm_layer,
    pool_layer,
    pool_out,
)


@dataclass(frozen=True)
class ConvNetOptions(ModelOptions):
    width: int = 128
    depth: int | None = field(
        default=None, metadata={"doc": "None: 4 for images of at least 64 px, else 3"}
    )
    norm: str = "instance"
    activation: str = "relu"
    pooling: str = "avg"
    num_groups: int = field(default=4, metadata={"doc": "groups of norm='group'"})
    first_pad: int | None = field(
        default=None,
        metadata={"doc": "padding of the first convolution; None: 3 for 1-channel inputs "
                         "(28 px -> 32 px maps, as DC/DSA/MTT), else 1"},
    )

    def validate(self) -> None:
        check_int("width", self.width)
        if self.depth is not None:
            check_int("depth", self.depth)
        check_choice("norm", self.norm, NORMS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_int("num_groups", self.num_groups)
        if self.first_pad is not None:
            check_int("first_pad", self.first_pad, minimum=0)

    def resolved(self, image_size: tuple[int, int]) -> ConvNetOptions:
        if self.depth is not None:
            return self
        return dataclasses.replace(self, depth=4 if min(image_size) >= 64 else 3)


@register_model("convnet", ConvNetOptions)
class ConvNet(nn.Module):
    """(N, C, H, W) -> (N, num_classes).

    Each of the ``depth`` blocks is conv3x3 (``width`` channels) -> norm -> activation ->
    2x2 pooling; a linear layer maps the flattened features to logits. The first
    convolution is padded by ``first_pad`` (``None``: 3 for ``in_channels == 1``, else 1),
    the others by 1. With pooling, every block halves H and W (rounding down): a 1-channel
    28 x 28 input gives maps 32 -> 16 -> 8 -> 4 by default, 28 -> 14 -> 7 -> 3 with
    ``first_pad=1``. Each ReLU and the average pooling after it run fused
    (:func:`._avg_pool.relu_avg_pool_2x2`, the same values and derivatives, faster); the
    ``features`` modules alone compute the same, unfused.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        width: int = 128,
        depth: int = 3,
        norm: str = "instance",
        activation: str = "relu",
        pooling: str = "avg",
        num_groups: int = 4,
        first_pad: int | None = None,
    ) -> None:
        super().__init__()
        if first_pad is None:
            first_pad = 3 if in_channels == 1 else 1
        height, breadth = image_size
        layers: list[nn.Module] = []
        channels = in_channels
        for d in range(depth):
            pad = first_pad if d == 0 else 1
            height, breadth = height + 2 * pad - 2, breadth + 2 * pad - 2  # a 3x3 convolution
            if height < 1 or breadth < 1:
                raise ConfigError(f"image_size {tuple(image_size)} is too small for a 3x3 convolution "
                                  f"padded by {pad}; use first_pad >= 1")
            check_norm_size(norm, height, breadth)
            layers += [
                nn.Conv2d(channels, width, 3, padding=pad, bias=conv_bias(norm)),
                norm_layer(norm, width, num_groups),
                activation_layer(activation),
                pool_layer(pooling),
            ]
            channels = width
            if pooling != "none":
                height, breadth = pool_out(height), pool_out(breadth)
                if height < 1 or breadth < 1:
                    raise ConfigError(
                        f"image_size {tuple(image_size)} is too small for depth {depth} with "
                        f"pooling (needs at least {2 ** depth} px); lower depth or use "
                        f"pooling='none'"
                    )
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * height * breadth, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        # self.features(x), with each ReLU and the average pooling after it fused into one
        # autograd function (_avg_pool.relu_avg_pool_2x2: the same values and derivatives).
        layers = list(self.features)
        i = 0
        while i < len(layers):
            if (i + 1 < len(layers) and type(layers[i]) is nn.ReLU and type(layers[i + 1]) is AvgPool2x2
                    and not layers[i + 1].ceil_mode):
                x = relu_avg_pool_2x2(x)
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return self.classifier(x.flatten(1))
