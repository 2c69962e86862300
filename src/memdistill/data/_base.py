"""The in-memory dataset type every loader returns.

Images are held once as ``uint8`` tensors of shape ``(N, C, H, W)`` and turned into
normalised float tensors only when a batch is taken (per-channel mean/std, then the
optional ZCA whitening fitted on the training split).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..errors import ConfigError

__all__ = ["ImageDataset", "Whitening", "train_val_split"]


class Whitening(Protocol):
    """What a dataset needs of a whitening transform (:class:`~memdistill.data.ZCAWhitening`
    is the one the library fits); declared here so the dataset type depends on no
    particular transform."""

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., C, H, W)`` images to whitened ones, same shape."""

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`transform`."""


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image dataset held in memory.

    Attributes:
        name: registry name of the dataset (``"mnist"``, ``"cifar100"``, ...).
        split: ``"train"``, ``"test"`` or ``"val"`` (carved from train).
        images: ``uint8`` tensor ``(N, C, H, W)``.
        labels: ``int64`` tensor ``(N,)`` of class indices into ``classes``.
        classes: class names, ``len(classes) == num_classes``.
        mean, std: per-channel statistics in ``[0, 1]`` pixel units.
        zca: optional whitening applied after mean/std normalisation.
        extra_labels: other labellings of the same images (e.g. CIFAR-100 ``"coarse"``).
        extra_classes: class names of each extra labelling.
        source: where a user dataset (``folder:``/``npz:``) came from, JSON-compatible:
            kind, canonical name, path, classes, image shape, manifest digest, split and
            decoding rules; ``None`` for the built-in datasets (their files are fixed).
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    zca: Whitening | None = None
    extra_labels: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source: dict | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ConfigError(
                f"dataset {self.name!r}: images must be uint8 (N, C, H, W), "
                f"got {self.images.dtype} with shape {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ConfigError(
                f"dataset {self.name!r}: {self.images.shape[0]} images but labels of shape "
                f"{tuple(self.labels.shape)}"
            )
        c = self.images.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise ConfigError(f"dataset {self.name!r}: mean/std need {c} channel values")

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    # ---------------------------------------------------------- normalisation
    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return mean, std

    def normalize(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``uint8 (N, C, H, W)`` -> normalised float (mean/std, then ZCA if set)."""
        x = images.to(dtype).div_(255.0)
        mean, std = self._stats(x)
        x = (x - mean) / std
        if self.zca is not None:
            x = self.zca.transform(x)
        return x

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float images back to pixel space in ``[0, 1]`` (undoes ZCA too)."""
        if self.zca is not None:
            x = self.zca.inverse(x)
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0.0, 1.0)

    def batch(
        self, indices: torch.Tensor | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images and labels for ``indices`` (all when ``None``)."""
        imgs = self.images if indices is None else self.images[indices]
        labels = self.labels if indices is None else self.labels[indices]
        if device is not None:
            imgs, labels = imgs.to(device), labels.to(device)
        return self.normalize(imgs), labels

    # ----------------------------------------------------------------- subsets
    def subset(self, indices: torch.Tensor, split: str | None = None) -> "ImageDataset":
        """A new dataset holding only ``indices`` (labels and extra labels follow)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return dataclasses.replace(
            self,
            split=split or self.split,
            images=self.images[indices],
            labels=self.labels[indices],
            extra_labels={k: v[indices] for k, v in self.extra_labels.items()},
        )

    def with_zca(self, zca: Whitening | None) -> "ImageDataset":
        return dataclasses.replace(self, zca=zca)

    def with_labels(self, labelling: str) -> "ImageDataset":
        """Swap the main labels for one of ``extra_labels`` (e.g. ``"coarse"``)."""
        if labelling not in self.extra_labels:
            valid = ", ".join(sorted(self.extra_labels)) or "none"
            raise ConfigError(
                f"dataset {self.name!r} has no labelling {labelling!r}; extra labellings: {valid}"
            )
        return dataclasses.replace(
            self,
            labels=self.extra_labels[labelling],
            classes=self.extra_classes[labelling],
        )

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=self.num_classes)

    def indices_of_class(self, c: int) -> torch.Tensor:
        return torch.nonzero(self.labels == c, as_tuple=False).flatten()


def train_val_split(
    train: ImageDataset, val_fraction: float = 0.1, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Carve a stratified validation split out of a training split.

    The same ``seed`` always gives the same split; the test split is never touched, so
    hyperparameters can be chosen on ``val`` without looking at test accuracy.

    Returns:
        ``(train_part, val_part)``, disjoint, together covering ``train``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if train.split != "train":
        raise ConfigError(f"a validation split is carved from 'train', not {train.split!r}")
    g = torch.Generator().manual_seed(int(seed))
    val_idx, train_idx = [], []
    for c in range(train.num_classes):
        idx = train.indices_of_class(c)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) > 1:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    tr = torch.sort(torch.cat(train_idx)).values
    va = torch.sort(torch.cat(val_idx)).values
    return train.subset(tr, split="train"), train.subset(va, split="val")
