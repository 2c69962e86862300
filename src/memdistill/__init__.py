"""memdistill: distill image datasets into compact, addressable memories.

The public API; everything not listed in ``__all__`` is private.
"""

__version__ = "0.1.0"

from .augment import create_augmentation, list_augmentations
from .data import ImageDataset, list_datasets, load_dataset, locate_dataset, train_val_split
from .errors import (
    ConfigError,
    DataError,
    DataNotFoundError,
    IntegrityError,
    MemdistillError,
    UnknownNameError,
)
from .evaluate import EvaluationResult, TrainConfig, TrainingSet, evaluate, select_subset
from .models import create_model, list_models

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "EvaluationResult",
    "ImageDataset",
    "IntegrityError",
    "MemdistillError",
    "TrainConfig",
    "TrainingSet",
    "UnknownNameError",
    "create_augmentation",
    "create_model",
    "evaluate",
    "list_augmentations",
    "list_datasets",
    "list_models",
    "load_dataset",
    "locate_dataset",
    "select_subset",
    "train_val_split",
]
