"""Queries in label space, label spaces, and the pictures of queries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill.cli import main
from memdistill.engine import inner_loss
from memdistill.errors import ConfigError, UnknownNameError
from memdistill.labels import LabelSpace, create_label_space, label_space_of
from memdistill.memory import MEMORIES, create_memory, load_memory, save_memory
from memdistill.queries import (
    class_query,
    group_query,
    interpolation_queries,
    mixture_query,
    parse_query,
    recall_query,
)

DIGITS = [str(d) for d in range(10)]


def _memory_file(tmp_path, kind: str, label_space: str = "onehot", name: str = "m"):
    """A random memory of ``kind`` over the 10 digits (``L`` rows of ``label_space``),
    written to and read back from a memory file."""
    g = torch.Generator().manual_seed(3)
    space = create_label_space(label_space, DIGITS)
    opts = {"num_bases": 4, "downsample": 2} if kind == "bases" else {}
    mem = create_memory(kind, (1, 8, 8), space.width, 3.0, generator=g, init="random", **opts)
    path = save_memory(tmp_path / f"{name}-{kind}.safetensors", mem, dataset="mnist",
                       classes=list(space.coordinates), mean=[0.1307], std=[0.3081],
                       extra=None if space.is_onehot else {"label_space": space.to_record()})
    return load_memory(path)


@pytest.fixture(params=MEMORIES.names())
def mem_file(request, tmp_path):
    return _memory_file(tmp_path, request.param)


# ------------------------------------------------------------------ query API
def test_one_hot_query_recalls_the_class_examples(mem_file):
    for c in range(mem_file.num_classes):
        x_class, _ = mem_file.recall(classes=[c])
        x_query, y_query = mem_file.recall(query=torch.eye(mem_file.num_classes)[c])
        torch.testing.assert_close(x_query, x_class, rtol=1e-5, atol=1e-5)
        assert y_query.shape == (mem_file.slots, mem_file.num_classes)
        # and the helper by name gives the same
        torch.testing.assert_close(recall_query(mem_file, class_query(mem_file, str(c)))[0], x_class)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_recall_is_linear_in_the_query(tmp_path_factory, data):
    mem_file = _memory_file(tmp_path_factory.mktemp("lin"), data.draw(st.sampled_from(MEMORIES.names())))
    L = mem_file.num_classes
    floats = st.floats(-3, 3, allow_nan=False, allow_infinity=False, width=32)
    q1 = torch.tensor(data.draw(st.lists(floats, min_size=L, max_size=L)))
    q2 = torch.tensor(data.draw(st.lists(floats, min_size=L, max_size=L)))
    a, b = data.draw(floats), data.draw(floats)
    x1, x2 = recall_query(mem_file, q1), recall_query(mem_file, q2)
    x12 = recall_query(mem_file, a * q1 + b * q2)
    scale = 1 + x1.abs().max() + x2.abs().max()
    torch.testing.assert_close(x12, a * x1 + b * x2, rtol=1e-4, atol=1e-4 * float(scale) * (1 + abs(a) + abs(b)))
    # a batch of queries is the same as the queries one by one
    both = recall_query(mem_file, torch.stack([q1, q2]))
    torch.testing.assert_close(both, torch.cat([x1, x2]))


@pytest.mark.parametrize("bad", [torch.zeros(9), torch.zeros(11), torch.zeros(2, 9), torch.zeros(2, 3, 10)])
def test_query_of_the_wrong_shape_is_refused(mem_file, bad):
    with pytest.raises(ConfigError, match=r"a query must have shape \(10,\) or \(Q, 10\)"):
        mem_file.recall(query=bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_query_with_nan_or_inf_is_refused(mem_file, value):
    q = torch.zeros(10)
    q[4] = value
    with pytest.raises(ConfigError, match="NaN or Inf"):
        mem_file.recall(query=q)
    with pytest.raises(ConfigError, match="finite"):
        parse_query(mem_file, f"3:{value}")


def test_query_helpers(mem_file):
    eye = torch.eye(10)
    torch.testing.assert_close(class_query(mem_file, "7"), eye[7])
    torch.testing.assert_close(mixture_query(mem_file, {"3": 0.25, 8: 0.75}), 0.25 * eye[3] + 0.75 * eye[8])
    g = group_query(mem_file, ["0", "2", "4", "6", "8"])
    torch.testing.assert_close(g, eye[[0, 2, 4, 6, 8]].sum(0) / 5)
    path = interpolation_queries(mem_file, "3", "8", steps=5)
    assert path.shape == (5, 10)
    torch.testing.assert_close(path[0], eye[3])
    torch.testing.assert_close(path[-1], eye[8])
    torch.testing.assert_close(path[2], 0.5 * eye[3] + 0.5 * eye[8])
    torch.testing.assert_close(parse_query(mem_file, "3:0.5,8:0.5"), path[2])
    torch.testing.assert_close(parse_query(mem_file, "group:0,2,4,6,8"), g)
    # the interpolation recalls the mixture of the two ends' examples
    x = recall_query(mem_file, path)
    torch.testing.assert_close(x[2], 0.5 * (x[0] + x[-1]), rtol=1e-4, atol=1e-5)


def test_query_helpers_refuse_bad_input(mem_file):
    with pytest.raises(ConfigError, match="unknown class 'eleven'.*valid class names: 0, 1"):
        class_query(mem_file, "eleven")
    with pytest.raises(ConfigError, match="out of range"):
        class_query(mem_file, 10)
    with pytest.raises(ConfigError, match="at least one class"):
        group_query(mem_file, [])
    with pytest.raises(ConfigError, match="twice"):
        group_query(mem_file, ["1", "1"])
    with pytest.raises(ConfigError, match="steps >= 2"):
        interpolation_queries(mem_file, 3, 8, steps=1)
    with pytest.raises(ConfigError, match="NAME:WEIGHT"):
        parse_query(mem_file, "3:half")


# ---------------------------------------------------------------- label spaces
def test_parity_label_space_table_and_groups():
    space = create_label_space("parity", DIGITS)
    assert space.width == 12 and space.rows == 12 and space.num_classes == 10
    assert space.coordinates[10:] == ("even", "odd")
    assert space.groups == ((0, 10), (10, 12))
    for d in range(10):
        expected = torch.zeros(12)
        expected[d] = 1
        expected[10 + d % 2] = 1
        torch.testing.assert_close(space.table[d], expected)
    torch.testing.assert_close(space.table[10], torch.eye(12)[10])  # the coarse-only rows
    assert LabelSpace.from_record(space.to_record()).to_record() == space.to_record()
    with pytest.raises(ConfigError, match="digits 0..9"):
        create_label_space("parity", ["cat", "dog"])
    with pytest.raises(ConfigError, match="needs a dataset with a 'coarse' labelling"):
        create_label_space("coarse", DIGITS)
    with pytest.raises(UnknownNameError, match="valid choices: coarse, onehot, parity, smooth"):
        create_label_space("hierarchy", DIGITS)


def test_label_space_loss_is_the_sum_of_group_cross_entropies():
    space = create_label_space("parity", DIGITS)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 12, generator=g, dtype=torch.float64, requires_grad=True)
    rows = torch.arange(12)
    target = space.table.double()[rows]
    ref = 0.0
    for i, r in enumerate(rows.tolist()):  # reference: per-example group cross-entropies
        t = target[i]
        if t[:10].sum() > 0:
            ref = ref + F.cross_entropy(logits[i:i + 1, :10], t[:10].argmax().view(1))
        ref = ref + F.cross_entropy(logits[i:i + 1, 10:], t[10:].argmax().view(1))
    ref = ref / len(rows)
    torch.testing.assert_close(space.loss(logits, target), ref)
    # the engine's single-softmax loss on group log-probabilities differs by a constant only
    wrapped = space.wrap_forward(lambda params, x: x)
    engine = inner_loss(wrapped(None, logits), target)
    shift = target.sum(1).mean() * torch.log(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(engine, ref + shift)
    g1 = torch.autograd.grad(engine, logits)[0]
    g2 = torch.autograd.grad(space.loss(logits, target), logits)[0]
    torch.testing.assert_close(g1, g2)
    # evaluation on the original classes: argmax over the class group
    assert space.class_predictions(torch.eye(12)[[3, 11]] * 5).tolist() == [3, 0]


def test_parity_memory_file_records_its_label_space(tmp_path):
    mem_file = _memory_file(tmp_path, "bases", "parity")
    space = label_space_of(mem_file)
    assert space.name == "parity" and mem_file.num_classes == 12
    # a class query is the class's target row: digit + parity
    torch.testing.assert_close(class_query(mem_file, "3"), space.table[3])
    torch.testing.assert_close(parse_query(mem_file, "even"), torch.eye(12)[10])
    x3 = recall_query(mem_file, class_query(mem_file, "3"))
    xd = recall_query(mem_file, torch.eye(12)[3]) + recall_query(mem_file, torch.eye(12)[11])
    torch.testing.assert_close(x3, xd, rtol=1e-4, atol=1e-5)
    onehot = _memory_file(tmp_path, "bases", "onehot")
    assert label_space_of(onehot).name == "onehot"


# --------------------------------------------------------------------- pictures
def test_show_renders_queries_and_interpolations(tmp_path, capsys):
    mem_file = _memory_file(tmp_path, "bases")
    f = str(mem_file.path)
    out_q, out_i = tmp_path / "q.png", tmp_path / "i.png"
    assert main(["show", f, "--query", "3", "--query", "3:0.5,8:0.5", "--query", "group:0,2",
                 "--png", str(out_q)]) == 0
    assert main(["show", f, "--interpolate", "3", "8", "--steps", "5", "--png", str(out_i)]) == 0
    for p in (out_q, out_i):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["show", f, "--query", "eleven", "--png", str(tmp_path / "x.png")]) == 2
    assert "unknown class 'eleven'" in capsys.readouterr().err
    assert main(["show", f, "--query", "3", "--interpolate", "3", "8"]) == 2
    assert not (tmp_path / "x.png").exists()
