"""VGG-11 for small images (DC/DSA cross-architecture set)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ._factory import ModelOptions, check_choice, check_int, register_model
from ._layers import (
    ACTIVATIONS,
    NORMS,
    activation_layer,
    check_norm_size,
    conv_bias,
    norm_layer,
    pool_out,
)

# Channels as multiples of the base width; "M" is a 2x2 max pooling.
_VGG11 = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")


@dataclass(frozen=True)
class VGGOptions(ModelOptions):
    width: int = field(
        default=64, metadata={"doc": "channels of the first stage; later stages 2x, 4x, 8x"}
    )
    norm: str = "instance"
    activation: str = "relu"
    num_groups: int = field(default=4, metadata={"doc": "groups of norm='group'"})

    def validate(self) -> None:
        check_int("width", self.width)
        check_choice("norm", self.norm, NORMS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_int("num_groups", self.num_groups)


class VGG(nn.Module):
    """(N, C, H, W) -> (N, num_classes).

    Stages of conv3x3 (padding 1) -> norm -> activation, separated by 2x2 max pooling
    with ``ceil_mode=True`` so odd sizes keep their border (28 -> 14 -> 7 -> 4 -> 2 -> 1),
    then a linear layer on the flattened features.
    """

    def __init__(
        self,
        config: tuple[int | str, ...],
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        width: int = 64,
        norm: str = "instance",
        activation: str = "relu",
        num_groups: int = 4,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        height, breadth = image_size
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                height = pool_out(height, ceil_mode=True)
                breadth = pool_out(breadth, ceil_mode=True)
                continue
            out_channels = int(item) * width
            check_norm_size(norm, height, breadth)
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=1, bias=conv_bias(norm)),
                norm_layer(norm, out_channels, num_groups),
                activation_layer(activation),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * height * breadth, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("vgg11", VGGOptions)
def vgg11(in_channels: int, num_classes: int, image_size: tuple[int, int], **options) -> VGG:
    """VGG-11: 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M (at width 64)."""
    return VGG(_VGG11, in_channels, num_classes, image_size, **options)
