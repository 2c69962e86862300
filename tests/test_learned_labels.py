"""Learned labels: stored as logits, recalled as distributions, moved by their own outer
learning rate, counted in the budget, saved and loaded, and trained on with a soft
cross-entropy that is bounded below."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from memdistill.config import OuterConfig, resolve
from memdistill.distill.loop import outer_optimizer
from memdistill.engine.unroll import inner_loss
from memdistill.errors import ConfigError, IntegrityError
from memdistill.evaluate import TrainConfig, TrainingSet
from memdistill.evaluate._train import _loss as evaluator_loss
from memdistill.memory import create_memory, list_memories, load_memory, save_memory, solve_slots
from memdistill.memory._base import LABEL_INIT_SMOOTHING, stored_float_budget

L = 4
SHAPE = (1, 8, 8)


def _memory(kind, budget=3, temperature=1.0, seed=0):
    opts = dict(num_bases=4, downsample=2) if kind == "bases" else {}
    mem = create_memory(kind, SHAPE, L, budget, generator=torch.Generator().manual_seed(seed), init="random",
                        learned_labels=True, label_temperature=temperature, **opts)
    mem.tensors = {k: v.requires_grad_() for k, v in mem.tensors.items()}
    return mem


def _assert_distributions(y: torch.Tensor, rows: int) -> None:
    assert y.shape == (rows, L) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert float(y.min()) >= 0.0
    torch.testing.assert_close(y.double().sum(1), torch.ones(rows, dtype=torch.float64), atol=1e-5, rtol=0)


# -------------------------------------------------------------- recall and initialisation
@pytest.mark.parametrize("kind", list_memories())
@pytest.mark.parametrize("temperature", [0.25, 1.0, 3.0])
def test_initial_labels_recall_the_smoothed_one_hot_class(kind, temperature):
    mem = _memory(kind, temperature=temperature)
    _, y = mem.recall()
    classes = torch.arange(L).repeat_interleave(mem.slots)
    eps = LABEL_INIT_SMOOTHING
    expected = (1 - eps) * torch.nn.functional.one_hot(classes, L).float() + eps / L
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)  # 0.925 on the class, 0.025 elsewhere
    _, y3 = mem.recall(classes=[3])
    assert (y3.argmax(1) == 3).all()


@pytest.mark.parametrize("kind", list_memories())
def test_recall_is_the_softmax_of_the_logits_over_the_temperature(kind):
    mem = _memory(kind, temperature=0.5)
    g = torch.Generator().manual_seed(3)
    mem.tensors["label_logits"] = torch.randn(mem.tensors["label_logits"].shape, generator=g) * 4
    _, y = mem.recall(classes=[2])
    logits = mem.tensors["label_logits"]
    rows = logits[:, 2] if kind == "bases" else logits[2]  # (r, L): bases (r, L, L), images (L, r, L)
    torch.testing.assert_close(y, torch.softmax(rows.detach() / 0.5, dim=1))


# --------------------------------------------------------- the property: any outer steps
@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(list_memories()),
    optimizer=st.sampled_from(["adam", "sgd"]),
    label_lr=st.sampled_from([0.0, 0.01, 1.0, 30.0]),
    temperature=st.sampled_from([0.1, 1.0, 5.0]),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    steps=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_recalled_labels_stay_distributions_after_any_outer_steps(kind, optimizer, label_lr, temperature, scale,
                                                                  steps, seed):
    """Random meta-gradients of any size applied through the run's own outer optimiser:
    the recalled labels stay distributions (raw values, the old parameterisation, go
    negative and off the simplex under the same updates)."""
    mem = _memory(kind, temperature=temperature)
    start = mem.tensors["label_logits"].detach().clone()
    opt = outer_optimizer(OuterConfig(optimizer=optimizer, lr=0.1, label_lr=label_lr, momentum=0.9), mem, 0.1)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in mem.parameters():
            p.grad = torch.randn(p.shape, generator=g) * scale
        opt.step()
        opt.zero_grad(set_to_none=True)
    _, y = mem.recall()
    _assert_distributions(y, L * mem.slots)
    moved = not torch.equal(mem.tensors["label_logits"].detach(), start)
    assert moved == (label_lr > 0)  # the labels are learned at their own rate (0: kept)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_label_logits_move_at_their_own_learning_rate(optimizer):
    mem = _memory("bases")
    before = {k: v.detach().clone() for k, v in mem.tensors.items()}
    opt = outer_optimizer(OuterConfig(optimizer=optimizer, lr=0.1, label_lr=0.03, momentum=0.0), mem, 0.1)
    for p in mem.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    # one step along a gradient of ones: SGD moves by lr * 1, Adam (bias-corrected) by lr
    for name, v in mem.tensors.items():
        lr = 0.03 if name == "label_logits" else 0.1
        torch.testing.assert_close(v.detach(), before[name] - lr, atol=1e-6, rtol=1e-5)
    assert [g["base_lr"] for g in opt.param_groups] == [0.1, 0.03]


@pytest.mark.parametrize("optimizer,power,lr", [("adam", 1, 0.2), ("sgd", 2, 50.0)])
def test_a_temperature_is_a_rescaled_label_learning_rate(optimizer, power, lr):
    """Logits ``l`` at temperature ``T`` and rate ``lr`` recall what logits ``l / T`` at
    temperature 1 and rate ``lr / T`` (Adam: its step ignores the gradient's scale) or
    ``lr / T**2`` (SGD) recall, step after step: the temperature adds no freedom beyond
    ``outer.label_lr`` (why the default is 1, see docs/CONFIG.md)."""
    T = 4.0
    hot, plain = _memory("images", temperature=T), _memory("images", temperature=1.0)
    plain.tensors["label_logits"] = (hot.tensors["label_logits"].detach() / T).requires_grad_()
    w = torch.randn(L * hot.slots, L, generator=torch.Generator().manual_seed(4))
    opts = [outer_optimizer(OuterConfig(optimizer=optimizer, lr=0.0, label_lr=rate, momentum=0.5), m, 0.0)
            for m, rate in ((hot, lr), (plain, lr / T ** power))]
    for _ in range(5):
        for mem, opt in zip((hot, plain), opts):
            _, y = mem.recall_from(mem.tensors, torch.arange(L).repeat_interleave(mem.slots),
                                   torch.arange(mem.slots).repeat(L))
            (w * y).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    torch.testing.assert_close(hot.recall()[1], plain.recall()[1], atol=1e-5, rtol=0)
    assert float((hot.recall()[1] - _memory("images").recall()[1]).abs().max()) > 0.01  # they did move


# ------------------------------------------------------------------------------- budget
def test_the_budget_counts_the_label_logits():
    # MNIST budget 1, 16 bases at 14 x 14: 7840 floats; 3136 for the bases; a slot is
    # 16 * 10 addressing + 10 * 10 label logits = 260 floats -> 18 slots (29 without labels)
    g = torch.Generator().manual_seed(0)
    mem = create_memory("bases", (1, 28, 28), 10, 1, generator=g, init="random", learned_labels=True)
    assert mem.slots == 18 == solve_slots(1, (1, 28, 28), 10, 16, 2, learned_labels=True)
    assert solve_slots(1, (1, 28, 28), 10, 16, 2) == 29
    assert mem.floats_stored() == 3136 + 18 * 260 == 7816 <= stored_float_budget(1, (1, 28, 28), 10)
    assert mem.tensors["label_logits"].numel() == 18 * 100
    img = create_memory("images", SHAPE, L, 3, generator=g, init="random", learned_labels=True)
    # 3 * 64 * 4 = 768 floats; a slot is one 64-float image and 4 label logits per class
    assert img.slots == 768 // (L * (64 + L)) == 2
    assert img.floats_stored() == L * 2 * (64 + L) <= 768


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("key,value,match", [
    ("memory.label_temperature", "0", r"memory.label_temperature must be > 0 \(valid range \(0, inf\)\)"),
    ("memory.label_temperature", "-1.5", r"memory.label_temperature must be > 0 \(valid range \(0, inf\)\)"),
    ("memory.label_temperature", "nan", r"memory.label_temperature must be > 0"),
    ("outer.label_lr", "-0.01", r"outer.label_lr must be >= 0 \(valid range \[0, inf\)"),
])
def test_out_of_range_label_settings_are_refused(key, value, match):
    with pytest.raises(ConfigError, match=match):
        resolve("cpu-quick", "mnist", 1, sets=[("memory.learned_labels", "true"), (key, value)])


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf")])
def test_a_memory_refuses_a_bad_temperature(temperature):
    with pytest.raises(ConfigError, match=r"label_temperature must be a finite number > 0 \(valid range \(0, inf\)\)"):
        _memory("images", temperature=temperature)


# -------------------------------------------------------------------------- the file
def _save(path, mem):
    return save_memory(path, mem, dataset="toy", classes=[str(i) for i in range(L)], mean=[0.5], std=[0.25])


@pytest.mark.parametrize("kind", list_memories())
def test_a_saved_and_loaded_memory_recalls_the_same_distributions(tmp_path, kind):
    mem = _memory(kind, temperature=0.7)
    mem.tensors["label_logits"] = torch.randn(mem.tensors["label_logits"].shape,
                                              generator=torch.Generator().manual_seed(5)) * 3
    f = load_memory(_save(tmp_path / "m.safetensors", mem))
    assert f.meta["format_version"] == 2
    assert f.meta["options"]["label_temperature"] == 0.7 and f.memory.label_temperature == 0.7
    (x0, y0), (x1, y1) = mem.recall(), f.recall()
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    _assert_distributions(y1, L * mem.slots)
    assert f.as_dataset().soft


def test_a_version_1_file_with_raw_labels_is_refused_with_the_reason(tmp_path):
    mem = _memory("bases")
    path = _save(tmp_path / "m.safetensors", mem)
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(fh.metadata()["memdistill"])
    tensors["memory.labels"] = torch.softmax(tensors.pop("memory.label_logits"), -1) - 0.05  # raw, some < 0
    meta["tensors"]["labels"] = meta["tensors"].pop("label_logits")
    meta["options"] = {k: v for k, v in meta["options"].items() if k != "label_temperature"}
    meta["format_version"] = 1
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata={"memdistill": json.dumps(meta)})
    with pytest.raises(IntegrityError, match=r"version-1 form.*no lower bound.*Distill the memory again"):
        load_memory(tmp_path / "v1.safetensors")


def test_a_version_1_file_without_learned_labels_still_loads(tmp_path):
    mem = create_memory("bases", SHAPE, L, 3, generator=torch.Generator().manual_seed(0), init="random",
                        num_bases=4, downsample=2)
    path = _save(tmp_path / "m.safetensors", mem)
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        meta = json.loads(fh.metadata()["memdistill"])
    meta["format_version"] = 1
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata={"memdistill": json.dumps(meta)})
    f = load_memory(tmp_path / "v1.safetensors")
    assert torch.equal(f.recall()[0], mem.recall()[0]) and f.recall()[1].ndim == 1


# ------------------------------------------------------------ the evaluator's soft loss
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1.0, 100.0, 1e4]))
def test_the_soft_loss_on_recalled_labels_is_bounded_below(seed, scale):
    """The evaluator's loss (and the inner loop's, the same convention) on recalled labels
    is at least the labels' entropy, hence >= 0, whatever the network's logits."""
    mem = _memory("bases")
    g = torch.Generator().manual_seed(seed)
    mem.tensors["label_logits"] = torch.randn(mem.tensors["label_logits"].shape, generator=g) * scale
    _, y = mem.recall()
    logits = torch.randn(y.shape, generator=g) * scale
    loss = evaluator_loss(logits, y)
    entropy = -(y * torch.log(y.clamp_min(1e-30))).sum(1).mean()
    assert float(loss) >= float(entropy) - 1e-4 >= -1e-4
    torch.testing.assert_close(loss, inner_loss(logits, y))


def test_the_evaluator_refuses_soft_labels_that_are_not_distributions():
    x = torch.zeros(3, *SHAPE)
    raw = torch.tensor([[1.2, -0.2, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.9, 0.3, 0.2, 0.13]])  # the old raw labels
    with pytest.raises(ConfigError, match=r"must be distributions.*smallest entry of -0.2"):
        TrainingSet(x, raw)
    with pytest.raises(ConfigError, match=r"must be distributions.*row sums up to 0.53"):
        TrainingSet(x, raw.clamp_min(0))
    assert TrainingSet(x, torch.full((3, 4), 0.25)).soft


def test_training_on_recalled_labels_keeps_the_loss_non_negative(monkeypatch):
    """A real retraining run on a memory whose logits were pushed far: every step's
    soft cross-entropy is >= 0 (the issue's run reached -459 with raw labels)."""
    train_mod = importlib.import_module("memdistill.evaluate._train")  # the package shadows it with a function
    mem = _memory("images", budget=6)
    mem.tensors["label_logits"] = torch.randn(mem.tensors["label_logits"].shape,
                                              generator=torch.Generator().manual_seed(2)) * 50
    x, y = mem.recall()
    seen = []

    def recording(logits, target):
        value = evaluator_loss(logits, target)
        seen.append(float(value.detach()))
        return value

    monkeypatch.setattr(train_mod, "_loss", recording)
    cfg = TrainConfig(arch="convnet", arch_options={"width": 4}, epochs=30, lr=0.5, batch_size=len(y))
    train_mod.train_network(TrainingSet(x, y), L, cfg, torch.Generator().manual_seed(0))
    assert len(seen) == 30 and min(seen) >= 0 and all(math.isfinite(v) for v in seen)
