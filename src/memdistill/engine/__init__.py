"""The meta-gradient engine: pure inner steps, inner optimisers, unroll modes."""

from .optim import INNER_OPTIMIZERS, InnerAdam, InnerOptimizer, InnerSGD, create_inner_optimizer
from .plan import draw_plans, memory_recall
from .precision import INNER_PRECISIONS, check_precision, with_precision
from .schedule import Checkpoints
from .unroll import UNROLL_MODES, ClassSplit, MetaGradient, inner_loss, inner_step, meta_gradient

__all__ = [
    "Checkpoints",
    "INNER_OPTIMIZERS",
    "InnerAdam",
    "InnerOptimizer",
    "InnerSGD",
    "INNER_PRECISIONS",
    "check_precision",
    "with_precision",
    "create_inner_optimizer",
    "draw_plans",
    "memory_recall",
    "UNROLL_MODES",
    "ClassSplit",
    "MetaGradient",
    "inner_loss",
    "inner_step",
    "meta_gradient",
]
