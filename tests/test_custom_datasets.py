"""User datasets: image folders (``folder:PATH``) and array files (``npz:PATH``).

References: the built-in MNIST loader (a folder or .npz written from its tensors must
load back as exactly those tensors) and hand-built folders whose contents are known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memdistill.data import (
    check_dataset_source,
    dataset_info,
    load_dataset,
    locate_dataset,
    train_val_split,
    user_datasets_under,
)
from memdistill.errors import ConfigError, DataError, DataNotFoundError, IntegrityError, UnknownNameError

PER_CLASS = {"train": 30, "test": 10}


# ------------------------------------------------------------------------ builders
def _mnist_subset(ds, per_class: int) -> torch.Tensor:
    """Indices of the first ``per_class`` images of each class, in file order."""
    return torch.sort(torch.cat([(ds.labels == c).nonzero().flatten()[:per_class]
                                 for c in range(ds.num_classes)])).values


@pytest.fixture(scope="module")
def mnist_parts(data_root):
    """Small built-in MNIST splits: the reference tensors."""
    out = {}
    for split, n in PER_CLASS.items():
        ds = load_dataset("mnist", split, root=data_root)
        out[split] = ds.subset(_mnist_subset(ds, n))
    return out


def _write_folder(root: Path, parts) -> Path:
    for split, ds in parts.items():
        for i, (img, y) in enumerate(zip(ds.images[:, 0].numpy(), ds.labels.tolist())):
            folder = root / split / ds.classes[y]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:05d}.png")
    return root


def _image(path: Path, size=(8, 8), colour: bool = False, seed: int = 0) -> None:
    g = np.random.default_rng(seed)
    shape = (size[0], size[1], 3) if colour else size
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8)).save(path)


def _toy(root: Path, classes=("cat", "dog"), per_class: int = 6, colour: bool = False, size=(8, 8),
         splits=("",)) -> Path:
    for split in splits:
        for c, name in enumerate(classes):
            for i in range(per_class):
                _image(root / split / name / f"{i}.png", size, colour, seed=hash((split, c, i)) % 2**32)
    return root


def _written(root: Path) -> list[str]:
    """Manifest and cache files written beside the data."""
    return sorted(p.name for p in root.rglob(".*memdistill*"))


# ------------------------------------------------------------------ vs. built-in MNIST
def test_mnist_folder_equals_builtin(tmp_path, mnist_parts):
    root = _write_folder(tmp_path / "digits", mnist_parts)
    for split, ref in mnist_parts.items():
        ds = load_dataset(f"folder:{root}", split)
        assert ds.classes == ref.classes and ds.split == split and ds.image_shape == (1, 28, 28)
        assert len(ds) == len(ref)
        for c in range(10):  # ImageFolder order: by class, then file name (= reference order)
            assert torch.equal(ds.images[ds.labels == c], ref.images[ref.labels == c])
    train = load_dataset(f"folder:{root}", "train")
    stats = train.images.double().div(255)
    assert train.mean[0] == pytest.approx(stats.mean().item()) and train.std[0] == pytest.approx(stats.std(unbiased=False).item())
    test = load_dataset(f"folder:{root}", "test")
    assert test.mean == train.mean and test.std == train.std  # the test split is normalised like train


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW", "float"])
def test_mnist_npz_equals_builtin(tmp_path, mnist_parts, layout):
    tr, te = mnist_parts["train"], mnist_parts["test"]
    conv = {"NHW": lambda x: x[:, 0].numpy(), "NHWC": lambda x: x.permute(0, 2, 3, 1).numpy(),
            "NCHW": lambda x: x.numpy(), "float": lambda x: (x.double() / 255).float().numpy()}[layout]
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=conv(tr.images), y_train=tr.labels.numpy(), x_test=conv(te.images),
             y_test=te.labels.numpy().astype(np.uint8), classes=np.array(tr.classes))
    for split, ref in mnist_parts.items():
        ds = load_dataset(f"npz:{path}", split)
        assert torch.equal(ds.images, ref.images) and torch.equal(ds.labels, ref.labels)
        assert ds.classes == ref.classes and ds.labels.dtype == torch.int64


def test_npy_pair_folder_and_default_class_names(tmp_path, mnist_parts):
    tr = mnist_parts["train"]
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "x.npy", tr.images[:, 0].numpy())
    np.save(folder / "y.npy", tr.labels.numpy())
    train = load_dataset(f"npz:{folder}", "train")
    test = load_dataset(f"npz:{folder}", "test")
    assert train.classes == tuple(str(i) for i in range(10))
    assert len(train) + len(test) == len(tr)
    assert train.source["split"] == {"layout": "fraction", "test_fraction": 0.2, "split_seed": 0}


# ------------------------------------------------------------- channels, sizes, layouts
def test_grey_and_rgb_folders(tmp_path):
    grey = load_dataset(f"folder:{_toy(tmp_path / 'grey')}", "train")
    rgb = load_dataset(f"folder:{_toy(tmp_path / 'rgb', colour=True)}", "train")
    assert grey.image_shape == (1, 8, 8) and len(grey.mean) == 1
    assert rgb.image_shape == (3, 8, 8) and len(rgb.mean) == 3
    assert rgb.source["decoding"]["channels_rule"].startswith("auto: 12 of 12 images in colour")
    as_grey = load_dataset(f"folder:{tmp_path / 'rgb'}?channels=1", "train")
    assert as_grey.image_shape == (1, 8, 8) and as_grey.name.endswith("?channels=1")
    # Pillow's own conversion is the reference for RGB -> L
    first = tmp_path / "rgb" / "cat" / "0.png"
    expected = np.array(Image.open(first).convert("L"))
    assert any(torch.equal(img[0], torch.from_numpy(expected)) for img in as_grey.images)


def test_one_colour_image_makes_the_dataset_rgb(tmp_path):
    root = _toy(tmp_path / "mixed")
    _image(root / "dog" / "colour.png", colour=True)
    ds = load_dataset(f"folder:{root}", "train")
    assert ds.image_shape[0] == 3 and "1 of 13 images in colour" in ds.source["decoding"]["channels_rule"]


def test_mixed_sizes_resized_to_most_common_or_given(tmp_path):
    root = _toy(tmp_path / "sizes", size=(8, 8))
    _image(root / "cat" / "big.png", size=(16, 12))
    _image(root / "dog" / "small.jpg", size=(4, 4))
    load = lambda opt="": load_dataset(f"folder:{root}{opt}", "train", test_fraction=0.25)  # noqa: E731
    ds = load()
    rule = ds.source["decoding"]
    assert ds.image_shape == (1, 8, 8) and rule["size"] == [8, 8] and rule["resized"] == 2
    assert rule["size_rule"] == "most common size (12 of 14 images)"
    big = load("?size=16x12")
    assert big.image_shape == (1, 16, 12) and big.source["decoding"]["resized"] == 13
    # the resampling is Pillow's bicubic resize of the decoded image
    expected = np.array(Image.open(root / "cat" / "big.png").convert("L").resize((8, 8), Image.Resampling.BICUBIC))
    full = torch.cat([ds.images, load_dataset(f"folder:{root}", "test", test_fraction=0.25).images])
    assert any(torch.equal(img[0], torch.from_numpy(expected)) for img in full)
    assert load("?size=largest").image_shape == (1, 16, 12)
    with pytest.raises(ConfigError, match="size must be HxW"):
        load("?size=big")


def test_train_test_val_layout(tmp_path):
    root = _toy(tmp_path / "splits", per_class=3, splits=("train", "test", "val"))
    parts = {s: load_dataset(f"folder:{root}", s) for s in ("train", "test", "val")}
    assert {s: len(d) for s, d in parts.items()} == {"train": 6, "test": 6, "val": 6}
    assert parts["val"].split == "val" and parts["train"].source["split"]["layout"] == "given"
    with pytest.raises(ConfigError, match="test_fraction and split_seed apply only"):
        load_dataset(f"folder:{root}?test_fraction=0.5", "train")


def test_split_by_fraction_is_stratified_seeded_and_disjoint(tmp_path):
    root = _toy(tmp_path / "pool", classes=("a", "b", "c"), per_class=10)
    name = f"folder:{root}?test_fraction=0.3"
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    assert train.class_counts().tolist() == [7, 7, 7] and test.class_counts().tolist() == [3, 3, 3]
    key = lambda ds: {bytes(img.numpy()) for img in ds.images}  # noqa: E731
    assert not key(train) & key(test) and len(key(train) | key(test)) == 30
    again = load_dataset(name, "test")
    assert torch.equal(again.images, test.images)
    other = load_dataset(name + "&split_seed=1", "test")
    assert not torch.equal(other.images, test.images)
    with pytest.raises(ConfigError, match="no 'val' split"):
        load_dataset(name, "val")
    val_train, val = train_val_split(train, 0.2, seed=0)  # a validation split is carved as for built-ins
    assert len(val_train) + len(val) == len(train)


def test_relative_path_is_found_under_the_root(tmp_path, monkeypatch):
    _toy(tmp_path / "data" / "pets")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("folder:pets", "train", root=tmp_path / "data")
    assert ds.name == f"folder:{tmp_path / 'data' / 'pets'}"
    status = locate_dataset("folder:pets", root=tmp_path / "data")
    assert status.found and status.path == tmp_path / "data" / "pets"
    assert dataset_info("folder:pets", root=tmp_path / "data").num_classes == 2


# -------------------------------------------------------------------- bad input
def _fails(name: str, error, *patterns: str, split: str = "train", **options) -> str:
    with pytest.raises(error) as err:
        load_dataset(name, split, **options)
    msg = str(err.value)
    assert "\n" not in msg, msg
    for p in patterns:
        assert p in msg, msg
    return msg


def test_missing_and_empty_root(tmp_path):
    _fails(f"folder:{tmp_path / 'nowhere'}", DataNotFoundError, str(tmp_path / "nowhere"), "does not exist")
    (tmp_path / "empty").mkdir()
    _fails(f"folder:{tmp_path / 'empty'}", DataNotFoundError, str(tmp_path / "empty"), "holds no class folders")
    _fails(f"npz:{tmp_path / 'none.npz'}", DataNotFoundError, "none.npz", "does not exist")


def test_class_folder_without_images(tmp_path):
    root = _toy(tmp_path / "d")
    (root / "empty-class").mkdir()
    (root / "empty-class" / "notes.txt").write_text("no images here")
    _fails(f"folder:{root}", DataError, str(root / "empty-class"), "holds no PNG or JPEG images")
    assert _written(root) == []


def test_unreadable_image_named_and_skippable(tmp_path):
    root = _toy(tmp_path / "d")
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _fails(f"folder:{root}", IntegrityError, str(bad), "is not a readable image", "--skip-bad-images")
    assert _written(root) == []  # nothing half-written
    ds = load_dataset(f"folder:{root}", "train", skip_bad_images=True)
    assert ds.source["decoding"]["skipped"] == 1 and ds.source["decoding"]["skipped_files"] == ["dog/broken.png"]
    test = load_dataset(f"folder:{root}", "test", skip_bad_images=True)
    assert len(ds) + len(test) == 12
    # a later load without the flag still refuses (from the manifest, with the cache)
    _fails(f"folder:{root}", IntegrityError, str(bad), "--skip-bad-images")


def test_truncated_image_body(tmp_path):
    root = _toy(tmp_path / "d", size=(32, 32))
    path = root / "cat" / "0.png"
    path.write_bytes(path.read_bytes()[:60])  # a valid header, a cut-off body
    _fails(f"folder:{root}", IntegrityError, str(path), "is not a readable image")


def test_fewer_than_two_classes(tmp_path):
    root = _toy(tmp_path / "one", classes=("only",))
    _fails(f"folder:{root}", DataError, "1 class (only)", "at least 2 classes")
    np.savez(tmp_path / "one.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(4, np.int64))
    _fails(f"npz:{tmp_path / 'one.npz'}", DataError, "at least 2 classes")


def test_test_split_missing_a_class(tmp_path):
    root = _toy(tmp_path / "d", classes=("cat", "dog"), splits=("train",))
    _toy(root, classes=("cat",), splits=("test",))
    _fails(f"folder:{root}", DataError, str(root / "test"), "no folder for class 'dog'", str(root / "test" / "dog"))
    assert _written(root) == []
    np.savez(tmp_path / "a.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 0, 1, 1]),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([0, 0]))
    _fails(f"npz:{tmp_path / 'a.npz'}", DataError, "x_test", "no images of class '1'")


@pytest.mark.parametrize("arrays, patterns", [
    ({"x": np.zeros((5, 8, 8), np.uint8), "y": np.array([0, 1, 0, 1])}, ["y holds 4 labels but x holds 5 images"]),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0.0, 1.0, 0.0, 1.0])}, ["y has dtype float64", "must be integers"]),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0, 1, 0, 2]), "classes": np.array(["a", "b"])},
     ["y[3] = 2 is outside 0..1", "2 class names"]),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.array([0, 1, -1, 1])}, ["y[2] = -1 is outside"]),
    ({"x": np.full((4, 8, 8), np.nan, np.float32), "y": np.array([0, 1, 0, 1])}, ["x holds NaN", "image 0"]),
    ({"x": np.full((4, 8, 8), 200.0, np.float32), "y": np.array([0, 1, 0, 1])}, ["must be in [0, 1]", "divide"]),
    ({"x": np.zeros((4, 5, 8, 8), np.uint8), "y": np.array([0, 1, 0, 1])}, ["has shape (4, 5, 8, 8)"]),
    ({"x": np.zeros((4, 8, 8), np.uint8)}, ["x has no matching y", "add y"]),
    ({"images": np.zeros((4, 8, 8), np.uint8)}, ["holds images", "needs x and y"]),
])
def test_bad_arrays(tmp_path, arrays, patterns):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    _fails(f"npz:{path}", DataError, str(path), *patterns)
    assert _written(tmp_path) == []


def test_object_arrays_are_refused_unpickled(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 0, 1]),
             classes=np.array(["a", "b"], dtype=object))
    _fails(f"npz:{path}", IntegrityError, str(path), "object array", "dtype=str")


def test_bad_names_and_options(tmp_path):
    root = _toy(tmp_path / "d")
    _fails(f"folder:{root}?colour=yes", ConfigError, "unknown option(s) colour", "valid options")
    _fails(f"folder:{root}?channels=2", ConfigError, "channels must be 1, 3 or auto")
    _fails("folder:", ConfigError, "names no path")
    with pytest.raises(UnknownNameError, match="folder:PATH"):
        load_dataset("images:/somewhere")


# --------------------------------------------------------------- manifest and cache
def test_manifest_written_and_a_modified_image_detected(tmp_path):
    root = _toy(tmp_path / "d")
    first = load_dataset(f"folder:{root}", "train")
    manifest = json.loads((root / ".memdistill-manifest.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "cat/3.png")
    assert entry["label"] == "cat" and entry["size"] == (root / "cat" / "3.png").stat().st_size
    assert len(entry["sha256"]) == 64 and manifest["digest"] == first.source["manifest_digest"]
    _image(root / "cat" / "3.png", seed=1234)  # same size, other pixels
    msg = _fails(f"folder:{root}", IntegrityError, f"folder:{root} changed", "1 modified (cat/3.png)",
                 "--rebuild-manifest")
    assert str(root / ".memdistill-manifest.json") in msg
    (root / "dog" / "9.png").write_bytes((root / "dog" / "0.png").read_bytes())
    _fails(f"folder:{root}", IntegrityError, "1 added (dog/9.png)")
    rebuilt = load_dataset(f"folder:{root}", "train", rebuild_manifest=True)
    assert rebuilt.source["manifest_digest"] != first.source["manifest_digest"]
    load_dataset(f"folder:{root}", "train")  # the rebuilt manifest now verifies


def test_npz_manifest_detects_change(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((6, 8, 8), np.uint8), y=np.array([0, 1] * 3))
    load_dataset(f"npz:{path}", "train")
    assert (tmp_path / ".d.npz.memdistill-manifest.json").is_file()
    np.savez(path, x=np.ones((6, 8, 8), np.uint8), y=np.array([0, 1] * 3))
    _fails(f"npz:{path}", IntegrityError, "changed", "1 modified (d.npz)")


def test_second_load_uses_the_cache_not_the_decoder(tmp_path, monkeypatch):
    import memdistill.data.folder as folder

    root = _toy(tmp_path / "d", colour=True)
    first = load_dataset(f"folder:{root}", "train")
    assert any(n.startswith(".memdistill-cache-") for n in _written(root))

    def no_decoding(*args, **kwargs):
        raise AssertionError("the image decoder was called on a cached load")

    monkeypatch.setattr(folder, "_decode", no_decoding)
    monkeypatch.setattr(Image, "open", no_decoding)
    second = load_dataset(f"folder:{root}", "train")
    assert torch.equal(first.images, second.images) and second.source == first.source
    with pytest.raises(AssertionError, match="decoder was called"):  # other options: a new decoding
        load_dataset(f"folder:{root}?size=4", "train")


def test_not_writable_beside_the_data_uses_the_cache_folder(tmp_path, monkeypatch):
    import memdistill.data._manifest as manifest

    root = _toy(tmp_path / "readonly")
    real_write = manifest.atomic_write_bytes

    def refuse_beside(path, data):
        if Path(path).parent == root:
            raise PermissionError(13, "Permission denied", str(path))
        return real_write(path, data)

    monkeypatch.setattr(manifest, "atomic_write_bytes", refuse_beside)
    cache = tmp_path / "cache"
    ds = load_dataset(f"folder:{root}", "train", cache_dir=cache)
    assert _written(root) == []
    written = sorted(p.name for p in cache.rglob("*"))
    assert ".memdistill-manifest.json" in written and any(n.startswith(".memdistill-cache-") for n in written)
    again = load_dataset(f"folder:{root}", "train", cache_dir=cache)
    assert torch.equal(again.images, ds.images)


# ------------------------------------------------------------ records, listing, uses
def test_check_dataset_source_refuses_other_data(tmp_path):
    a = load_dataset(f"folder:{_toy(tmp_path / 'a')}", "train")
    b = load_dataset(f"folder:{_toy(tmp_path / 'b', classes=('cat', 'cow'))}", "train")
    check_dataset_source(a.source, a, what="m.safetensors")
    with pytest.raises(ConfigError, match=r"m.safetensors was distilled from folder:.*/a, but folder:.*/b is other "
                                          r"data \(classes .*manifest_digest"):
        check_dataset_source(a.source, b, what="m.safetensors")
    with pytest.raises(ConfigError, match="distilled from a built-in dataset"):
        check_dataset_source(None, b, what="m.safetensors")
    moved = tmp_path / "moved"
    (tmp_path / "a").rename(moved)  # the same data elsewhere is the same data
    check_dataset_source(a.source, load_dataset(f"folder:{moved}", "train"), what="m")


def test_evaluate_refuses_a_memory_of_other_data(tmp_path, capsys):
    from memdistill.cli import main
    from memdistill.memory import create_memory
    from memdistill.memory.file import save_memory

    a = load_dataset(f"folder:{_toy(tmp_path / 'a')}", "train")
    _toy(tmp_path / "b", per_class=5)
    mem = create_memory("images", a.image_shape, a.num_classes, 1, generator=torch.Generator().manual_seed(0), real=a)
    path = tmp_path / "m.safetensors"
    save_memory(path, mem, dataset=a.name, classes=list(a.classes), mean=a.mean, std=a.std,
                extra={"dataset": a.source})
    code = main(["evaluate", str(path), "--dataset", f"folder:{tmp_path / 'b'}", "--runs", "1", "--epochs", "1",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "is other data" in err and "manifest_digest" in err
    assert main(["evaluate", str(path), "--dataset", "mnist", "--runs", "1", "--epochs", "1"]) == 2
    assert "holds a memory of" in capsys.readouterr().err


def test_datasets_listing_finds_folders_and_arrays(tmp_path, capsys):
    from memdistill.cli import main

    _toy(tmp_path / "pets")
    np.savez(tmp_path / "arrays.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 0, 1]))
    (tmp_path / "notes").mkdir()  # a folder without class folders is not listed
    found = {name: (problem, what) for name, problem, what in user_datasets_under([tmp_path])}
    assert found[f"folder:{tmp_path / 'pets'}"] == (None, "2 class folders; one folder, split by test_fraction")
    assert found[f"npz:{tmp_path / 'arrays.npz'}"][0] is None
    assert not any("notes" in n for n in found)
    assert main(["datasets", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"folder:{tmp_path / 'pets'}" in out and f"npz:{tmp_path / 'arrays.npz'}" in out


def test_continual_split_of_a_folder(tmp_path):
    from memdistill.continual import create_benchmark

    root = _toy(tmp_path / "four", classes=("a", "b", "c", "d"), per_class=5)
    bench = create_benchmark(f"split-folder:{root}", seed=0)
    assert len(bench.tasks) == 2 and sorted(bench.class_names) == ["a", "b", "c", "d"]
    assert create_benchmark(f"split-folder:{root}", seed=0, num_tasks=4).tasks == ((0,), (1,), (2,), (3,))
    with pytest.raises(ConfigError, match="cannot be split into 3"):
        create_benchmark(f"split-folder:{root}", num_tasks=3)
