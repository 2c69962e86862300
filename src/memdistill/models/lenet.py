"""LeNet-5 as used by DC/DSA for cross-architecture evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ._factory import ModelOptions, check_choice, register_model
from ._layers import ACTIVATIONS, activation_layer, conv_out, pool_out


@dataclass(frozen=True)
class LeNetOptions(ModelOptions):
    activation: str = "relu"

    def validate(self) -> None:
        check_choice("activation", self.activation, ACTIVATIONS)


@register_model("lenet", LeNetOptions)
class LeNet(nn.Module):
    """(N, C, H, W) -> (N, num_classes).

    conv5x5(6) -> act -> maxpool2 -> conv5x5(16) -> act -> maxpool2 -> linear 120 -> act
    -> linear 84 -> act -> linear. Images smaller than 32 px (e.g. 28) get padding 2 on
    the first convolution, which gives them LeNet's 32-px geometry (16 x 5 x 5 features).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        padding = 2 if min(image_size) < 32 else 0
        sizes = []
        for size in image_size:
            size = pool_out(conv_out(size, 5, padding=padding))
            size = pool_out(conv_out(size, 5))
            sizes.append(size)
        if min(sizes) < 1:
            raise ConfigError(
                f"image_size {tuple(image_size)} is too small for lenet (needs at least 12 px)"
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=padding),
            activation_layer(activation),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5),
            activation_layer(activation),
            nn.MaxPool2d(2, 2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * sizes[0] * sizes[1], 120),
            activation_layer(activation),
            nn.Linear(120, 84),
            activation_layer(activation),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
