"""Retrain-and-test evaluation and the real-data reference selections."""

from ._train import (
    LR_SCHEDULES,
    SCHEDULES,
    EvaluationResult,
    TrainConfig,
    TrainingSet,
    converged,
    epoch_lr,
    evaluate,
    fit_network,
    format_accuracy,
    run_seeds,
    sample_std,
    test_network,
    train_network,
)
from .selection import SELECTIONS, herding_order, list_selections, select_subset

__all__ = [
    "LR_SCHEDULES",
    "SCHEDULES",
    "EvaluationResult",
    "TrainConfig",
    "TrainingSet",
    "converged",
    "epoch_lr",
    "evaluate",
    "fit_network",
    "format_accuracy",
    "run_seeds",
    "sample_std",
    "test_network",
    "train_network",
    "SELECTIONS",
    "herding_order",
    "list_selections",
    "select_subset",
]
