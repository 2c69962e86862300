"""Differentiable batch augmentations with explicit, replayable randomness.

Every augmentation separates *sampling* its parameters (from an explicit
``torch.Generator``) from *applying* them (a pure, differentiable function of the images
and the parameters). A training step that is recomputed later, for example in the
reverse pass of the distillation engine, replays the identical transform by applying the
same parameters again.

    aug = create_augmentation("flip_rotate")
    params = aug.sample(x.shape, generator)
    y = aug.apply(x, params)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from ._registry import Registry
from .errors import ConfigError

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "create_augmentation",
    "list_augmentations",
]

AugmentParams = dict[str, torch.Tensor]


class Augmentation(Protocol):
    """What every registered augmentation provides."""

    name: str

    def sample(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> AugmentParams:
        """Draw the parameters for one batch of images of ``shape`` ``(N, C, H, W)``."""
        ...

    def apply(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply to ``x`` ``(N, C, H, W)``; differentiable in ``x``."""
        ...


AUGMENTATIONS: Registry[type] = Registry("augmentation")


def create_augmentation(name: str, **options) -> Augmentation:
    """Build a registered augmentation by name; unknown names list the valid ones."""
    cls = AUGMENTATIONS.get(name)
    try:
        return cls(**options)
    except TypeError as exc:  # unknown keyword
        raise ConfigError(f"augmentation {name!r}: {exc}") from None


def list_augmentations() -> list[str]:
    return AUGMENTATIONS.names()


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate the whole batch by ``degrees`` (a scalar tensor) about the image centre."""
    theta = degrees.to(x.dtype) * (math.pi / 180.0)
    c, s = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(c)
    mat = torch.stack([torch.stack([c, -s, zero]), torch.stack([s, c, zero])]).to(x.device)
    grid = F.affine_grid(mat.unsqueeze(0).expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@AUGMENTATIONS.register("none")
@dataclass(frozen=True)
class NoAugmentation:
    """The identity."""

    name: str = "none"

    def sample(self, shape, generator):
        return {}

    def apply(self, x, params):
        return x


@AUGMENTATIONS.register("flip")
@dataclass(frozen=True)
class Flip:
    """Horizontal flip of the whole batch with probability ``p``."""

    p: float = 0.5
    name: str = "flip"

    def __post_init__(self):
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"flip: p must be in [0, 1], got {self.p}")

    def sample(self, shape, generator):
        return {"flip": (torch.rand((), generator=generator) < self.p)}

    def apply(self, x, params):
        return torch.where(params["flip"].to(x.device), x.flip(-1), x)


@AUGMENTATIONS.register("rotate")
@dataclass(frozen=True)
class Rotate:
    """Rotation of the whole batch by an angle uniform in ``[-degrees, degrees]``."""

    degrees: float = 15.0
    name: str = "rotate"

    def __post_init__(self):
        if self.degrees < 0:
            raise ConfigError(f"rotate: degrees must be >= 0, got {self.degrees}")

    def sample(self, shape, generator):
        u = torch.rand((), generator=generator, dtype=torch.float64)
        return {"degrees": (2.0 * u - 1.0) * self.degrees}

    def apply(self, x, params):
        return _rotate(x, params["degrees"])


@AUGMENTATIONS.register("flip_rotate")
@dataclass(frozen=True)
class FlipRotate:
    """The reference's ``flip_rotate``: per call, either a horizontal flip with
    probability 0.5 or a rotation uniform in ``[-degrees, degrees]``, chosen with equal
    odds, with the same parameters for the whole batch."""

    degrees: float = 15.0
    name: str = "flip_rotate"

    def sample(self, shape, generator):
        choose_flip = torch.rand((), generator=generator) < 0.5
        flip = torch.rand((), generator=generator) < 0.5
        u = torch.rand((), generator=generator, dtype=torch.float64)
        return {
            "choose_flip": choose_flip,
            "flip": flip,
            "degrees": (2.0 * u - 1.0) * self.degrees,
        }

    def apply(self, x, params):
        if bool(params["choose_flip"]):
            return torch.where(params["flip"].to(x.device), x.flip(-1), x)
        return _rotate(x, params["degrees"])
