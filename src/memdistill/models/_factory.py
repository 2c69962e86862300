"""The network registry, the factory, parameter initialisation and the functional path."""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor, nn

from .._registry import Registry
from ..errors import ConfigError

__all__ = [
    "MODELS",
    "ModelOptions",
    "register_model",
    "list_models",
    "default_options",
    "supported_options",
    "create_model",
    "init_parameters",
    "functional_forward",
    "parameter_dict",
    "check_int",
    "check_choice",
]

ImageSize = int | tuple[int, int]
B = TypeVar("B", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelOptions:
    """Base of every network's options: a frozen dataclass validated on construction.

    A field's ``metadata["doc"]`` (if any) is shown next to its default in error messages.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` (listing valid values) for an invalid option."""

    def resolved(self, image_size: tuple[int, int]) -> ModelOptions:
        """These options with defaults that depend on the image size filled in."""
        return self


@dataclass(frozen=True)
class ModelEntry:
    """What the registry holds for one network: its builder and its options type.

    ``build(in_channels, num_classes, (H, W), **options)`` returns the module.
    """

    name: str
    build: Callable[..., nn.Module]
    options: type[ModelOptions]


MODELS: Registry[ModelEntry] = Registry("network")


def register_model(name: str, options: type[ModelOptions]) -> Callable[[B], B]:
    """Register a network class or builder function under ``name`` (lower-cased)."""

    def decorator(build: B) -> B:
        MODELS.register(name)(ModelEntry(name.lower(), build, options))
        return build

    return decorator


def list_models() -> list[str]:
    """Names of all registered networks, sorted."""
    return MODELS.names()


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"option {name}={value!r} is invalid; expected an integer >= {minimum}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(
            f"option {name}={value!r} is invalid; valid values: {', '.join(map(repr, choices))}"
        )


def _describe_options(options: type[ModelOptions]) -> str:
    parts = []
    for f in dataclasses.fields(options):
        text = f"{f.name}={f.default!r}"
        if "doc" in f.metadata:
            text += f" ({f.metadata['doc']})"
        parts.append(text)
    return ", ".join(parts) if parts else "(none)"


def _make_options(entry: ModelEntry, options: dict[str, Any]) -> ModelOptions:
    valid = [f.name for f in dataclasses.fields(entry.options)]
    unknown = [key for key in options if key not in valid]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, valid, n=1)
            if close:
                hints.append(f"{key!r} -> {close[0]!r}?")
        hint = f" Did you mean {', '.join(hints)}" if hints else ""
        raise ConfigError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for network {entry.name!r}; "
            f"valid options (defaults): {_describe_options(entry.options)}.{hint}"
        )
    try:
        return entry.options(**options)
    except ConfigError as error:
        raise ConfigError(f"network {entry.name!r}: {error}") from None


def _image_size(image_size: Any) -> tuple[int, int]:
    def is_size(value: Any) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1

    if is_size(image_size):
        return int(image_size), int(image_size)
    pair = isinstance(image_size, (tuple, list)) and len(image_size) == 2
    if pair and all(map(is_size, image_size)):
        return int(image_size[0]), int(image_size[1])
    raise ConfigError(
        f"image_size={image_size!r} is invalid; expected a positive integer or a pair (H, W)"
    )


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name}={value!r} is invalid; expected a positive integer")
    return int(value)


def default_options(name: str, image_size: ImageSize | None = None) -> dict[str, Any]:
    """The options of network ``name`` with their defaults, as a plain dict.

    Some defaults depend on the image size (``convnet``'s ``depth`` is ``None``, meaning
    4 for images of at least 64 px and 3 otherwise); pass ``image_size`` to get them
    resolved.
    """
    entry = MODELS.get(name)
    options = entry.options()
    if image_size is not None:
        options = options.resolved(_image_size(image_size))
    return dataclasses.asdict(options)


def supported_options(name: str, **options: Any) -> dict[str, Any]:
    """The subset of ``options`` that network ``name`` accepts, dropping ``None`` values.

    Lets one setting (say ``width=32``) be applied across an architecture list where
    some networks (``lenet``) have no such option.
    """
    valid = default_options(name)
    return {k: v for k, v in options.items() if k in valid and v is not None}


