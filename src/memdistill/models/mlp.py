"""MLP: flatten -> (``depth`` - 1) x [linear -> activation] -> linear."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ._factory import ModelOptions, check_choice, check_int, register_model
from ._layers import ACTIVATIONS, activation_layer


@dataclass(frozen=True)
class MLPOptions(ModelOptions):
    width: int = 128
    depth: int = field(default=3, metadata={"doc": "linear layers, the output layer included"})
    activation: str = "relu"

    def validate(self) -> None:
        check_int("width", self.width)
        check_int("depth", self.depth)
        check_choice("activation", self.activation, ACTIVATIONS)


@register_model("mlp", MLPOptions)
class MLP(nn.Module):
    """(N, C, H, W) -> (N, num_classes): a fully connected network on the flat pixels."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        width: int = 128,
        depth: int = 3,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        features = in_channels * image_size[0] * image_size[1]
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.Linear(features, width), activation_layer(activation)]
            features = width
        layers.append(nn.Linear(features, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(1))
