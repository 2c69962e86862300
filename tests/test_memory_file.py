"""The memory file: round trips, ZCA and normalisation, refusals, and PNG output."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from memdistill.data.zca import ZCAWhitening, fit_zca
from memdistill.errors import ConfigError, IntegrityError, MemdistillError, UnknownNameError
from memdistill.memory import create_memory, list_memories
from memdistill.memory.file import FORMAT_VERSION, MemoryFile, load_memory, save_memory
from memdistill.viz import export_png, render_grid, render_memory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["zero", "one", "two/three", "four"]


def _memory(kind, shape=(1, 8, 8), **kw):
    opts = dict(num_bases=4, downsample=2) if kind == "bases" else {}
    opts.update(kw)
    return create_memory(kind, shape, 4, 3, generator=torch.Generator().manual_seed(0), init="random", **opts)


def _save(path, memory, **kw):
    c = memory.image_shape[0]
    args = dict(dataset="toy", classes=CLASSES, mean=[0.5] * c, std=[0.25] * c)
    args.update(kw)
    return save_memory(path, memory, **args)


def _read_raw(path):
    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads(fh.metadata()["memdistill"])


def _write_raw(path, tensors, meta):
    save_file(tensors, str(path), metadata={"memdistill": json.dumps(meta)})


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


# ------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("kind", list_memories())
def test_round_trip_is_exact(tmp_path, kind):
    m = _memory(kind)
    path = _save(tmp_path / "m.safetensors", m, config={"outer": {"lr": 0.1, "steps": (1, 2)}},
                 metrics={"accuracy": 0.75, "loss": float("nan")}, train_size=1000, extra={"note": "x"})
    f = load_memory(path)

    assert isinstance(f, MemoryFile) and f.kind == kind and type(f.memory) is type(m)
    assert set(f.memory.tensors) == set(m.tensors)
    for name, t in m.tensors.items():
        assert f.memory.tensors[name].dtype == torch.float32
        assert torch.equal(f.memory.tensors[name], t)
    x0, y0 = m.recall()
    x1, y1 = f.recall()
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    q = torch.tensor([0.5, 0.0, 0.25, 0.25])
    assert torch.equal(f.recall(query=q)[0], m.recall(query=q)[0])

    assert (f.dataset, f.classes, f.image_shape, f.num_classes, f.slots) == ("toy", CLASSES, (1, 8, 8), 4, m.slots)
    assert f.mean == (0.5,) and f.std == (0.25,) and f.zca is None
    meta = f.meta
    assert meta["format"] == "memdistill-memory" and meta["format_version"] == FORMAT_VERSION
    assert meta["kind"] == kind and meta["options"] == m.options()
    assert meta["library_version"] and meta["created"]
    assert meta["tensors"] == {n: list(t.shape) for n, t in m.tensors.items()}
    assert meta["zca"] == {"present": False, "regularization": None}
    assert meta["config"] == {"outer": {"lr": 0.1, "steps": [1, 2]}}
    assert meta["metrics"] == {"accuracy": 0.75, "loss": None}  # NaN is stored as null
    assert meta["extra"] == {"note": "x"}

    rep = f.report()
    floats = sum(t.numel() for t in m.tensors.values())
    assert rep["kind"] == kind and rep["dataset"] == "toy" and rep["options"] == m.options()
    assert rep["floats_stored"] == floats and rep["examples"] == 4 * m.slots and rep["train_size"] == 1000
    assert rep["bytes_on_disk"] == path.stat().st_size == len(path.read_bytes())
    assert rep["compression_ratio"] == pytest.approx(1000 * 64 / (4 * floats))
    assert f"kind={kind!r}" in repr(f) and "dataset='toy'" in repr(f)

    ds = f.as_dataset()
    assert len(ds) == 4 * m.slots and torch.equal(ds.images, x0) and not ds.soft
    assert _no_temp_files(tmp_path)


def test_report_without_train_size_has_no_ratio(tmp_path):
    f = load_memory(_save(tmp_path / "m.safetensors", _memory("images")))
    assert f.report()["compression_ratio"] is None and f.report()["train_size"] is None
    assert f.report()["bytes_on_disk"] == (tmp_path / "m.safetensors").stat().st_size


@pytest.mark.parametrize("kind", list_memories())
def test_learned_labels_round_trip(tmp_path, kind):
    m = _memory(kind, learned_labels=True)
    logits = m.tensors["label_logits"]
    m.tensors["label_logits"] = logits + 0.01 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    f = load_memory(_save(tmp_path / "m.safetensors", m))
    assert f.meta["options"]["learned_labels"] is True
    assert torch.equal(f.memory.tensors["label_logits"], m.tensors["label_logits"])
    _, y = f.recall()
    assert y.shape == (4 * m.slots, 4) and torch.equal(y, m.recall()[1])
    assert f.as_dataset().soft


def test_zca_round_trip(tmp_path):
    zca = ZCAWhitening.fit(torch.randn(50, 1, 8, 8, generator=torch.Generator().manual_seed(2)), 0.1)
    f = load_memory(_save(tmp_path / "m.safetensors", _memory("bases"), zca=zca))
    assert f.meta["zca"] == {"present": True, "regularization": 0.1}
    assert f.zca is not None and f.zca.regularization == 0.1 and f.zca.image_shape == (1, 8, 8)
    for name, t in zca.state_dict().items():
        assert torch.equal(f.zca.state_dict()[name], t)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(f.zca.transform(x), zca.transform(x), rtol=1e-12, atol=1e-12)


def test_zca_of_another_shape_is_refused(tmp_path):
    zca = ZCAWhitening.fit(torch.randn(20, 1, 4, 4), 0.1)
    with pytest.raises(ConfigError, match="ZCA is fitted for images"):
        _save(tmp_path / "m.safetensors", _memory("images"), zca=zca)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("whiten", [False, True])
def test_to_pixels_inverts_dataset_normalisation(tmp_path, mnist_train, whiten):
    """Real MNIST: normalise with the dataset (mean/std, then ZCA), recover pixels/255."""
    ds = mnist_train
    if whiten:
        ds = ds.with_zca(fit_zca(mnist_train.subset(torch.arange(1000)), 0.1))
    m = create_memory("images", ds.image_shape, ds.num_classes, 1, generator=torch.Generator().manual_seed(0),
                      init="random")
    f = load_memory(save_memory(tmp_path / "m.safetensors", m, dataset=ds.name, classes=list(ds.classes),
                                mean=ds.mean, std=ds.std, zca=ds.zca, train_size=len(ds)))
    raw = ds.images[:32]
    x = ds.normalize(raw)
    assert not torch.allclose(x, raw.float() / 255)  # normalisation did something
    pixels = f.to_pixels(x)
    assert pixels.dtype == torch.float32 and pixels.shape == raw.shape
    torch.testing.assert_close(pixels, raw.float() / 255, atol=1e-4, rtol=0)
    torch.testing.assert_close(pixels, ds.denormalize(x), atol=1e-4, rtol=0)
    assert (f.zca is not None) == whiten
    assert 0.0 <= float(f.to_pixels(torch.randn(2, 1, 28, 28) * 50).min())  # clamped to [0, 1]


# ------------------------------------------------------------------------- refusals
def test_nan_memory_is_refused_and_previous_file_kept(tmp_path):
    path = _save(tmp_path / "m.safetensors", _memory("bases"))
    good = path.read_bytes()
    bad = _memory("bases")
    bad.tensors["addressing"] = bad.tensors["addressing"].clone()
    bad.tensors["addressing"][0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match="'addressing' contains NaN or Inf; refusing"):
        _save(path, bad)
    bad.tensors["addressing"][0, 0, 0] = float("inf")
    with pytest.raises(ConfigError, match="NaN or Inf"):
        _save(path, bad)
    assert path.read_bytes() == good and _no_temp_files(tmp_path)
    assert torch.equal(load_memory(path).memory.tensors["addressing"], _memory("bases").tensors["addressing"])


def test_bad_save_arguments_write_nothing(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(ConfigError, match="4 classes but 3 class names"):
        _save(path, _memory("images"), classes=CLASSES[:3])
    with pytest.raises(ConfigError, match="std must be > 0"):
        _save(path, _memory("images"), std=[0.0])
    with pytest.raises(ConfigError, match="mean must be 1 finite numbers"):
        _save(path, _memory("images"), mean=[0.5, 0.5])
    with pytest.raises(ConfigError, match=r"^config\.fn holds a builtin_function_or_method, which cannot be stored"):
        _save(path, _memory("images"), config={"fn": len})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="memory file not found"):
        load_memory(tmp_path / "absent.safetensors")
    with pytest.raises(ConfigError, match="is a directory"):
        load_memory(tmp_path)


@pytest.mark.parametrize(
    "content", [b"", b"abc", random.Random(0).randbytes(4096), b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"]
)
def test_non_safetensors_bytes_are_refused(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(IntegrityError, match="is not a safetensors file"):
        load_memory(path)


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(IntegrityError, match="not a memdistill memory file"):
        load_memory(plain)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(other), metadata={"format": "pt"})
    with pytest.raises(IntegrityError, match="not a memdistill memory file"):
        load_memory(other)
    zca_file = tmp_path / "zca.safetensors"
    ZCAWhitening.fit(torch.randn(10, 1, 2, 2), 0.1).save(zca_file)
    with pytest.raises(IntegrityError, match="not a memdistill memory file"):
        load_memory(zca_file)


def test_newer_format_version_is_refused(tmp_path):
    tensors, meta = _read_raw(_save(tmp_path / "m.safetensors", _memory("images")))
    meta["format_version"] = FORMAT_VERSION + 1
    _write_raw(tmp_path / "new.safetensors", tensors, meta)
    with pytest.raises(IntegrityError, match="written by a newer memdistill.*upgrade"):
        load_memory(tmp_path / "new.safetensors")


def test_unknown_kind_is_refused_with_valid_kinds(tmp_path):
    tensors, meta = _read_raw(_save(tmp_path / "m.safetensors", _memory("images")))
    meta["kind"] = "hallucinator"
    _write_raw(tmp_path / "k.safetensors", tensors, meta)
    with pytest.raises(UnknownNameError, match="unknown kind.*'hallucinator'.*valid choices: bases, images"):
        load_memory(tmp_path / "k.safetensors")


@pytest.mark.parametrize("kind", list_memories())
def test_wrong_or_missing_tensors_are_refused(tmp_path, kind):
    tensors, meta = _read_raw(_save(tmp_path / "m.safetensors", _memory(kind)))
    name = "memory.images" if kind == "images" else "memory.addressing"

    shaped = dict(tensors, **{name: tensors[name][:-1].contiguous()})
    _write_raw(tmp_path / "shape.safetensors", shaped, meta)
    with pytest.raises(IntegrityError, match=f"tensor '{name[7:]}' has shape .* the metadata says"):
        load_memory(tmp_path / "shape.safetensors")

    _write_raw(tmp_path / "missing.safetensors", {k: v for k, v in tensors.items() if k != name}, meta)
    with pytest.raises(IntegrityError, match=f"missing: {name[7:]}"):
        load_memory(tmp_path / "missing.safetensors")

    _write_raw(tmp_path / "extra.safetensors", dict(tensors, stray=torch.zeros(2)), meta)
    with pytest.raises(IntegrityError, match="unexpected: stray"):
        load_memory(tmp_path / "extra.safetensors")

    # tensors consistent with their manifest but not with the declared number of slots
    lying = dict(meta, slots=meta["slots"] - 1)
    _write_raw(tmp_path / "slots.safetensors", tensors, lying)
    with pytest.raises(IntegrityError, match="do not fit image_shape"):
        load_memory(tmp_path / "slots.safetensors")

    wrong_dtype = dict(tensors, **{name: tensors[name].double()})
    _write_raw(tmp_path / "dtype.safetensors", wrong_dtype, meta)
    with pytest.raises(IntegrityError, match="memory tensors are float32"):
        load_memory(tmp_path / "dtype.safetensors")


def test_every_refusal_is_a_memdistill_error(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(MemdistillError):
        load_memory(path)


# --------------------------------------------------------------------------- pictures
@pytest.mark.parametrize("kind", list_memories())
def test_export_png_writes_one_png_per_class_and_bases(tmp_path, kind):
    f = load_memory(_save(tmp_path / "m.safetensors", _memory(kind)))
    out = tmp_path / "png"
    paths = export_png(f, out)
    names = sorted(p.name for p in paths)
    expected = [f"class-{c:03d}-{n}.png" for c, n in enumerate(["zero", "one", "two_three", "four"])]
    assert names == sorted(expected + (["bases.png"] if kind == "bases" else []))
    assert sorted(p.name for p in out.iterdir()) == names  # nothing else, no temp files
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("kind", list_memories())
def test_render_memory_writes_a_png(tmp_path, kind):
    zca = ZCAWhitening.fit(torch.randn(50, 3, 8, 8, generator=torch.Generator().manual_seed(3)), 0.1)
    m = _memory(kind, shape=(3, 8, 8))
    f = load_memory(_save(tmp_path / "m.safetensors", m, zca=zca))
    out = render_memory(f, tmp_path / "view" / "mem.png", max_per_class=3)
    assert out == tmp_path / "view" / "mem.png" and out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in (tmp_path / "view").iterdir()] == ["mem.png"]


def test_render_grid_grayscale_and_checks(tmp_path):
    images = torch.rand(7, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    out = render_grid(images, 3, tmp_path / "g.png", title="t", row_labels=["a", "b", "c"])
    assert out.read_bytes()[:8] == PNG_MAGIC and _no_temp_files(tmp_path)
    with pytest.raises(ConfigError, match="3 rows but 2 row labels"):
        render_grid(images, 3, tmp_path / "h.png", row_labels=["a", "b"])
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        render_grid(torch.rand(6, 6), 3, tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


# --------------------------------------------------------------------------- layering
def _imported_modules(module) -> set[str]:
    """Absolute names of the memdistill modules ``module``'s source imports (lazy and
    type-checking-only imports included)."""
    import ast
    import inspect

    package = module.__name__.rsplit(".", 1)[0].split(".")
    found = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target} if node.module else {f"{target}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name.split(".")[0] == "memdistill"}


def test_file_format_imports_neither_the_package_root_nor_rendering():
    import memdistill._container as container
    import memdistill.memory.file as file_module

    for module in (file_module, container):
        imported = _imported_modules(module)
        assert "memdistill" not in imported and "memdistill.__version__" not in imported, imported
        assert not any(name.startswith("memdistill.viz") for name in imported), imported
    assert "memdistill._container" in _imported_modules(file_module)


def test_equal_storage_reference_uses_the_recorded_budget(tmp_path):
    """At budget 10 a ``bases`` memory stores slightly fewer floats than 10 images per
    class: the random-real reference still gets 10 images per class (the run's budget),
    not the 9 a floor of the memory's floats gives; a file without its configuration
    falls back to that floor."""
    from memdistill.labels import reference_ipc
    from memdistill.memory import create_memory, load_memory, save_memory

    shape, classes = (1, 28, 28), [str(i) for i in range(10)]
    mem = create_memory("bases", shape, 10, 10, generator=torch.Generator().manual_seed(0), init="random",
                        num_bases=64, downsample=2)
    assert mem.floats_stored() // (28 * 28 * 10) == 9 < 10
    common = dict(dataset="mnist", classes=classes, mean=(0.13,), std=(0.31,))
    save_memory(tmp_path / "a.safetensors", mem, config={"memory": {"budget_ipc": 10.0}}, **common)
    save_memory(tmp_path / "b.safetensors", mem, **common)
    assert reference_ipc(load_memory(tmp_path / "a.safetensors")) == 10
    assert reference_ipc(load_memory(tmp_path / "b.safetensors")) == 9


# ------------------------------------------------------------------- ragged bases
def _ragged(slots=(3, 3, 2, 1), bases=(2, 2, 4, 4)):
    """A 4-class bases memory where class c holds ``slots[c]`` slots on its first
    ``bases[c]`` of 4 bases (zero elsewhere), like a continual run's shared memory."""
    g = torch.Generator().manual_seed(0)
    addressing = torch.zeros(max(slots), 4, 4)
    for c, (r, k) in enumerate(zip(slots, bases)):
        addressing[:r, c, :k] = torch.randn(r, k, generator=g)
    from memdistill.memory import BasesMemory

    return BasesMemory({"bases": torch.randn(4, 1, 4, 4, generator=g), "addressing": addressing}, (1, 8, 8), 4,
                       max(slots), class_slots=list(slots), class_bases=list(bases))


def test_ragged_bases_memory_recalls_each_class_its_own_slots_and_counts_only_them(tmp_path):
    m = _ragged()
    assert m.ragged and m.class_slot_counts() == [3, 3, 2, 1] and m.query_slots == 1
    x, y = m.recall()
    assert x.shape == (9, 1, 8, 8) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3]
    full = m.recall_from(m.tensors, torch.tensor([2, 2]), torch.tensor([0, 1]))[0]
    assert torch.equal(m.recall(classes=[2])[0], full)
    assert m.floats_stored() == 4 * 16 + (3 * 2 + 3 * 2 + 2 * 4 + 1 * 4)  # the padding is not stored
    assert m.report().examples == 9
    assert m.recall(query=torch.tensor([0.5, 0.5, 0.0, 0.0]))[0].shape == (1, 1, 8, 8)  # slots all classes hold

    f = load_memory(_save(tmp_path / "r.safetensors", m))
    assert f.memory.ragged and f.memory.class_slots == [3, 3, 2, 1] and f.memory.class_bases == [2, 2, 4, 4]
    assert torch.equal(f.recall()[0], x) and f.memory.floats_stored() == m.floats_stored()
    assert f.meta["budget"]["floats_stored"] == m.floats_stored()
    render_memory(f, tmp_path / "r.png")
    assert len(export_png(f, tmp_path / "pngs")) == 5

    # the same counts for every class is the plain layout
    plain = _ragged(slots=(2, 2, 2, 2), bases=(4, 4, 4, 4))
    assert not plain.ragged and "class_slots" not in plain.options()


