"""Datasets: verified loading, download, lookup and ZCA whitening.

>>> from memdistill.data import load_dataset, train_val_split
>>> train = load_dataset("mnist", "train")          # uint8 images (60000, 1, 28, 28)
>>> train, val = train_val_split(train, 0.1, seed=0)

Files are found under ``root``, else ``$MEMDISTILL_DATA``, else ``./data`` (torchvision
layout) and checked against their declared checksums before anything is parsed.

Your own data loads the same way by name: ``load_dataset("folder:PATH", "train")`` (an
image folder per class) or ``load_dataset("npz:PATH", "train")`` (arrays ``x``, ``y``).
"""

from ._base import ImageDataset, train_val_split
from ._integrity import FileChecksum
from ._registry import (
    DATASETS,
    DatasetInfo,
    DatasetStatus,
    dataset_info,
    list_datasets,
    load_dataset,
    locate_dataset,
)
from ._root import resolve_roots
from ._custom import USER_KINDS, canonical_dataset_name, check_dataset_source, is_user_dataset, user_datasets_under
from . import arrays, cifar, folder, mnist, svhn, tiny_imagenet  # noqa: F401  (register the datasets)
from .zca import ZCAWhitening, fit_zca

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetStatus",
    "FileChecksum",
    "ImageDataset",
    "USER_KINDS",
    "ZCAWhitening",
    "canonical_dataset_name",
    "check_dataset_source",
    "dataset_info",
    "fit_zca",
    "is_user_dataset",
    "list_datasets",
    "load_dataset",
    "locate_dataset",
    "resolve_roots",
    "train_val_split",
    "user_datasets_under",
]
