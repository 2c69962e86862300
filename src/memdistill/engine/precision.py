"""Reduced precision for the inner network (``inner.precision``).

``bfloat16`` runs the inner network's forward under :func:`torch.autocast`: its
convolutions and matrix products (and, through autograd, their backward and double
backward in the meta-gradient) compute in bfloat16, while the network's parameters,
the inner optimiser's state, the memory and every loss stay float32. The forward's
logits are returned as float32, so the inner and outer losses are the float32 ones of
bfloat16 activations. It is opt-in: the default ``float32`` is the exact engine (the
float64 equality tests hold for it), and ``bfloat16`` is refused on a device without
bfloat16 kernels rather than run slowly in emulation.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError

__all__ = ["INNER_PRECISIONS", "bfloat16_support", "check_precision", "with_precision"]

INNER_PRECISIONS = ("float32", "bfloat16")


def bfloat16_support(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` has bfloat16 kernels for the inner network, and if not, why."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, ""
        return False, f"the GPU {torch.cuda.get_device_name(device)} has no bfloat16 support (Ampere or newer has)"
    if device.type == "cpu":
        try:
            ok = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN
            ok = False
        if ok:
            return True, ""
        return False, ("this CPU has no oneDNN bfloat16 kernels (they need AVX-512 or AMX on x86, or the "
                       "BF16 extension on ARM)")
    return False, f"device type {device.type!r} is not supported for bfloat16 (cuda and cpu are)"


def _check_known(precision: str) -> None:
    if precision not in INNER_PRECISIONS:
        raise ConfigError(f"inner.precision must be one of {', '.join(INNER_PRECISIONS)}, got {precision!r}")


def check_precision(precision: str, device: torch.device) -> None:
    """Raise a :class:`ConfigError` if ``precision`` is unknown or ``device`` cannot run it."""
    _check_known(precision)
    if precision == "bfloat16":
        ok, why = bfloat16_support(device)
        if not ok:
            raise ConfigError(f"inner.precision=bfloat16 cannot run here: {why}. Use inner.precision=float32 "
                              "(the default; --set inner.precision=float32)")


def with_precision(forward: Callable[..., torch.Tensor], precision: str,
                   device: torch.device) -> Callable[..., torch.Tensor]:
    """``forward(params, x)`` computed at ``precision`` (float32 logits either way). The
    caller checks once that ``device`` can run it (:func:`check_precision`; the distiller
    does at its start): this wraps the forward of every new inner network."""
    if precision == "float32":
        return forward
    _check_known(precision)

    def low(params, x):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = forward(params, x)
        return logits.float()

    return low
