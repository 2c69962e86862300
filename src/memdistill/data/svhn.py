"""SVHN (Street View House Numbers), cropped-digit format ``{train,test}_32x32.mat``.

Files: ``<root>/SVHN/{train,test}_32x32.mat`` or ``<root>/{train,test}_32x32.mat``. Each is
a MATLAB v5 file with ``X`` of shape ``(32, 32, 3, N)`` (uint8) and ``y`` of shape
``(N, 1)`` holding 1..10, where 10 stands for the digit 0; labels are mapped so class
``k`` is digit ``k``. The file's official md5 is checked before ``scipy.io.loadmat``.
"""

from __future__ import annotations

import io

import numpy as np
import scipy.io
import torch

from ..errors import IntegrityError
from ._base import ImageDataset
from ._integrity import FileChecksum
from ._registry import DATASETS, FileSetSpec, LoadOptions

__all__ = ["SVHN"]


class _SVHN(FileSetSpec):
    name = "svhn"
    title = "SVHN"
    num_classes = 10
    image_shape = (3, 32, 32)
    classes = tuple(str(d) for d in range(10))
    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    mirrors = ("http://ufldl.stanford.edu/housenumbers/",)
    layouts = ("SVHN", "")
    md5s = {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    }

    def checksum_table(self) -> dict[str, FileChecksum]:
        return {name: FileChecksum(md5=md5) for name, md5 in self.md5s.items()}

    def split_files(self, split: str) -> tuple[str, ...]:
        return (f"{split}_32x32.mat",)

    def parse(self, payloads, paths, split, opts: LoadOptions) -> ImageDataset:
        (name,) = self.split_files(split)
        path = paths[name]
        try:
            mat = scipy.io.loadmat(io.BytesIO(payloads[name]))
        except Exception as err:  # noqa: BLE001 - scipy raises many types for bad files
            raise IntegrityError(
                f"{path} is not a readable MATLAB file ({type(err).__name__}: {err})"
            ) from None
        x, y = mat.get("X"), mat.get("y")
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
            desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else "nothing"
            raise IntegrityError(f"{path}: 'X' must be uint8 of shape (32, 32, 3, N), found {desc}")
        n = x.shape[3]
        if not isinstance(y, np.ndarray) or y.size != n or y.dtype.kind not in "iuf":
            desc = f"{y.dtype} {y.shape}" if isinstance(y, np.ndarray) else "nothing"
            raise IntegrityError(f"{path}: 'y' must hold {n} numeric labels, found {desc}")
        raw = y.reshape(-1)
        labels = raw.astype(np.int64)
        bad = (labels != raw) | (labels < 1) | (labels > 10)
        if bad.any():
            i = int(np.argmax(bad))
            raise IntegrityError(
                f"{path}: label y[{i}] = {raw[i].item()!r} is outside 1..10 (10 stands for digit 0); "
                "the file is corrupt or mislabelled"
            )
        images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
        return ImageDataset(
            name=self.name,
            split=split,
            images=torch.from_numpy(images),
            labels=torch.from_numpy(labels % 10),
            classes=tuple(self.classes),
            mean=tuple(self.mean),
            std=tuple(self.std),
        )


SVHN = _SVHN()
DATASETS.register(SVHN.name)(SVHN)
