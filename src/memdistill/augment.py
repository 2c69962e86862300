"""Differentiable batch augmentations with explicit, replayable randomness.

Every augmentation separates *sampling* its parameters (from an explicit
``torch.Generator``) from *applying* them (a pure, differentiable function of the images
and the parameters). A training step that is recomputed later, for example in the
reverse pass of the distillation engine, replays the identical transform by applying the
same parameters again.

    aug = create_augmentation("flip_rotate")
    params = aug.sample(x.shape, generator)
    y = aug.apply(x, params)

Parameters are drawn on the CPU (in float64 where continuous) and moved to the device
and dtype of the images in ``apply``. ``flip``, ``rotate`` and ``flip_rotate`` use one
draw for the whole batch; ``scale``, ``crop``, ``color`` and ``cutout`` (the
differentiable siamese augmentations of DSA, Zhao & Bilen 2021) draw per image, so
their parameters have a leading dimension ``N``. ``compose`` chains registered
augmentations in order and ``dsa`` is DSA's default strategy
``color_crop_cutout_flip_scale_rotate``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

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
    """Build a registered augmentation by name; unknown names list the valid ones.

    Registered names joined by ``+`` (``"crop+scale+rotate"``) chain those augmentations
    in that order, each with its default options: a :class:`Compose` that can be named in a
    configuration or on the command line (for other options build :class:`Compose`)."""
    if "+" in str(name):
        members = tuple(part.strip().lower() for part in str(name).split("+"))
        if options:
            raise ConfigError(f"augmentation {name!r}: a '+' chain takes no options (got {sorted(options)}); "
                              "build Compose(names=..., options=...) for members with options")
        if not all(members):
            raise ConfigError(f"augmentation {name!r}: an empty name in the '+' chain; write registered names "
                              f"joined by '+', e.g. 'crop+scale+rotate' (valid: {', '.join(list_augmentations())})")
        return Compose(names=members)
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


def _check_option(aug: str, option: str, value: Any, lo: float, hi: float = math.inf) -> None:
    """Fail at construction unless ``value`` is a finite real number in ``[lo, hi]``."""
    valid = f"in [{lo:g}, {hi:g}]" if math.isfinite(hi) else f">= {lo:g}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and lo <= value <= hi):
        raise ConfigError(f"{aug}: {option} must be a number {valid}, got {value!r}")


def _side(size: int, fraction: float) -> int:
    """``size * fraction`` rounded half up, as DSA sizes its shifts and cutouts."""
    return int(size * fraction + 0.5)


def _per_image(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-image parameter ``(N,)`` as ``(N, 1, 1, 1)`` on the device and dtype of ``x``."""
    return t.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


@AUGMENTATIONS.register("scale")
@dataclass(frozen=True)
class Scale:
    """Per-image scaling about the centre, independently along height and width, by
    factors uniform in ``[1 / ratio, ratio]``; zeros fill what comes into view.

    Parameters: ``scale`` ``(N, 2)``, the factors along (height, width) applied to the
    sampling grid, so a factor above 1 shrinks the image.
    """

    ratio: float = 1.2
    name: str = "scale"

    def __post_init__(self):
        _check_option("scale", "ratio", self.ratio, 1.0)

    def sample(self, shape, generator):
        u = torch.rand((shape[0], 2), generator=generator, dtype=torch.float64)
        return {"scale": u * (self.ratio - 1.0 / self.ratio) + 1.0 / self.ratio}

    def apply(self, x, params):
        s = params["scale"].to(device=x.device, dtype=x.dtype)
        # affine_grid's first row acts on the width (x) coordinate, the second on height.
        linear = torch.diag_embed(s.flip(-1))
        theta = torch.cat([linear, linear.new_zeros(x.shape[0], 2, 1)], dim=2)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@AUGMENTATIONS.register("crop")
@dataclass(frozen=True)
class Crop:
    """Per-image translation by whole pixels with zero padding (DSA's ``crop``): shifts
    uniform over the integers in ``[-s, s]`` with ``s = round(fraction * size)``,
    independently along height and width.

    Parameters: ``shift`` ``(N, 2)`` int64 along (height, width); output pixel
    ``(i, j)`` of image ``n`` is input pixel ``(i + shift[n, 0], j + shift[n, 1])``, or
    zero outside the image.
    """

    fraction: float = 0.125
    name: str = "crop"

    def __post_init__(self):
        _check_option("crop", "fraction", self.fraction, 0.0, 1.0)

    def sample(self, shape, generator):
        n, _, h, w = shape
        shifts = [
            torch.randint(-s, s + 1, (n,), generator=generator)
            for s in (_side(h, self.fraction), _side(w, self.fraction))
        ]
        return {"shift": torch.stack(shifts, dim=1)}

    def apply(self, x, params):
        n, c, h, w = x.shape
        shift = params["shift"].to(x.device)
        # Index into a copy padded by one zero on every side; clamping sends every
        # position outside the image to the zero border.
        rows = (torch.arange(h, device=x.device) + shift[:, :1] + 1).clamp(0, h + 1)
        cols = (torch.arange(w, device=x.device) + shift[:, 1:] + 1).clamp(0, w + 1)
        padded = F.pad(x, (1, 1, 1, 1))
        out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2))
        return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


