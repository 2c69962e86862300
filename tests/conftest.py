"""Shared test fixtures.

Real data lives in ``../shared/data`` beside the project (or wherever ``MEMDISTILL_DATA``
points). When it is missing, tests that need it are skipped on a developer machine but
*fail* when ``CI`` is set, so CI can never pass silently without real data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]


def _real_data_root() -> Path:
    env = os.environ.get("MEMDISTILL_DATA")
    if env:
        return Path(env).resolve()
    return (PROJECT.parent / "shared" / "data").resolve()


def _require(path: Path, what: str) -> None:
    if path.exists():
        return
    msg = f"{what} not found at {path}; set MEMDISTILL_DATA to the folder holding MNIST/ and FashionMNIST/"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder that holds the real MNIST and Fashion-MNIST files."""
    root = _real_data_root()
    _require(root / "MNIST" / "raw", "MNIST")
    return root


@pytest.fixture(scope="session")
def mnist_train(data_root):
    from memdistill.data import load_dataset

    return load_dataset("mnist", split="train", root=data_root)


@pytest.fixture(scope="session")
def mnist_test(data_root):
    from memdistill.data import load_dataset

    return load_dataset("mnist", split="test", root=data_root)


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    root = _real_data_root()
    _require(root / "FashionMNIST" / "raw", "Fashion-MNIST")
    return root
