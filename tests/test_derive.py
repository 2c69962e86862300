"""Derived tasks (a classifier for a new labelling from the memory alone) and
distillation with a non-one-hot label space."""

from __future__ import annotations

import json

import pytest
import torch

from memdistill.cli import main
from memdistill.config import DistillConfig, apply_overrides
from memdistill.derive import (
    derive_training_set,
    load_derived,
    parse_task,
    relabel_dataset,
    run_derived_task,
    save_derived,
)
from memdistill.distill import Distiller
from memdistill.errors import ConfigError, IntegrityError
from memdistill.evaluate import TrainConfig
from memdistill.labels import label_space_of
from memdistill.memory import load_memory, save_memory

DIGITS = [str(d) for d in range(10)]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


# ------------------------------------------------------------------ task specs
def test_named_and_general_task_specs():
    t = parse_task("odd-even", DIGITS)
    assert t.names == ("even", "odd") and t.members == ((0, 2, 4, 6, 8), (1, 3, 5, 7, 9))
    assert t.mapping().tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert parse_task("lt5", DIGITS).mapping().tolist() == [0] * 5 + [1] * 5
    f = parse_task("tops-bottoms-footwear-bags", FASHION)
    assert f.names == ("tops", "bottoms", "footwear", "bags")
    assert f.mapping().tolist() == [0, 1, 0, 0, 0, 2, 0, 2, 3, 2]
    g = parse_task("groups:shoes=Sandal,Sneaker,9/Bag", FASHION)
    assert g.names == ("shoes", "Bag") and g.members == ((5, 7, 9), (8,))
    assert g.mapping().tolist() == [-1, -1, -1, -1, -1, 0, -1, 0, 1, 0]
    s = parse_task("subset:0,1,2", DIGITS)
    assert s.kind == "subset" and s.names == ("0", "1", "2") and s.mapping().tolist() == [0, 1, 2] + [-1] * 7