@AUGMENTATIONS.register("color")
@dataclass(frozen=True)
class Color:
    """Per-image colour jitter as DSA's ``color``, in this order: brightness adds
    ``(u - 0.5) * brightness``; saturation scales each pixel's deviation from its mean
    over channels by ``u * saturation`` (no effect on one channel); contrast scales the
    deviation from the image's mean by ``u + contrast``; each ``u`` uniform in [0, 1].

    Parameters: ``brightness`` (the offsets), ``saturation`` and ``contrast`` (the
    factors), each ``(N,)``.
    """

    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    name: str = "color"

    def __post_init__(self):
        for option in ("brightness", "saturation", "contrast"):
            _check_option("color", option, getattr(self, option), 0.0)

    def sample(self, shape, generator):
        n = shape[0]
        b, s, c = (torch.rand(n, generator=generator, dtype=torch.float64) for _ in range(3))
        return {
            "brightness": (b - 0.5) * self.brightness,
            "saturation": s * self.saturation,
            "contrast": c + self.contrast,
        }

    def apply(self, x, params):
        x = x + _per_image(params["brightness"], x)
        if x.shape[1] > 1:
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * _per_image(params["saturation"], x) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * _per_image(params["contrast"], x) + mean


@AUGMENTATIONS.register("cutout")
@dataclass(frozen=True)
class Cutout:
    """Per-image zeroing of a rectangle of ``round(fraction * size)`` pixels along each
    side (a square on square images), in all channels, centred uniformly over the image
    and clipped at its border (DSA's ``cutout``).

    Parameters: ``centre`` ``(N, 2)`` int64 (row, column); ``apply`` multiplies by the
    constant mask these define.
    """

    fraction: float = 0.5
    name: str = "cutout"

    def __post_init__(self):
        _check_option("cutout", "fraction", self.fraction, 0.0, 1.0)

    def sample(self, shape, generator):
        n, _, h, w = shape
        # An even side has no middle pixel: centres run over [0, size] so that the
        # clipping is symmetric at both borders.
        centres = [
            torch.randint(0, size + 1 - _side(size, self.fraction) % 2, (n,), generator=generator)
            for size in (h, w)
        ]
        return {"centre": torch.stack(centres, dim=1)}

    def apply(self, x, params):
        _, _, h, w = x.shape
        centre = params["centre"].to(x.device)
        inside = []
        for axis, size in enumerate((h, w)):
            side = _side(size, self.fraction)
            start = centre[:, axis : axis + 1] - side // 2
            pos = torch.arange(size, device=x.device)
            inside.append((pos >= start) & (pos < start + side))
        keep = ~(inside[0][:, :, None] & inside[1][:, None, :])
        return x * keep.unsqueeze(1).to(x.dtype)


_DSA_STRATEGY = ("color", "crop", "cutout", "flip", "scale", "rotate")


@AUGMENTATIONS.register("compose")
@dataclass(frozen=True)
class Compose:
    """Registered augmentations applied one after the other, in the order of ``names``
    (by default DSA's strategy); ``options`` maps a member's name to its options, e.g.
    ``{"scale": {"ratio": 1.1}}``.

    Parameters: every member's, in one flat dict with keys prefixed by the member's name
    (``"crop.shift"``); members sample in order from the one generator.
    """

    names: tuple[str, ...] = _DSA_STRATEGY
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    name: str = "compose"

    def __post_init__(self):
        if not isinstance(self.names, (tuple, list)) or not all(isinstance(n, str) for n in self.names):
            raise ConfigError(
                f"{self.name}: names must be a sequence of augmentation names such as "
                f"{_DSA_STRATEGY}, got {self.names!r}; valid names: {', '.join(list_augmentations())}"
            )
        names = tuple(n.lower() for n in self.names)
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.name}: each augmentation may appear once in names, got {self.names!r}")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"{self.name}: options must map member names to option dicts, got {self.options!r}")
        options = {str(k).lower(): v for k, v in self.options.items()}
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ConfigError(f"{self.name}: options for {unknown} which are not in names {names}")
        for member, opts in options.items():
            if not isinstance(opts, Mapping):
                raise ConfigError(f"{self.name}: options[{member!r}] must be a dict of options, got {opts!r}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "options", options)
        try:
            self._members  # build now, so that bad member options fail at construction
        except ConfigError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None

    @cached_property
    def _members(self) -> tuple[Augmentation, ...]:
        return tuple(create_augmentation(n, **self.options.get(n, {})) for n in self.names)

    def sample(self, shape, generator):
        params = {}
        for prefix, member in zip(self.names, self._members):
            params.update({f"{prefix}.{k}": v for k, v in member.sample(shape, generator).items()})
        return params

    def apply(self, x, params):
        for prefix, member in zip(self.names, self._members):
            head = prefix + "."
            x = member.apply(x, {k[len(head) :]: v for k, v in params.items() if k.startswith(head)})
        return x


@AUGMENTATIONS.register("dsa")
@dataclass(frozen=True)
class DSA(Compose):
    """DSA's default strategy ``color_crop_cutout_flip_scale_rotate``, every member
    applied in that order with its default options (overridable through ``options``)."""

    name: str = "dsa"
