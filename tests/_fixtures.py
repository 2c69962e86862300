"""Writers of tiny dataset files in exactly the canonical on-disk formats.

Each writer returns what the loader should produce (images ``(N, C, H, W)`` uint8,
labels) and a ``checksums`` mapping to pass as ``load_dataset(..., checksums=...)``, since
the fake files cannot match the official checksums. All randomness comes from the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


@dataclass
class Written:
    """What a fixture writer produced."""

    images: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N, C, H, W)
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # split -> (N,)
    checksums: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- idx / MNIST
def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array: 0, 0, 0x08, ndim, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0))
    return path


def write_idx_pair(
    folder: Path,
    prefix: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    compressed: bool = True,
) -> dict[str, str]:
    """Write ``{prefix}-images-idx3-ubyte[.gz]`` and the labels file; return checksums."""
    folder.mkdir(parents=True, exist_ok=True)
    checksums = {}
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        name = f"{prefix}-{kind}-ubyte"
        payload = idx_bytes(array)
        if compressed:
            checksums[name] = md5(write_gz(folder / f"{name}.gz", payload))
        else:
            (folder / name).write_bytes(payload)
            checksums[name] = sha256(payload)
    return checksums


def write_mnist(
    root: Path,
    rng: np.random.Generator,
    *,
    folder: str = "MNIST/raw",
    sizes: dict[str, int] | None = None,
    compressed: bool = True,
) -> Written:
    """A small MNIST-format dataset (every split of ``sizes``) under ``root/folder``."""
    sizes = sizes or {"train": 20, "test": 10}
    out = Written()
    for split, n in sizes.items():
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        prefix = "train" if split == "train" else "t10k"
        out.checksums.update(write_idx_pair(root / folder, prefix, images, labels, compressed=compressed))
        out.images[split] = images[:, None]
        out.labels[split] = labels.astype(np.int64)
    return out


# -------------------------------------------------------------------------------- CIFAR
def pickle_bytes(obj: object, *, legacy_numpy: bool = False) -> bytes:
    """Protocol-2 pickle, as the original (Python 2) CIFAR files use.

    ``legacy_numpy`` rewrites the array reconstructor's module to ``numpy.core.multiarray``,
    the name found in the official files (written by numpy 1.x).
    """
    data = pickle.dumps(obj, protocol=2)
    if legacy_numpy:
        data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    return data


def _cifar_rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    # A row is the red plane, then green, then blue, each 32x32 row-major.
    return images, images.reshape(n, 3 * 32 * 32).copy()


def write_cifar10(
    root: Path, rng: np.random.Generator, *, per_batch: int = 3, n_test: int = 4, legacy_numpy: bool = True
) -> Written:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = Written()
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)}
    batches["test_batch"] = n_test
    train_imgs, train_labels = [], []
    for name, n in batches.items():
        images, rows = _cifar_rows(rng, n)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {
            "batch_label": f"{name} (fixture)".encode(),
            "labels": labels,
            "data": rows,
            "filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        (folder / name).write_bytes(pickle_bytes(batch, legacy_numpy=legacy_numpy))
        out.checksums[name] = md5(folder / name)
        if name == "test_batch":
            out.images["test"], out.labels["test"] = images, np.array(labels)
        else:
            train_imgs.append(images)
            train_labels += labels
    out.images["train"], out.labels["train"] = np.concatenate(train_imgs), np.array(train_labels)
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle_bytes(meta))
    out.checksums["batches.meta"] = md5(folder / "batches.meta")
    return out


def write_cifar100(
    root: Path, rng: np.random.Generator, fine_names: list[str], coarse_names: list[str],
    *, sizes: dict[str, int] | None = None,
) -> Written:
    sizes = sizes or {"train": 6, "test": 4}
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = Written()
    for split, n in sizes.items():
        images, rows = _cifar_rows(rng, n)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        coarse = [int(v) for v in rng.integers(0, 20, size=n)]
        batch = {
            "filenames": [f"f_{i}.png".encode() for i in range(n)],
            "batch_label": f"{split} (fixture)".encode(),
            "fine_labels": fine,
            "coarse_labels": coarse,
            "data": rows,
        }
        (folder / split).write_bytes(pickle_bytes(batch))
        out.checksums[split] = md5(folder / split)
        out.images[split], out.labels[split] = images, np.array(fine)
        out.extra[f"{split}_coarse"] = np.array(coarse)
    meta = {"fine_label_names": fine_names, "coarse_label_names": coarse_names}
    (folder / "meta").write_bytes(pickle_bytes(meta))
    out.checksums["meta"] = md5(folder / "meta")
    return out


def tar_folder(archive: Path, root: Path, top: str, extra_members: dict[str, bytes] | None = None) -> str:
    """Pack ``root/top`` as a .tar.gz (plus raw ``extra_members``); return its md5."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / top, arcname=top)
        for name, data in (extra_members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return md5(archive)


# --------------------------------------------------------------------------------- SVHN
def write_svhn(root: Path, rng: np.random.Generator, *, folder: str = "SVHN",
               sizes: dict[str, int] | None = None) -> Written:
    """``{split}_32x32.mat`` with ``X`` (32, 32, 3, N) uint8 and ``y`` (N, 1), 10 meaning 0."""
    sizes = sizes or {"train": 12, "test": 5}
    target = root / folder if folder else root
    target.mkdir(parents=True, exist_ok=True)
    out = Written()
    for split, n in sizes.items():
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        path = target / f"{split}_32x32.mat"
        scipy.io.savemat(path, {"X": x, "y": y})
        out.checksums[path.name] = md5(path)
        out.images[split] = x.transpose(3, 2, 0, 1)
        out.labels[split] = digits.astype(np.int64)
    return out


# ------------------------------------------------------------------------ Tiny ImageNet
def _jpeg(path: Path, rng: np.random.Generator, *, size: int = 64, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Smooth content so JPEG keeps it recognisable; exact values come from decoding the file.
    base = rng.integers(0, 256, size=(8, 8) if gray else (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR)
    img.save(path, format="JPEG", quality=95)


def decode_rgb(path: Path) -> np.ndarray:
    """Reference decode, independent of the loader: (3, H, W) uint8."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).transpose(2, 0, 1).copy()


def write_tiny_imagenet(
    root: Path, rng: np.random.Generator, *, classes: int = 3, train_per_class: int = 4,
    val_per_class: int = 2, gray_first: bool = True,
) -> Written:
    """A Tiny-ImageNet-format folder; the first train and val images are grayscale."""
    top = root / "tiny-imagenet-200"
    wnids = [f"n{9000000 + 17 * i:08d}" for i in range(classes)]
    top.mkdir(parents=True, exist_ok=True)
    (top / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    words = ["n00000001\tentity"] + [f"{w}\tthing {i}, object {i}" for i, w in enumerate(wnids)]
    (top / "words.txt").write_text("\n".join(words) + "\n")
    out = Written(extra={"wnids": wnids, "names": [f"thing {i}, object {i}" for i in range(classes)]})
    train_paths, train_labels = [], []
    for c, w in enumerate(wnids):
        boxes = []
        for i in range(train_per_class):
            path = top / "train" / w / "images" / f"{w}_{i}.JPEG"
            _jpeg(path, rng, gray=gray_first and c == 0 and i == 0)
            train_paths.append(path)
            train_labels.append(c)
            boxes.append(f"{path.name}\t0\t0\t63\t63")
        (top / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
    lines, val = [], []
    for j in range(classes * val_per_class):
        c = j % classes
        path = top / "val" / "images" / f"val_{j}.JPEG"
        _jpeg(path, rng, gray=gray_first and j == 0)
        lines.append(f"{path.name}\t{wnids[c]}\t1\t2\t60\t61")
        val.append((path.name, path, c))
    (top / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    _jpeg(top / "test" / "images" / "test_0.JPEG", rng)  # unlabelled, like the real test folder
    val.sort()
    out.images["train"] = np.stack([decode_rgb(p) for p in train_paths])
    out.labels["train"] = np.array(train_labels)
    out.images["test"] = np.stack([decode_rgb(p) for _, p, _ in val])
    out.labels["test"] = np.array([c for _, _, c in val])
    out.extra["options"] = {
        "expected_classes": classes,
        "expected_per_class": {"train": train_per_class, "test": val_per_class},
    }
    return out


def zip_folder(archive: Path, root: Path, top: str, extra_members: dict[str, bytes] | None = None) -> str:
    """Pack ``root/top`` as a zip (plus raw ``extra_members``); return its md5."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((root / top).rglob("*")):
            zf.write(path, path.relative_to(root).as_posix())
        for name, data in (extra_members or {}).items():
            zf.writestr(name, data)
    return md5(archive)
