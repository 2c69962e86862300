"""The small AlexNet of DC/DSA's cross-architecture evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ..errors import ConfigError
from ._factory import ModelOptions, check_choice, check_int, register_model
from ._layers import (
    ACTIVATIONS,
    NORMS,
    activation_layer,
    check_norm_size,
    conv_bias,
    conv_out,
    norm_layer,
    pool_out,
)


@dataclass(frozen=True)
class AlexNetOptions(ModelOptions):
    norm: str = "none"
    activation: str = "relu"
    num_groups: int = field(default=4, metadata={"doc": "groups of norm='group'"})

    def validate(self) -> None:
        check_choice("norm", self.norm, NORMS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_int("num_groups", self.num_groups)


# (out_channels, kernel, padding, pool after); the first padding depends on in_channels.
_LAYERS = (
    (128, 5, None, True),
    (192, 5, 2, True),
    (256, 3, 1, False),
    (192, 3, 1, False),
    (192, 3, 1, True),
)


@register_model("alexnet", AlexNetOptions)
class AlexNet(nn.Module):
    """(N, C, H, W) -> (N, num_classes).

    conv5x5(128) -> maxpool2 -> conv5x5(192) -> maxpool2 -> conv3x3(256) -> conv3x3(192)
    -> conv3x3(192) -> maxpool2 -> linear, each convolution followed by norm (default
    none) and activation. The first convolution pads by 4 for one-channel images (28 px
    MNIST-like data then ends at 4 x 4 like 32 px images) and by 2 otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        norm: str = "none",
        activation: str = "relu",
        num_groups: int = 4,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        height, breadth = image_size
        for out_channels, kernel, padding, pool in _LAYERS:
            if padding is None:
                padding = 4 if in_channels == 1 else 2
            layers += [
                nn.Conv2d(channels, out_channels, kernel, padding=padding, bias=conv_bias(norm)),
                norm_layer(norm, out_channels, num_groups),
                activation_layer(activation),
            ]
            height = conv_out(height, kernel, padding=padding)
            breadth = conv_out(breadth, kernel, padding=padding)
            if height >= 1 and breadth >= 1:
                check_norm_size(norm, height, breadth)
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
                height, breadth = pool_out(height), pool_out(breadth)
            if height < 1 or breadth < 1:
                raise ConfigError(
                    f"image_size {tuple(image_size)} is too small for alexnet (three 2x2 poolings; "
                    f"needs at least {4 if in_channels == 1 else 8} px)"
                )
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * height * breadth, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
