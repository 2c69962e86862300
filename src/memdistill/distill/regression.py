"""Neural feature regression: a cheap outer objective for the first outer steps.

The unrolled objective (:mod:`.step`) trains an inner network for ``T`` steps on the
memory and differentiates its real-data loss through all of them: exact, but each outer
step costs ``T`` inner steps and their reverse pass. Feature regression (in the manner of
FRePo, Zhou et al., NeurIPS 2022) differentiates through no training at all. It takes a
network ``f`` of a pool whose members are trained on the memory, treats the memory's
recalled examples ``x_s`` (with one-hot targets ``Y_s``, centred) as the support set of
a kernel ridge regression on ``f``'s penultimate features, and scores how well that
regression predicts a batch of real images ``x_t``:

    K_ss = f(x_s) f(x_s)^T,  K_ts = f(x_t) f(x_s)^T,
    pred = K_ts (K_ss + lambda I)^-1 Y_s,  lambda = reg * trace(K_ss) / n,
    loss = mean over the real batch of ||pred - Y_t||^2.

Only ``f(x_s)`` depends on the memory, so one outer step costs about one forward and
backward pass over the recalled examples and one forward pass over the real batch.
After each such step the member it used trains one inner step (``inner.optimizer`` on
the cross-entropy of every recalled example, detached) and returns to the pool, which
re-initialises members past ``outer.regression_max_steps`` (:class:`.pool.ModelPool`
with an unroll of one step). ``outer.regression_steps`` of the run's outer steps use it
before the unrolled objective takes over with a fresh outer optimiser. Recalled examples
are not augmented; the real batch is, as the unrolls' is, and class weights of the outer
loss (``StepInputs.class_weight``, the continual ``shared`` strategy) weigh its errors.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine import inner_loss
from ..errors import ConfigError
from ..memory import Memory
from ..models import functional_forward
from .pool import Member
from .step import StepInputs, StepResult, _coefficient_penalty, _real_batch, inner_model

__all__ = ["feature_regression_loss", "feature_network", "regression_step"]

Tensors = tuple[torch.Tensor, ...]


def feature_regression_loss(fs: torch.Tensor, ys: torch.Tensor, ft: torch.Tensor, yt: torch.Tensor,
                            reg: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel-ridge-regression loss of the module docstring.

    Args:
        fs: ``(n, d)`` features of the support set (the recalled examples).
        ys: ``(n, L)`` their regression targets.
        ft: ``(m, d)`` features of the real batch.
        yt: ``(m, L)`` its targets.
        reg: ``lambda / (trace(K_ss) / n)``, the ridge relative to the mean kernel diagonal.
        weight: ``(m,)`` weights of the real examples (default: the plain mean).
    """
    kss = fs @ fs.T
    n = kss.shape[0]
    ridge = reg * torch.diagonal(kss).mean()
    alpha = torch.linalg.solve(kss + ridge * torch.eye(n, dtype=kss.dtype, device=kss.device), ys)
    pred = (ft @ fs.T) @ alpha
    err = ((pred - yt) ** 2).sum(1)
    return err.mean() if weight is None else (weight * err).sum() / weight.sum()


def feature_network(inputs: StepInputs, g: torch.Generator) -> tuple[Callable, Tensors]:
    """A freshly initialised inner network (:func:`.step.inner_model`): its pure
    ``forward(params, x) -> (logits, features)``, the features being the input of its
    last linear layer, flattened, and its initial parameters."""
    cfg = inputs.config
    model = inner_model(inputs, g)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"outer.regression_steps needs an inner network with a linear classifier; "
                          f"inner.arch={cfg.inner.arch!r} has none")
    names = [n for n, _ in model.named_parameters()]
    captured: list[torch.Tensor] = []
    linears[-1].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))

    def forward(params, x):
        captured.clear()
        logits = functional_forward(model, dict(zip(names, params)), x)
        return logits, captured.pop().flatten(1)

    return forward, tuple(p.detach() for p in model.parameters())


def regression_step(inputs: StepInputs, memory: Memory, g: torch.Generator, member: Member,
                    forward: Callable) -> StepResult:
    """Feature-regression loss and its gradient with respect to ``memory`` on pool
    ``member`` (its network's ``forward``: :func:`feature_network`'s), and the member
    after one inner training step on the memory (the result's ``final``). The real batch
    (``outer.regression_real_per_class`` per class) is drawn from ``g``. One forward pass
    over the recalled examples serves both: the regression's features and the member's
    training logits."""
    oc = inputs.config.outer
    L, r = inputs.train.num_classes, memory.slots
    classes = torch.arange(L, device=inputs.device).repeat_interleave(r)
    slots = torch.arange(r, device=inputs.device).repeat(L)
    params = memory.parameters()
    xs, _ = memory.recall_from(memory.tensors, classes, slots)
    xr, yr = _real_batch(inputs, range(L), g, per_class=oc.regression_real_per_class)
    train_params = tuple(p.detach().requires_grad_() for p in member.params)
    out, fs = forward(train_params, xs)
    with torch.no_grad():
        ft = forward(train_params, xr)[1]
    centre = 1.0 / L
    ys = F.one_hot(classes, L).to(fs.dtype) - centre
    yt = F.one_hot(yr, L).to(fs.dtype) - centre
    weight = None if inputs.class_weight is None else inputs.class_weight.to(fs)[yr]  # as the unrolls weigh them
    loss = feature_regression_loss(fs, ys, ft, yt, oc.regression_reg, weight)
    grads = list(torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True))
    grads = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]
    _coefficient_penalty(inputs, memory, grads, split=False)
    inner = inner_loss(out, classes)  # the member's training step, on the same forward pass
    new_params, new_state = inputs.inner_optimizer.update(torch.autograd.grad(inner, train_params), member.state,
                                                           train_params)
    final = (tuple(p.detach() for p in new_params), tuple(s.detach() for s in new_state))
    return StepResult(float(loss.detach()), tuple(grads), [float(inner.detach())], [final])
