"""ConvNet: the DC/DSA evaluation network, ``depth`` x [conv3x3 -> norm -> act -> pool]."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import Tensor, nn

from ..errors import ConfigError
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

    def validate(self) -> None:
        check_int("width", self.width)
        if self.depth is not None:
            check_int("depth", self.depth)
        check_choice("norm", self.norm, NORMS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_int("num_groups", self.num_groups)

    def resolved(self, image_size: tuple[int, int]) -> ConvNetOptions:
        if self.depth is not None:
            return self
        return dataclasses.replace(self, depth=4 if min(image_size) >= 64 else 3)


@register_model("convnet", ConvNetOptions)
class ConvNet(nn.Module):
    """(N, C, H, W) -> (N, num_classes).

    Each of the ``depth`` blocks is conv3x3 (padding 1, ``width`` channels) -> norm ->
    activation -> 2x2 pooling; a linear layer maps the flattened features to logits.
    With pooling, every block halves H and W (rounding down: 28 -> 14 -> 7 -> 3).
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
    ) -> None:
        super().__init__()
        height, breadth = image_size
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            check_norm_size(norm, height, breadth)
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=conv_bias(norm)),
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
        return self.classifier(self.features(x).flatten(1))
