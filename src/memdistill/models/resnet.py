"""ResNet-18 for small images: 3x3 stem with stride 1 and no max pooling (CIFAR style)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from ._factory import ModelOptions, check_choice, check_int, register_model
from ._layers import NORMS, check_norm_size, conv_bias, conv_out, norm_layer


@dataclass(frozen=True)
class ResNetOptions(ModelOptions):
    width: int = field(
        default=64, metadata={"doc": "channels of the first stage; later stages 2x, 4x, 8x"}
    )
    norm: str = "instance"
    num_groups: int = field(default=4, metadata={"doc": "groups of norm='group'"})

    def validate(self) -> None:
        check_int("width", self.width)
        check_choice("norm", self.norm, NORMS)
        check_int("num_groups", self.num_groups)


class BasicBlock(nn.Module):
    """Two conv3x3 -> norm layers with a (projected when the shape changes) shortcut."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, norm: str, num_groups: int
    ) -> None:
        super().__init__()
        bias = conv_bias(norm)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = norm_layer(norm, out_channels, num_groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias)
        self.norm2 = norm_layer(norm, out_channels, num_groups)
        self.relu = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias),
                norm_layer(norm, out_channels, num_groups),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """(N, C, H, W) -> (N, num_classes).

    Stem conv3x3 (stride 1) -> norm -> ReLU, four stages of ``blocks`` basic blocks with
    width, 2x, 4x, 8x channels (stride 2 from the second stage), global average pooling
    and a linear layer. Any image size of at least 1 px works.
    """

    def __init__(
        self,
        blocks: tuple[int, ...],
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        *,
        width: int = 64,
        norm: str = "instance",
        num_groups: int = 4,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=conv_bias(norm)),
            norm_layer(norm, width, num_groups),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        channels = width
        height, breadth = image_size
        check_norm_size(norm, height, breadth)
        for index, count in enumerate(blocks):
            out_channels = width * 2**index
            stride = 1 if index == 0 else 2
            height, breadth = conv_out(height, 3, stride, 1), conv_out(breadth, 3, stride, 1)
            check_norm_size(norm, height, breadth)
            stage = []
            for block in range(count):
                block_stride = stride if block == 0 else 1
                stage.append(BasicBlock(channels, out_channels, block_stride, norm, num_groups))
                channels = out_channels
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.stages(self.stem(x))).flatten(1))


@register_model("resnet18", ResNetOptions)
def resnet18(in_channels: int, num_classes: int, image_size: tuple[int, int], **options) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2)."""
    return ResNet((2, 2, 2, 2), in_channels, num_classes, image_size, **options)
