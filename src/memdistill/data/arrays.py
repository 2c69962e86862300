"""Array files (``npz:PATH``): a ``.npz`` file, or a folder of ``.npy`` files.

The arrays are ``x`` (images) and ``y`` (labels), split into train and test by a seeded,
stratified ``test_fraction``; or ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and
optionally ``x_val``, ``y_val``) for data with its own splits. ``classes`` (or
``class_names``), a string array, optionally names the classes. In a folder each array is
its own file (``x.npy``, ``y.npy``, ``classes.npy``, ...).

Images are ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` with ``C`` 1 or 3, either
``uint8`` (or any integers in 0..255) or floats in ``[0, 1]`` (scaled by 255 and
rounded); labels are integers in ``0..L-1`` where ``L`` is the number of class names
(when given, else the largest label + 1). Arrays are read with ``allow_pickle=False``:
nothing in a file is ever executed.
"""

from __future__ import annotations

import io
from pathlib import Path
import numpy as np

from ..errors import DataError, IntegrityError
from ._custom import USER_KINDS, LoadRun, Pool, UserKind, verify_manifest
from ._manifest import Manifest, Store, file_entry

__all__ = ["ArrayFileKind"]

_SPLITS = ("train", "test", "val")
_CLASS_KEYS = ("classes", "class_names")
_FIX = "store images as uint8 (N, H, W[, C]) or floats in [0, 1], labels as integers"


def _known_keys() -> set[str]:
    return {"x", "y", *_CLASS_KEYS} | {f"{a}_{s}" for a in "xy" for s in _SPLITS}


class ArrayFileKind(UserKind):
    kind = "npz"

    def check_path(self, path: Path) -> str | None:
        if not path.exists():
            return (f"{path} does not exist; check the path (a relative path is looked up in the working "
                    "directory, then under --root / $MEMDISTILL_DATA)")
        if path.is_dir():
            names = {p.stem for p in path.glob("*.npy")}
            if not ({"x", "y"} <= names or {"x_train", "y_train"} <= names):
                return f"{path} holds neither x.npy and y.npy nor x_train.npy and y_train.npy"
            return None
        if path.suffix != ".npz":
            return (f"{path} is not a .npz file; npz:PATH takes a .npz file or a folder of .npy files "
                    "(x.npy and y.npy, or x_train.npy, y_train.npy, x_test.npy, y_test.npy)")
        return None

    def describe(self, path: Path) -> str:
        return "folder of .npy arrays" if path.is_dir() else f".npz file, {path.stat().st_size} bytes"

    def _files(self, path: Path) -> list[tuple[Path, str]]:
        if path.is_file():
            return [(path, path.name)]
        return [(p, p.name) for p in sorted(path.glob("*.npy")) if p.stem in _known_keys()]

    def load_pool(self, path: Path, options: dict[str, str], run: LoadRun, store: Store) -> Pool:
        name = f"npz:{path}"
        entries, payloads = [], {}
        for file, rel in self._files(path):
            try:
                entry, data = file_entry(file, rel)
            except OSError as err:
                raise DataError(f"cannot read {file} ({err.strerror or err}); check its permissions") from None
            entries.append(entry)
            payloads[file] = data
        current = Manifest("npz", tuple(entries))
        recorded = verify_manifest(name, current, store, run)
        arrays = _read_arrays(path, payloads)
        classes = _class_names(arrays, path)
        split_keys = _split_keys(arrays, path)
        images, labels, splits, layouts = [], [], [], set()
        for split, (xk, yk) in split_keys.items():
            x, layout = _images(arrays[xk], f"{path}: {xk}")
            layouts.add(layout)
            y = _labels(arrays[yk], f"{path}: {yk}", len(x), xk)
            images.append(x)
            labels.append(y)
            splits += [split] * len(x)
        shapes = {x.shape[1:] for x in images}
        if len(shapes) > 1:
            raise DataError(f"{path}: the splits hold images of different shapes {sorted(shapes)}; give every "
                            "split the same (C, H, W)")
        y_all = np.concatenate(labels)
        classes = _check_labels(y_all, classes, path, split_keys, labels)
        given = "pool" not in split_keys
        rule = {"format": "npz" if path.is_file() else "npy folder", "layout": sorted(layouts)[0],
                "dtype": str(next(iter(arrays[k].dtype for k, _ in split_keys.values())))}
        where = {s: f"{path} ({xk})" for s, (xk, _) in split_keys.items()}
        if not given:
            where = {"train": where["pool"], "test": where["pool"]}
        return Pool(np.concatenate(images), y_all, np.array(splits, dtype=object) if given else None, classes,
                    current.digest, rule, where, current if recorded is None else None, None)


