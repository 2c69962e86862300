"""Networks chosen by name: the DC/DSA cross-architecture set.

>>> import torch
>>> from memdistill.models import create_model
>>> net = create_model("convnet", 1, 10, 28, generator=torch.Generator().manual_seed(0), width=32)
>>> net(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])

Every network maps (N, C, H, W) images to (N, num_classes) logits, is built without
touching the global RNG, and has no buffers: batch normalisation (``norm="batch"``)
always uses the statistics of the current batch, so the network is a pure function of
its parameters and input and can be run with :func:`functional_forward` and
differentiated to any order.
"""

from __future__ import annotations

from ._factory import (
    MODELS,
    ModelOptions,
    create_model,
    default_options,
    functional_forward,
    init_parameters,
    list_models,
    parameter_dict,
    register_model,
    supported_options,
)

# Importing the network modules registers them.
from . import alexnet, convnet, lenet, mlp, resnet, vgg  # noqa: E402,F401  isort: skip

__all__ = [
    "MODELS",
    "ModelOptions",
    "create_model",
    "default_options",
    "functional_forward",
    "init_parameters",
    "list_models",
    "parameter_dict",
    "register_model",
    "supported_options",
]
