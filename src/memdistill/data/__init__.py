"""Datasets: verified loading, download, lookup and ZCA whitening.

>>> from memdistill.data import load_dataset, train_val_split
>>> train = load_dataset("mnist", "train")          # uint8 images (60000, 1, 28, 28)
>>> train, val = train_val_split(train, 0.1, seed=0)

Files are found under ``root``, else ``$MEMDISTILL_DATA``, else ``./data`` (torchvision
layout) and checked against their declared checksums before anything is parsed.
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
from . import cifar, mnist, svhn, tiny_imagenet  # noqa: F401  (register the datasets)
from .zca import ZCAWhitening, fit_zca

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetStatus",
    "FileChecksum",
    "ImageDataset",
    "ZCAWhitening",
    "dataset_info",
    "fit_zca",
    "list_datasets",
    "load_dataset",
    "locate_dataset",
    "resolve_roots",
    "train_val_split",
]