def _read_arrays(path: Path, payloads: dict[Path, bytes]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for file, data in payloads.items():
        try:
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    arrays.update({k: loaded[k] for k in loaded.files})
            else:
                arrays[file.stem] = loaded
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise IntegrityError(f"{file} holds an object array, which would need unpickling (refused); save "
                                     "class names as np.array(names, dtype=str) and numbers as numeric arrays") from None
            raise IntegrityError(f"{file} is not a readable numpy file ({err}); re-save it with np.savez") from None
        except (OSError, EOFError) as err:
            raise IntegrityError(f"{file} is not a readable numpy file ({err}); re-save it with np.savez") from None
    return arrays


def _split_keys(arrays: dict[str, np.ndarray], path: Path) -> dict[str, tuple[str, str]]:
    pooled = "x" in arrays or "y" in arrays
    split = any(f"x_{s}" in arrays or f"y_{s}" in arrays for s in _SPLITS)
    if pooled == split:
        have = ", ".join(sorted(arrays)) or "nothing"
        raise DataError(f"{path} holds {have}; it needs x and y (split by test_fraction) or x_train, y_train, "
                        "x_test, y_test (and optionally x_val, y_val), not both and not neither")
    names = {"pool": ("x", "y")} if pooled else {s: (f"x_{s}", f"y_{s}") for s in _SPLITS
                                                  if f"x_{s}" in arrays or f"y_{s}" in arrays}
    if not pooled and "train" not in names:
        raise DataError(f"{path}: no x_train / y_train; data with its own splits needs a training split")
    for xk, yk in names.values():
        for key in (xk, yk):
            if key not in arrays:
                other = yk if key == xk else xk
                raise DataError(f"{path}: {other} has no matching {key}; add {key} (images and labels come in pairs)")
    return names


def _class_names(arrays: dict[str, np.ndarray], path: Path) -> tuple[str, ...] | None:
    key = next((k for k in _CLASS_KEYS if k in arrays), None)
    if key is None:
        return None
    names = arrays[key]
    if names.dtype.kind not in "US" or names.ndim != 1:
        raise DataError(f"{path}: {key} must be a 1-d string array, got {names.dtype} {names.shape}; save it as "
                        "np.array(names, dtype=str)")
    out = tuple(str(n.decode() if isinstance(n, bytes) else n) for n in names.tolist())
    if len(set(out)) != len(out):
        raise DataError(f"{path}: {key} names a class twice; class names must be unique")
    return out


def _images(x: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """``x`` as ``uint8 (N, C, H, W)`` and the layout it was in."""
    if x.ndim == 3:
        x, layout = x[:, None], "NHW"
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x, layout = x.transpose(0, 3, 1, 2), "NHWC"
    elif x.ndim == 4 and x.shape[1] in (1, 3):
        layout = "NCHW"
    else:
        raise DataError(f"{what} has shape {x.shape}; images must be (N, H, W), (N, H, W, C) or (N, C, H, W) "
                        "with C = 1 or 3")
    if len(x) == 0:
        raise DataError(f"{what} holds no images")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x), layout
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{what}: integer pixels must be in 0..255, found {lo}..{hi}; {_FIX}")
        return np.ascontiguousarray(x.astype(np.uint8)), layout
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x)
        if not finite.all():
            first = int(np.argmin(finite.reshape(len(x), -1).all(axis=1)))
            kind = "NaN" if np.isnan(x).any() else "Inf"
            raise DataError(f"{what} holds {kind} (first in image {first}); remove or fix those images")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{what}: float pixels must be in [0, 1], found {lo:g}..{hi:g}; {_FIX} "
                            "(divide 0..255 floats by 255)")
        return np.ascontiguousarray(np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)), layout
    raise DataError(f"{what} has dtype {x.dtype}; {_FIX}")


def _labels(y: np.ndarray, what: str, n: int, x_key: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}; labels must be (N,) class indices")
    if len(y) != n:
        raise DataError(f"{what} holds {len(y)} labels but {x_key} holds {n} images; give one label per image")
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise DataError(f"{what} has dtype {y.dtype}: labels must be integers (class indices 0..L-1); convert "
                        "with y.astype(np.int64) if they are whole numbers")
    return y.astype(np.int64)


def _check_labels(y: np.ndarray, classes: tuple[str, ...] | None, path: Path,
                  split_keys: dict[str, tuple[str, str]], labels: list[np.ndarray]) -> tuple[str, ...]:
    count = len(classes) if classes is not None else int(y.max()) + 1
    for (_, yk), lab in zip(split_keys.values(), labels):
        outside = (lab < 0) | (lab >= count)
        if outside.any():
            i = int(np.argmax(outside))
            named = f"{count} class names" if classes is not None else "no class names: L is the largest label + 1"
            raise DataError(f"{path}: {yk}[{i}] = {int(lab[i])} is outside 0..{count - 1} ({named}); labels must "
                            "be class indices 0..L-1")
    return classes if classes is not None else tuple(str(i) for i in range(count))


USER_KINDS.register(ArrayFileKind.kind)(ArrayFileKind())