def create_model(
    name: str,
    in_channels: int,
    num_classes: int,
    image_size: ImageSize,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> nn.Module:
    """Build the registered network ``name`` for images (N, in_channels, H, W).

    The module maps (N, in_channels, H, W) to logits (N, num_classes). ``image_size`` is
    ``H`` for square images or a pair ``(H, W)``. ``options`` are the network's own
    settings (width, depth, norm, ...; see :func:`default_options`); unknown names or
    invalid values raise :class:`ConfigError` listing what is valid.

    Randomness comes only from ``generator``: the global RNG is neither read nor
    advanced. The module is built on the ``meta`` device, materialised on the
    generator's device in float32, initialised by :func:`init_parameters` (PyTorch's
    default initialisation) and then moved to ``device``/``dtype``; the same generator
    state therefore gives the same weights on every device and dtype (up to rounding).
    ``generator=None`` uses a fresh ``torch.Generator()`` with its default seed, so it is
    deterministic: every call without a generator returns the same weights. Building
    consumes random numbers from ``generator``, so two calls with one generator give two
    different networks.

    ``device`` and ``dtype`` default to PyTorch's defaults, as for ``torch.nn`` modules.
    The returned module has no buffers and is in training mode (which changes nothing:
    no network here behaves differently in evaluation mode).
    """
    entry = MODELS.get(name)
    in_channels = _positive("in_channels", in_channels)
    num_classes = _positive("num_classes", num_classes)
    size = _image_size(image_size)
    resolved = _make_options(entry, options).resolved(size)
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype={dtype!r} is invalid; expected a floating-point torch.dtype")
    if device is None:
        device = torch.get_default_device()
    if generator is None:
        generator = torch.Generator()

    try:
        with torch.device("meta"):
            model = entry.build(in_channels, num_classes, size, **dataclasses.asdict(resolved))
    except ConfigError as error:
        raise ConfigError(f"network {entry.name!r}: {error}") from None
    model = model.to(dtype=torch.float32).to_empty(device=generator.device)
    init_parameters(model, generator)
    return model.to(device=device, dtype=dtype)


_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMALISING = (nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every parameter of ``model`` in place, drawing only from ``generator``.

    Reproduces PyTorch's default initialisation: convolutions and linear layers get
    ``kaiming_uniform_(weight, a=sqrt(5))`` and a bias uniform in
    ``(-1/sqrt(fan_in), 1/sqrt(fan_in))``; normalisation layers get weight 1, bias 0.
    Modules are visited in registration order, which for our networks is construction
    order, so the weights equal those of building the model eagerly after
    ``torch.manual_seed(s)`` when ``generator`` was seeded with ``s``. The tensors must
    live on ``generator``'s device. Raises :class:`TypeError` if a parameter belongs to
    a module type this function does not know, so no parameter is ever left
    uninitialised.
    """
    initialised: set[int] = set()
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            initialised.add(id(module.weight))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
                initialised.add(id(module.bias))
        elif isinstance(module, _NORMALISING):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                initialised.add(id(module.weight))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
                initialised.add(id(module.bias))
    missing = [
        f"{name} ({type(model.get_submodule(name.rpartition('.')[0])).__name__})"
        for name, parameter in model.named_parameters()
        if id(parameter) not in initialised
    ]
    if missing:
        raise TypeError(f"init_parameters does not know how to initialise: {', '.join(missing)}")
    return model


def functional_forward(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``model(x)`` computed with the tensors in ``params`` instead of its own parameters.

    ``params`` maps every parameter name of ``model`` (as in ``named_parameters()``) to a
    tensor of the same shape; a missing or extra name raises. Gradients flow to
    ``params`` and ``x`` to second order (``create_graph=True`` works; the ``instance``
    norm refuses a third derivative, see ``_instance_norm.py``), and ``model`` itself
    is neither used for its values nor changed. x: (N, C, H, W) -> logits (N, classes).
    """
    return torch.func.functional_call(model, params, (x,), strict=True)


def parameter_dict(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of ``model``'s parameters that require grad, keyed by name.

    The copies share no memory with the module, so updating them functionally (as an
    unrolled inner loop does) never touches the module.
    """
    return {
        name: parameter.detach().clone().requires_grad_(True)
        for name, parameter in model.named_parameters()
    }
