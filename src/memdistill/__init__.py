"""memdistill: distill image datasets into compact, addressable memories.

The public API; everything not listed in ``__all__`` is private.
"""

from ._version import __version__
from .augment import create_augmentation, list_augmentations
from .config import DistillConfig, resolve
from .distill import Distiller
from .distributed import DistContext, init_distributed
from .data import ImageDataset, list_datasets, load_dataset, locate_dataset, train_val_split
from .errors import (
    ConfigError,
    DataError,
    DataNotFoundError,
    DistributedError,
    IntegrityError,
    MemdistillError,
    TaskDataRevokedError,
    UnknownNameError,
)
from .evaluate import EvaluationResult, TrainConfig, TrainingSet, evaluate, select_subset
from .memory import MemoryFile, create_memory, list_memories, load_memory, save_memory
from .models import create_model, list_models
from .labels import LabelSpace, create_label_space, list_label_spaces
from .queries import class_query, group_query, interpolation_queries, mixture_query, parse_query
from .derive import DerivedTask, derive_training_set, load_derived, parse_task, run_derived_task, save_derived
from .continual import create_benchmark, list_benchmarks, list_strategies, run_comparison, run_continual

load = load_memory

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "EvaluationResult",
    "ImageDataset",
    "IntegrityError",
    "TaskDataRevokedError",
    "MemdistillError",
    "TrainConfig",
    "TrainingSet",
    "UnknownNameError",
    "MemoryFile",
    "create_benchmark",
    "list_benchmarks",
    "list_strategies",
    "run_comparison",
    "run_continual",
    "create_augmentation",
    "create_memory",
    "list_memories",
    "load",
    "load_memory",
    "save_memory",
    "Distiller",
    "LabelSpace",
    "create_label_space",
    "list_label_spaces",
    "class_query",
    "group_query",
    "interpolation_queries",
    "mixture_query",
    "parse_query",
    "DerivedTask",
    "derive_training_set",
    "load_derived",
    "parse_task",
    "run_derived_task",
    "save_derived",
    "DistContext",
    "DistributedError",
    "init_distributed",
    "DistillConfig",
    "resolve",
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