def test_bad_ragged_layouts_are_refused(tmp_path):
    from memdistill.distill import Distiller
    from memdistill.memory import BasesMemory

    m = _ragged()
    t = m.tensors
    with pytest.raises(ConfigError, match=r"class_slots must be 4 integers in \[1, 3\]"):
        BasesMemory(t, (1, 8, 8), 4, 3, class_slots=[3, 3, 2, 0], class_bases=[2, 2, 4, 4])
    with pytest.raises(ConfigError, match=r"class_bases must be 4 integers in \[1, 4\]"):
        BasesMemory(t, (1, 8, 8), 4, 3, class_slots=[3, 3, 2, 1], class_bases=[2, 2, 4, 5])
    with pytest.raises(ConfigError, match="needs both class_slots and class_bases"):
        BasesMemory(t, (1, 8, 8), 4, 3, class_slots=[3, 3, 2, 1])
    with pytest.raises(ConfigError, match="must be zero outside each class's first"):
        BasesMemory(t, (1, 8, 8), 4, 3, class_slots=[3, 3, 2, 1], class_bases=[1, 2, 4, 4])
    with pytest.raises(ConfigError, match="init_from_real is not defined for a ragged"):
        m.init_from_real(None, torch.Generator())
    with pytest.raises(ConfigError, match="cannot distill from a ragged memory"):
        from memdistill.config import resolve

        Distiller(resolve("cpu-quick", "mnist", 1), None, initial_memory=m)

    # a file whose layout does not fit its tensors
    tensors, meta = _read_raw(_save(tmp_path / "r.safetensors", m))
    meta["options"]["class_bases"] = [1, 2, 4, 4]
    _write_raw(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(IntegrityError, match="invalid memory layout: .*must be zero outside"):
        load_memory(tmp_path / "bad.safetensors")
