"""ZCA whitening of images, fitted on a training split.

For flattened, per-channel normalised training images ``x_n`` (``D = C*H*W`` values each):

    m = mean(x_n),   Sigma = sum (x_n - m)(x_n - m)^T / (N - 1)  =  U diag(S) U^T
    W = U diag(1 / sqrt(S + reg)) U^T,    W^-1 = U diag(sqrt(S + reg)) U^T
    transform(x) = (x - m) W,             inverse(z) = z W^-1 + m

which is the ZCA used by the dataset-distillation reference code (kornia's
``ZCAWhitening(eps=reg)``, unbiased covariance). ``reg`` keeps the directions of tiny
variance from being blown up; the reference uses 0.1. Everything is computed in float64.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..errors import ConfigError, IntegrityError
from ._base import ImageDataset

__all__ = ["ZCAWhitening", "fit_zca"]

_FORMAT = "memdistill.zca"
_KEYS = ("mean", "eigenvectors", "eigenvalues", "regularization", "image_shape")


class ZCAWhitening:
    """A fitted ZCA whitening transform for images of one shape ``(C, H, W)``.

    Build it with :meth:`fit` (a tensor) or :func:`fit_zca` (a training split); keep it
    with :meth:`state_dict` / :meth:`save`. ``transform`` and ``inverse`` are
    differentiable and return the input's dtype and device.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        eigenvectors: torch.Tensor,
        eigenvalues: torch.Tensor,
        regularization: float,
        image_shape: tuple[int, int, int],
    ) -> None:
        dim = int(torch.Size(image_shape).numel())
        if mean.shape != (dim,) or eigenvectors.shape != (dim, dim) or eigenvalues.shape != (dim,):
            raise ConfigError(
                f"ZCA for images {tuple(image_shape)} needs mean ({dim},), eigenvectors "
                f"({dim}, {dim}) and eigenvalues ({dim},); got {tuple(mean.shape)}, "
                f"{tuple(eigenvectors.shape)}, {tuple(eigenvalues.shape)}"
            )
        regularization = float(regularization)
        if not regularization >= 0.0:
            raise ConfigError(f"ZCA regularization must be >= 0, got {regularization}")
        self.mean = mean.detach().to(torch.float64, copy=True)
        self.eigenvectors = eigenvectors.detach().to(torch.float64, copy=True)
        self.eigenvalues = eigenvalues.detach().to(torch.float64, copy=True).clamp_min(0.0)
        self.regularization = regularization
        self.image_shape = tuple(int(s) for s in image_shape)
        scale = self.eigenvalues + regularization
        if bool((scale <= 0).any()):
            raise ConfigError(
                "the image covariance is singular and regularization is 0; use a "
                "regularization > 0 (the reference uses 0.1)"
            )
        u = self.eigenvectors
        # Symmetric, so the row-vector form (x - m) W equals W (x - m).
        self._whiten = (u * scale.rsqrt()) @ u.T
        self._unwhiten = (u * scale.sqrt()) @ u.T
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, x: torch.Tensor, regularization: float = 0.1, *, batch_size: int = 4096) -> "ZCAWhitening":
        """Fit on normalised training images ``x`` of shape ``(N, C, H, W)``, ``N >= 2``."""
        if x.ndim != 4 or x.shape[0] < 2 or not x.is_floating_point():
            raise ConfigError(
                f"ZCA is fitted on float images (N, C, H, W) with N >= 2, got "
                f"{x.dtype} {tuple(x.shape)}"
            )
        flat = x.detach().reshape(x.shape[0], -1)

        def chunks() -> Iterator[torch.Tensor]:
            for start in range(0, flat.shape[0], batch_size):
                yield flat[start:start + batch_size].to(torch.float64)

        return _fit(chunks, int(x.shape[0]), tuple(x.shape[1:]), regularization)  # type: ignore[arg-type]

    # -------------------------------------------------------------- transforms
    def _matrices(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = tuple(
                t.to(dtype=like.dtype, device=like.device) for t in (self.mean, self._whiten, self._unwhiten)
            )
        return self._cache[key]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or tuple(x.shape[-3:]) != self.image_shape or not x.is_floating_point():
            raise ConfigError(
                f"ZCA fitted for float images (..., {', '.join(map(str, self.image_shape))}), "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        return x.reshape(*x.shape[:-3], -1)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten normalised images ``(..., C, H, W)``; same shape, dtype and device."""
        mean, whiten, _ = self._matrices(x)
        return ((self._flat(x) - mean) @ whiten).reshape(x.shape)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`transform`: whitened ``(..., C, H, W)`` back to normalised images."""
        mean, _, unwhiten = self._matrices(z)
        return (self._flat(z) @ unwhiten + mean).reshape(z.shape)

    __call__ = transform

    # ----------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors (float64, ``image_shape`` int64), storable in safetensors."""
        return {
            "mean": self.mean.clone(),
            "eigenvectors": self.eigenvectors.clone(),
            "eigenvalues": self.eigenvalues.clone(),
            "regularization": torch.tensor(self.regularization, dtype=torch.float64),
            "image_shape": torch.tensor(self.image_shape, dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "ZCAWhitening":
        """Rebuild from :meth:`state_dict` output."""
        missing = [k for k in _KEYS if k not in state]
        if missing:
            raise ConfigError(f"ZCA state lacks {', '.join(missing)}; expected keys {', '.join(_KEYS)}")
        shape = torch.as_tensor(state["image_shape"]).flatten().tolist()
        if len(shape) != 3:
            raise ConfigError(f"ZCA state image_shape must be (C, H, W), got {shape}")
        return cls(
            state["mean"],
            state["eigenvectors"],
            state["eigenvalues"],
            float(torch.as_tensor(state["regularization"])),
            tuple(int(s) for s in shape),  # type: ignore[arg-type]
        )

    def save(self, path: str | Path) -> None:
        """Write to a safetensors file atomically (temporary file, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(
                {k: v.contiguous() for k, v in self.state_dict().items()},
                tmp,
                metadata={"format": _FORMAT, "version": "1"},
            )
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | Path) -> "ZCAWhitening":
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                if (fh.metadata() or {}).get("format") != _FORMAT:
                    raise IntegrityError(f"{path} is not a memdistill ZCA file")
                state = {k: fh.get_tensor(k) for k in fh.keys()}
        except IntegrityError:
            raise
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - safetensors raises its own types
            raise IntegrityError(f"{path} is not a readable safetensors file: {err}") from None
        return cls.from_state_dict(state)

    def __repr__(self) -> str:
        return f"ZCAWhitening(image_shape={self.image_shape}, regularization={self.regularization})"


def _fit(
    chunks: Callable[[], Iterator[torch.Tensor]], n: int, shape: tuple[int, int, int], regularization: float
) -> ZCAWhitening:
    dim = int(torch.Size(shape).numel())
    total = torch.zeros(dim, dtype=torch.float64)
    for c in chunks():
        total += c.sum(0)
    mean = total / n
    cov = torch.zeros(dim, dim, dtype=torch.float64)
    for c in chunks():  # second pass: centred products, accurate even for large means
        d = c - mean
        cov.addmm_(d.T, d)
    cov /= n - 1
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    return ZCAWhitening(mean, eigenvectors, eigenvalues, regularization, shape)


def fit_zca(
    train: ImageDataset, regularization: float = 0.1, *, batch_size: int = 4096
) -> ZCAWhitening:
    """Fit ZCA on a training split's mean/std-normalised images (any ZCA it holds is ignored).

    Raises:
        ConfigError: ``train`` is not a training split (fitting on test data would leak it).
    """
    if train.split != "train":
        raise ConfigError(
            f"ZCA must be fitted on the training split, got split {train.split!r}; fit it on "
            "load_dataset(name, 'train') (or the train part of train_val_split) and apply it to the others"
        )
    if len(train) < 2:
        raise ConfigError(f"ZCA needs at least 2 training images, got {len(train)}")
    plain = train.with_zca(None)

    def chunks() -> Iterator[torch.Tensor]:
        for start in range(0, len(plain), batch_size):
            x = plain.normalize(plain.images[start:start + batch_size], dtype=torch.float64)
            yield x.reshape(x.shape[0], -1)

    return _fit(chunks, len(plain), plain.image_shape, regularization)