@pytest.mark.parametrize("spec, message", [
    ("groups:0,2,4/one,3", r"unknown class 'one'; valid class names: 0, 1, 2"),
    ("subset:0,1,ten", r"unknown class 'ten'"),
    ("groups:0,2,4//1,3", r"group 2 \(''\) is empty"),
    ("groups:/1,3", r"group 1 \(''\) is empty"),
    ("groups:0,,2/1", r"empty member"),
    ("subset:", r"empty class in the subset"),
    ("groups:0,1/1,2", r"class '1' is in two groups"),
    ("groups:0,1,2", r"at least two"),
    ("subset:12,1", r"class index 12 is out of range"),
    ("tops-bottoms-footwear-bags", r"needs the classes \['T-shirt/top'"),
    ("coarse", r"needs a dataset with a coarse labelling"),
    ("parity-ish", r"unknown task 'parity-ish'; valid: odd-even, lt5"),
])
def test_bad_task_specs_are_refused_with_a_clear_message(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_task(spec, DIGITS)


# ------------------------------------------------ real MNIST, end to end
@pytest.fixture(scope="module")
def distilled(mnist_train, tmp_path_factory):
    """A short distillation of real MNIST (a bases memory at budget 1)."""
    cfg = DistillConfig(dataset="mnist", seed=0)
    apply_overrides(cfg, {
        "inner": {"width": 16, "steps": 3, "n_per_class": 5, "augment": "none"},
        "outer": {"iterations": 2, "optimizer": "adam", "lr": 0.01, "real_per_class": 10},
        "evaluation": {"every": 0, "width": 16, "epochs": 1, "augment": "none"},
    })
    g = torch.Generator().manual_seed(0)
    train = mnist_train.subset(torch.randperm(len(mnist_train), generator=g)[:5000])
    res = Distiller(cfg, train).run()
    path = tmp_path_factory.mktemp("derive") / "mnist.safetensors"
    save_memory(path, res.memory, dataset="mnist", classes=list(train.classes), mean=train.mean, std=train.std)
    return load_memory(path)


def test_odd_even_from_the_memory_beats_chance_on_real_mnist(distilled, mnist_test):
    task = parse_task("odd-even", distilled.classes)
    derived = derive_training_set(distilled, task)
    r = distilled.slots
    # every member's r recalled examples plus r from the group query, for each group
    assert derived.labels.tolist() == [0] * (6 * r) + [1] * (6 * r)
    res = run_derived_task(distilled, task, mnist_test, TrainConfig(arch_options={"width": 16}, epochs=30))
    assert 0.49 < res.chance < 0.52
    assert res.memory["mean"] > 0.75, res.memory
    assert res.random_real is None and res.all_real is None


def test_derive_command_writes_the_training_set(distilled, tmp_path, capsys):
    out = tmp_path / "lt5.safetensors"
    code = main(["derive", str(distilled.path), "--task", "subset:0,1,2", "--out", str(out), "--no-real",
                 "--epochs", "10", "--width", "16"])
    assert code == 0, capsys.readouterr().err
    derived = load_derived(out)
    assert derived.task.names == ("0", "1", "2")
    assert derived.labels.tolist() == [0] * distilled.slots + [1] * distilled.slots + [2] * distilled.slots
    x0, _ = distilled.recall(classes=[0])
    torch.testing.assert_close(derived.images[: distilled.slots], x0)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["memory"]["mean"] > 0.6 and record["all_real"] is None
    capsys.readouterr()
    assert main(["derive", str(distilled.path), "--task", "groups:0,2/one", "--out", str(tmp_path / "x.safetensors"),
                 "--no-real"]) == 2
    assert "unknown class 'one'" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(IntegrityError, match="not a memdistill derived training set"):
        load_derived(distilled.path)


def test_relabel_and_equal_storage_reference(distilled, mnist_train, mnist_test):
    task = parse_task("subset:3,8", distilled.classes)
    test = relabel_dataset(mnist_test, task)
    assert set(test.labels.tolist()) == {0, 1} and test.classes == ("3", "8")
    assert len(test) == int((mnist_test.labels == 3).sum() + (mnist_test.labels == 8).sum())
    small = mnist_train.subset(torch.arange(3000))
    tc = TrainConfig(arch_options={"width": 8}, epochs=2)
    res = run_derived_task(distilled, task, mnist_test, tc, train=small, all_real_config=tc)
    # equal storage: the run's budget (1 image for each of the 10 classes, which the memory's
    # floats fall just short of) spread over the 2 member classes; a floor of the memory's
    # floats would give 4 per class
    from memdistill.labels import reference_ipc

    assert reference_ipc(distilled) == 1
    budget = 1 * 28 * 28 * 10
    assert distilled.memory.floats_stored() // (28 * 28) // 2 == 4
    assert res.random_real["examples"] == 2 * 5
    assert res.random_real["floats_stored"] <= budget
    assert res.all_real["examples"] == int(((small.labels == 3) | (small.labels == 8)).sum())


def test_save_derived_round_trip(distilled, tmp_path):
    task = parse_task("lt5", distilled.classes)
    d = derive_training_set(distilled, task, group_queries=False)
    assert len(d.labels) == 10 * distilled.slots
    path = save_derived(tmp_path / "d.safetensors", d, distilled)
    back = load_derived(path)
    torch.testing.assert_close(back.images, d.images)
    assert back.labels.tolist() == d.labels.tolist() and back.task == task
    with pytest.raises(ConfigError, match=r"\.safetensors"):
        save_derived(tmp_path / "d.pt", d, distilled)


# ------------------------------------------------ non-one-hot label spaces
def _parity_config(**over) -> DistillConfig:
    cfg = DistillConfig(dataset="mnist", seed=2)
    apply_overrides(cfg, {
        "memory": {"num_bases": 4, "downsample": 4, "label_space": "parity"},
        "inner": {"width": 8, "steps": 3, "n_per_class": 2, "augment": "flip_rotate"},
        "outer": {"iterations": 2, "real_per_class": 4},
        "evaluation": {"every": 0, "width": 8, "epochs": 2, "augment": "none"},
    })
    apply_overrides(cfg, over)
    return cfg


@pytest.fixture(scope="module")
def small_train(mnist_train):
    g = torch.Generator().manual_seed(1)
    return mnist_train.subset(torch.randperm(len(mnist_train), generator=g)[:1500])


def test_parity_distillation_contract(small_train, tmp_path):
    d = Distiller(_parity_config(), small_train)
    mem = d.new_memory()
    r = mem.slots
    assert mem.tensors["addressing"].shape == (r, 12, 4)
    # equal storage: no more floats than one image per original class
    assert mem.floats_stored() <= 10 * 28 * 28
    # initialised from real data: each class query recalls images of that class, so the
    # nearest class mean of the recalled examples classifies real images far above chance
    x, y = d.label_space.class_examples(mem)
    assert x.shape == (10 * r, 1, 28, 28) and y.tolist() == [c for c in range(10) for _ in range(r)]
    means = x.detach().view(10, r, -1).mean(1)
    xr, yr = small_train.batch(torch.arange(500))
    pred = torch.cdist(xr.flatten(1), means).argmin(1)
    assert float((pred == yr).float().mean()) > 0.3  # chance 0.1; 4 bases at 7x7 reach about 0.5
    # the meta-gradient reaches the coarse rows (they are trained by the coarse-only queries)
    loss, grads, _ = d.meta_step(mem, 0)
    g = dict(zip(mem.names, grads))
    assert torch.isfinite(torch.tensor(loss)) and g["addressing"].shape == (r, 12, 4)
    assert float(g["addressing"][:, 10:].abs().sum()) > 0
    assert float(g["addressing"][:, :10].abs().sum()) > 0


def test_parity_meta_gradient_checkpointed_matches_full_unroll(small_train):
    d_ck = Distiller(_parity_config(**{"outer.unroll": "checkpointed"}), small_train)
    d_full = Distiller(_parity_config(**{"outer.unroll": "full"}), small_train)
    mem = d_ck.new_memory()
    l1, g1, _ = d_ck.meta_step(mem, 5)
    l2, g2, _ = d_full.meta_step(mem, 5)
    assert l1 == pytest.approx(l2, rel=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_parity_memory_file_and_coarse_query(tmp_path):
    path = tmp_path / "parity.safetensors"
    assert main(["distill", "--dataset", "mnist", "--budget-ipc", "1", "--iterations", "1", "--inner-steps", "2",
                 "--set", "memory.label_space=parity", "--set", "inner.width=8", "--set", "evaluation.epochs=1",
                 "--set", "memory.num_bases=4", "--set", "memory.downsample=4",
                 "--root", str(small_train_root()), "--out", str(path), "--no-progress"]) == 0
    mf = load_memory(path)
    space = label_space_of(mf)
    assert space.name == "parity" and mf.classes[10:] == ["even", "odd"] and mf.num_classes == 12
    x, _ = mf.recall(query=torch.eye(12)[10])  # the "even" coordinate
    assert x.shape == (mf.slots, 1, 28, 28)
    # the derived odd/even task works on it, with the class queries as targets rows
    task = parse_task("odd-even", space.class_names)
    derived = derive_training_set(mf, task)
    assert len(derived.labels) == 12 * mf.slots
    assert 0 <= mf.meta["metrics"]["validation"]["mean"] <= 1


def small_train_root():
    import os
    from pathlib import Path

    return Path(os.environ.get("MEMDISTILL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def test_label_space_refuses_learned_labels(small_train):
    with pytest.raises(ConfigError, match="cannot be combined with memory.learned_labels"):
        Distiller(_parity_config(**{"memory.learned_labels": True}), small_train)
    with pytest.raises(ConfigError, match="unknown label space 'digits'"):
        _parity_config(**{"memory.label_space": "digits"}).validate()


def test_coarse_label_space_and_task_from_a_dataset_with_coarse_labels():
    from memdistill.data import ImageDataset
    from memdistill.labels import create_label_space

    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    ds = ImageDataset(name="toy", split="train", images=torch.zeros(8, 1, 4, 4, dtype=torch.uint8), labels=labels,
                      classes=("apple", "pear", "oak", "pine"), mean=(0.5,), std=(0.5,),
                      extra_labels={"coarse": torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])},
                      extra_classes={"coarse": ("fruit", "tree")})
    space = create_label_space("coarse", ds.classes, dataset=ds)
    assert space.width == 6 and space.coordinates[4:] == ("fruit", "tree")
    assert space.table[2].tolist() == [0, 0, 1, 0, 0, 1]
    task = parse_task("coarse", ds.classes, dataset=ds)
    assert task.names == ("fruit", "tree") and task.mapping().tolist() == [0, 0, 1, 1]
    bad = ImageDataset(name="toy", split="train", images=ds.images, labels=labels, classes=ds.classes,
                       mean=(0.5,), std=(0.5,), extra_labels={"coarse": torch.tensor([0, 1, 1, 1, 0, 0, 1, 1])},
                       extra_classes={"coarse": ("fruit", "tree")})
    with pytest.raises(ConfigError, match="class 'pear' maps to 2 coarse labels"):
        create_label_space("coarse", bad.classes, dataset=bad)


# ------------------------------------------------ the derived file shares the memory file's container
def _toy_memory_file(tmp_path):
    from memdistill.memory import create_memory

    mem = create_memory("images", (1, 4, 4), 4, 2, generator=torch.Generator().manual_seed(0), init="random")
    path = save_memory(tmp_path / "m.safetensors", mem, dataset="toy", classes=list("0123"), mean=[0.5], std=[0.25])
    return load_memory(path)


def test_derived_file_has_the_memory_file_header_and_checks(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from memdistill import __version__

    mf = _toy_memory_file(tmp_path)
    d = derive_training_set(mf, parse_task("groups:0,1/2,3", mf.classes))
    path = save_derived(tmp_path / "d.safetensors", d, mf)
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["memdistill"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    assert meta["format"] == "memdistill-derived" and meta["format_version"] == 1
    assert meta["library_version"] == __version__ and meta["created"]

    # NaN images are refused at save time; the previous file is kept, no temp files left
    good = path.read_bytes()
    bad = type(d)(d.images.clone(), d.labels, d.task, d.meta)
    bad.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ConfigError, match="'images' contains NaN or Inf; refusing"):
        save_derived(path, bad, mf)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["d.safetensors", "m.safetensors"]

    def write(name, tensors, meta):
        save_file(tensors, str(tmp_path / name), metadata={"memdistill": json.dumps(meta)})
        return tmp_path / name

    newer = write("newer.safetensors", tensors, dict(meta, format_version=2))
    with pytest.raises(IntegrityError, match="written by a newer memdistill.*upgrade"):
        load_derived(newer)
    floats = write("float-labels.safetensors", dict(tensors, labels=tensors["labels"].float()), meta)
    with pytest.raises(IntegrityError, match="tensor 'labels' is torch.float32, labels are int64"):
        load_derived(floats)
    nan = tensors["images"].clone()
    nan[0, 0, 0, 0] = float("inf")
    with pytest.raises(IntegrityError, match="'images' contains NaN or Inf"):
        load_derived(write("inf.safetensors", dict(tensors, images=nan), meta))
    with pytest.raises(IntegrityError, match="the task is malformed"):
        load_derived(write("task.safetensors", tensors, dict(meta, task={"spec": "x"})))
    with pytest.raises(IntegrityError, match="not a memdistill memory file"):
        load_memory(path)


def test_derived_file_written_before_the_shared_container_still_loads(tmp_path):
    """save_derived used to write no library_version/created; such files still load."""
    from safetensors.torch import save_file

    task = parse_task("subset:0,2", DIGITS)
    images = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 0, 1, 1])
    old_meta = {"format": "memdistill-derived", "format_version": 1, "task": task.as_dict(),
                "classes": list(task.names), "source": None, "dataset": "toy", "mean": [0.5], "std": [0.25],
                "zca": False, "group_queries": True, "examples": 4}
    save_file({"images": images, "labels": labels}, str(tmp_path / "old.safetensors"),
              metadata={"memdistill": json.dumps(old_meta)})
    back = load_derived(tmp_path / "old.safetensors")
    assert back.task == task and back.labels.tolist() == [0, 0, 1, 1] and torch.equal(back.images, images)
    assert back.meta["dataset"] == "toy" and back.meta["examples"] == 4
