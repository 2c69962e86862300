"""memdistill: distill image datasets into compact, addressable memories.

The public API; everything not listed in ``__all__`` is private.
"""

__version__ = "0.1.0"

from .augment import create_augmentation, list_augmentations
from .config import DistillConfig, preset_config
from .distill import Distiller
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
from .memory import MemoryFile, create_memory, list_memories, load_memory, save_memory
from .models import create_model, list_models

load = load_memory

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
    "MemoryFile",
    "create_augmentation",
    "create_memory",
    "list_memories",
    "load",
    "load_memory",
    "save_memory",
    "Distiller",
    "DistillConfig",
    "preset_config",
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
