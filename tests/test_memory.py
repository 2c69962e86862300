"""Memory types: budget arithmetic, recall, queries, contract checks for every type."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memdistill.errors import ConfigError
from memdistill.memory import create_memory, list_memories, solve_slots, stored_float_budget


@pytest.mark.parametrize(
    "shape, classes, expected",
    [((1, 28, 28), 10, 29), ((3, 32, 32), 10, 115), ((3, 32, 32), 100, 184), ((3, 64, 64), 200, 752)],
)
def test_worked_budget_examples_from_method(shape, classes, expected):
    assert solve_slots(1, shape, classes, num_bases=16, downsample=2) == expected


def test_cifar10_budget_uses_30688_of_30720_floats():
    r = solve_slots(1, (3, 32, 32), 10, 16, 2)
    assert 16 * 3 * 16 * 16 + r * 16 * 10 == 30688 and stored_float_budget(1, (3, 32, 32), 10) == 30720


@settings(max_examples=200, deadline=None)
@given(
    ipc=st.integers(1, 50),
    c=st.sampled_from([1, 3]),
    hw=st.sampled_from([8, 16, 28, 32]),
    classes=st.integers(2, 100),
    k=st.integers(1, 64),
    ds=st.sampled_from([1, 2, 4]),
    labels=st.booleans(),
)
def test_stored_floats_never_exceed_the_budget(ipc, c, hw, classes, k, ds, labels):
    budget = stored_float_budget(ipc, (c, hw, hw), classes)
    try:
        r = solve_slots(ipc, (c, hw, hw), classes, k, ds, labels)
    except ConfigError as exc:
        assert "minimum" in str(exc)
        assert k * c * (hw // ds) ** 2 + k * classes + (classes**2 if labels else 0) > budget
        return
    per_slot = k * classes + (classes * classes if labels else 0)
    used = k * c * (hw // ds) ** 2 + r * per_slot
    assert used <= budget < used + per_slot  # r is the largest that fits


def test_budget_too_small_states_the_minimum():
    with pytest.raises(ConfigError, match=r"minimum is \d+ floats"):
        solve_slots(0.01, (1, 28, 28), 10, 16, 2)
    with pytest.raises(ConfigError, match="minimum"):
        create_memory("images", (1, 28, 28), 10, 1, generator=torch.Generator(), init="random",
                      learned_labels=True)


def _memory(kind, **kw):
    opts = dict(num_bases=4, downsample=2) if kind == "bases" else {}
    opts.update(kw)
    return create_memory(kind, (1, 8, 8), 4, 3, generator=torch.Generator().manual_seed(0), init="random", **opts)


@pytest.mark.parametrize("kind", list_memories())
class TestMemoryContract:
    """Every registered memory type inherits these checks."""

    def test_floats_within_budget_and_report(self, kind):
        m = _memory(kind)
        assert m.floats_stored() <= stored_float_budget(3, (1, 8, 8), 4)
        rep = m.report(train_size=1000)
        assert rep.examples == m.slots * 4 and rep.bytes_on_disk == 4 * rep.floats_stored
        assert rep.compression_ratio == pytest.approx(1000 * 64 / rep.bytes_on_disk)

    def test_recall_shapes_and_one_hot_query(self, kind):
        m = _memory(kind)
        x, y = m.recall()
        assert x.shape == (4 * m.slots, 1, 8, 8) and y.tolist() == sorted(list(range(4)) * m.slots)
        xs, _ = m.recall(classes=[2])
        xq, yq = m.recall(query=torch.eye(4)[2])
        torch.testing.assert_close(xq, xs)
        assert torch.equal(yq, torch.eye(4)[2].repeat(m.slots, 1))

    @settings(max_examples=25, deadline=None)
    @given(a=st.floats(-3, 3), b=st.floats(-3, 3), seed=st.integers(0, 1000))
    def test_recall_is_linear_in_the_query(self, kind, a, b, seed):
        m = _memory(kind)
        g = torch.Generator().manual_seed(seed)
        q1, q2 = torch.randn(4, generator=g), torch.randn(4, generator=g)
        lhs = m.recall(query=a * q1 + b * q2)[0]
        rhs = a * m.recall(query=q1)[0] + b * m.recall(query=q2)[0]
        torch.testing.assert_close(lhs, rhs, rtol=1e-4, atol=1e-4)

    def test_bad_queries_are_refused(self, kind):
        m = _memory(kind)
        with pytest.raises(ConfigError, match=r"shape \(4,\)"):
            m.recall(query=torch.ones(5))
        with pytest.raises(ConfigError, match="NaN"):
            m.recall(query=torch.tensor([1.0, float("nan"), 0.0, 0.0]))
        with pytest.raises(ConfigError, match="classes must be in"):
            m.recall(classes=[7])

    def test_gradient_reaches_every_tensor(self, kind):
        m = _memory(kind, learned_labels=True) if kind == "bases" else _memory(kind)
        values = tuple(t.clone().requires_grad_() for t in m.parameters())
        x, y = m.recall_from(m.as_dict(values), torch.tensor([0, 1, 3]), torch.tensor([0, 1, 0]))
        (x.pow(2).sum() + (y.float().pow(2).sum() if y.is_floating_point() else 0)).backward()
        for name, v in zip(m.names, values):
            assert v.grad is not None and torch.isfinite(v.grad).all(), name


def test_bases_memory_init_from_real_reconstructs_images(mnist_train):
    g = torch.Generator().manual_seed(0)
    m = create_memory("bases", (1, 28, 28), 10, 1, generator=g, real=mnist_train, num_bases=16, downsample=2)
    assert m.slots == 29 and m.tensors["bases"].shape == (16, 1, 14, 14)
    assert m.tensors["addressing"].shape == (29, 10, 16)
    x, _ = m.recall()
    real_energy = float(mnist_train.batch(torch.arange(500))[0].pow(2).mean())
    # least-squares projections keep most of the signal of real images
    assert 0.3 * real_energy < float(x.pow(2).mean()) <= 1.05 * real_energy


def test_unknown_memory_and_option():
    with pytest.raises(ConfigError, match="valid choices: bases, images"):
        create_memory("hallucinator", (1, 8, 8), 4, 1, generator=torch.Generator())
    with pytest.raises(ConfigError, match="memory type 'images'"):
        create_memory("images", (1, 8, 8), 4, 1, generator=torch.Generator(), num_bases=3)


@pytest.mark.parametrize("kind", ["images", "bases"])
def test_init_from_real_is_the_real_start_and_mixes_classes_linearly(kind):
    """``init="real"`` is ``init_from_real``; with a ``mix`` ``(L, C)`` the memory's row
    ``l`` recalls ``sum_c mix[l, c]`` times class ``c``'s real start."""

    class Real:  # 4 classes of 8x8 images, already normalised
        num_classes, classes, image_shape = 4, ("a", "b", "c", "d"), (1, 8, 8)
        x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(2))
        labels = torch.arange(4).repeat_interleave(10)

        def indices_of_class(self, c):
            return torch.nonzero(self.labels == c).flatten()

        def batch(self, idx):
            return self.x[idx], self.labels[idx]

    opts = {"num_bases": 3, "downsample": 2} if kind == "bases" else {}
    real = create_memory(kind, (1, 8, 8), 4, 2, generator=torch.Generator().manual_seed(0), real=Real(), **opts)
    again = create_memory(kind, (1, 8, 8), 4, 2, generator=torch.Generator().manual_seed(0), init="random", **opts)
    again.init_from_real(Real(), torch.Generator().manual_seed(0))
    for k in real.tensors:
        assert torch.equal(real.tensors[k], again.tensors[k]), k
    mix = torch.tensor([[0, 1.0, 0, 0], [1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 2, -1]], dtype=torch.float64)
    mixed = create_memory(kind, (1, 8, 8), 4, 2, generator=torch.Generator().manual_seed(0), init="random", **opts)
    mixed.init_from_real(Real(), torch.Generator().manual_seed(0), mix=mix)
    x_mixed = mixed.query_from(mixed.tensors, torch.eye(4))  # (4, r, 1, 8, 8): row l of the mixed memory
    x_real = real.query_from(real.tensors, mix.float())  # the same mixtures of the one-hot real start
    assert torch.allclose(x_mixed, x_real, atol=1e-5)
    assert not torch.allclose(x_mixed, real.query_from(real.tensors, torch.eye(4)), atol=1e-2)
