"""Retrain-and-test evaluation and the real-data reference selections."""

from ._train import (
    EvaluationResult,
    TrainConfig,
    TrainingSet,
    evaluate,
    run_seeds,
    test_network,
    train_network,
)
from .selection import SELECTIONS, herding_order, list_selections, select_subset

__all__ = [
    "EvaluationResult",
    "TrainConfig",
    "TrainingSet",
    "evaluate",
    "run_seeds",
    "test_network",
    "train_network",
    "SELECTIONS",
    "herding_order",
    "list_selections",
    "select_subset",
]
