"""The model pool: unrolls from a member's state against the float64 full graph,
lifetimes, resume with a pool, bad settings."""

from __future__ import annotations

import json

import pytest
import torch

from memdistill.config import DistillConfig, resolve
from memdistill.distill import Distiller
from memdistill.distill.pool import Member, ModelPool
from memdistill.engine import create_inner_optimizer, meta_gradient
from memdistill.errors import ConfigError

from test_distill import _tiny as distill_tiny
from test_engine import _problem, _rel_err

POOL = {"outer.pool_size": 3, "outer.pool_unroll": 2, "outer.pool_max_steps": 5}


def _tiny(**over) -> DistillConfig:
    """test_distill's tiny run with a pool of 3 and 6 outer iterations."""
    return distill_tiny(**{"outer.iterations": 6, **POOL, **over}).validate()


@pytest.fixture(scope="module")
def small_train(mnist_train):
    g = torch.Generator().manual_seed(0)
    return mnist_train.subset(torch.randperm(len(mnist_train), generator=g)[:2000])


@pytest.mark.parametrize("kind", ["images", "bases"])
def test_unroll_from_a_members_state_equals_the_float64_full_graph(kind):
    """A member mid-training (momentum buffers and step counter set): the checkpointed
    meta-gradient of W steps from its state equals plain autograd from that state."""
    optimizer = create_inner_optimizer("sgd", lr=0.05, momentum=0.9)
    mem, recall, forward, init, optimizer, plans, outer = _problem(kind, optimizer, steps=7)
    warm = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans[:4], outer)
    params, state = warm.final
    assert float(state[-1]) == 4 and any(float(b.abs().sum()) > 0 for b in state[:-1])
    full = meta_gradient(mem.parameters(), recall, forward, params, optimizer, plans[4:], outer, mode="full",
                         init_state=state)
    ckpt = meta_gradient(mem.parameters(), recall, forward, params, optimizer, plans[4:], outer, init_state=state)
    assert _rel_err(ckpt.grads, full.grads) < 1e-8 and all(float(g.abs().sum()) > 0 for g in full.grads)
    # continuing from the member is the same training as one unroll of all 7 steps
    whole = meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer)
    assert float(ckpt.loss) == pytest.approx(float(whole.loss), rel=1e-10)
    for a, b in zip(ckpt.final[0] + ckpt.final[1], whole.final[0] + whole.final[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # ...but its meta-gradient reaches only the last 3 steps: not the whole unroll's
    assert _rel_err(ckpt.grads, whole.grads) > 1e-3


def test_a_wrong_optimiser_state_is_refused():
    optimizer = create_inner_optimizer("sgd", lr=0.05, momentum=0.9)
    mem, recall, forward, init, optimizer, plans, outer = _problem("bases", optimizer, steps=2)
    with pytest.raises(ConfigError, match="init_state has 1 tensors"):
        meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, init_state=(init[0],))


def test_members_restart_exactly_when_their_lifetime_is_done():
    draws = []

    def new_member(index, generation):
        draws.append((index, generation))
        return (torch.zeros(2),), ()

    pool = ModelPool(size=2, unroll=3, max_steps=7)
    # first generation staggered: ceil(7 * 1 / 2) = 4 and 7 steps; later ones 7
    assert [pool.lifetime(0, 0), pool.lifetime(1, 0), pool.lifetime(0, 1), pool.lifetime(1, 5)] == [4, 7, 7, 7]
    history = []
    for it in range(12):
        i = pool.index(it, 0, 1)
        m = pool.take(i, new_member)
        history.append((i, m.generation, m.steps))
        pool.advance(i, m.params, m.state)
    member0 = [(g, s) for i, g, s in history if i == 0]
    # member 0 lives 4 steps (unrolls start at 0, 3), then 7 (0, 3, 6)
    assert member0 == [(0, 0), (0, 3), (1, 0), (1, 3), (1, 6), (2, 0)]
    member1 = [(g, s) for i, g, s in history if i == 1]
    assert member1 == [(0, 0), (0, 3), (0, 6), (1, 0), (1, 3), (1, 6)]
    assert draws == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
    # a member whose unroll ended non-finite restarts at its next use
    m = pool.take(0, new_member)
    assert (m.generation, m.steps) == (2, 3)
    pool.advance(0, (torch.tensor([float("nan"), 0.0]),), ())
    assert pool.members[0] is None and pool.take(0, new_member).generation == 3


def test_members_advance_and_restart_in_a_run(small_train):
    res = Distiller(_tiny(**{"outer.iterations": 9}), small_train).run()
    starts = [r["pool_steps"][0] for r in res.history]
    # members 0, 1, 2 in turn; lifetimes 2, 4, 5 then 5: unrolls start at these steps
    assert starts == [0, 0, 0, 0, 2, 2, 2, 0, 4]


def test_resume_with_a_pool_is_bit_identical(small_train, tmp_path):
    full = Distiller(_tiny(), small_train).run(metrics=tmp_path / "a.jsonl")
    ckpt, met = tmp_path / "b.ckpt", tmp_path / "b.jsonl"
    first = Distiller(_tiny(), small_train).run(checkpoint=ckpt, metrics=met, stop_after=4)
    assert first.iterations == 4
    second = Distiller(_tiny(), small_train).run(checkpoint=ckpt, metrics=met, resume=True)
    assert second.iterations == 6
    for k in full.memory.tensors:
        assert torch.equal(full.memory.tensors[k], second.memory.tensors[k]), k
    a = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in met.read_text().splitlines()]
    assert [r["loss"] for r in a] == [r["loss"] for r in b] and [r["pool_steps"] for r in a] == [
        r["pool_steps"] for r in b]
    # the checkpoint holds this pool: another pool size is refused
    with pytest.raises(ConfigError, match="outer.pool_size"):
        Distiller(_tiny(**{"outer.pool_size": 4}), small_train).run(checkpoint=ckpt, resume=True)


def test_meta_batch_takes_one_member_per_unroll(small_train):
    res = Distiller(_tiny(**{"outer.meta_batch": 2, "outer.pool_size": 4, "outer.iterations": 3}), small_train).run()
    # unrolls take members (0, 1), (2, 3), (0, 1); at the third step member 0 has lived
    # its first lifetime (ceil(5 / 4) = 2 steps) and restarts, member 1 (3 steps) has not
    assert [r["pool_steps"] for r in res.history] == [[0, 0], [0, 0], [0, 2]]


def test_a_pool_member_gives_the_same_step_as_a_fresh_network_on_the_same_draw(small_train):
    """At a member's first use the pool unroll is the fresh-network unroll of the same
    length from the member's initial draw (same plans, same real batch)."""
    d = Distiller(_tiny(**{"outer.pool_unroll": 3}), small_train)
    mem = d.new_memory()
    params, state = d.new_member(0, 0)
    fresh_like = d.meta_step(mem, 0, member=Member(params, state))
    again = d.meta_step(mem, 0, member=Member(params, state))
    assert fresh_like.loss == again.loss and all(torch.equal(a, b) for a, b in zip(fresh_like.grads, again.grads))
    assert len(fresh_like.inner_losses) == 3 and fresh_like.final is not None


@pytest.mark.parametrize("sets, message", [
    ({"outer.pool_size": -1}, r"outer.pool_size must be >= 0"),
    ({"outer.pool_unroll": 0}, r"outer.pool_unroll must be in \[1, outer.pool_max_steps=5\]"),
    ({"outer.pool_unroll": 6}, r"outer.pool_unroll must be in \[1, outer.pool_max_steps=5\]"),
    ({"outer.pool_max_steps": 0}, r"outer.pool_max_steps must be >= 1"),
    ({"outer.meta_batch": 4}, r"outer.pool_size \(3\) must be >= outer.meta_batch \(4\)"),
    ({"outer.window": 2}, r"set outer.window=0"),
])
def test_bad_pool_settings_are_refused_with_the_valid_range(sets, message):
    with pytest.raises(ConfigError, match=message):
        _tiny(**sets)
    with pytest.raises(ConfigError, match=message):
        resolve("cpu-quick", "mnist", 1, sets=[(k, str(v)) for k, v in {**POOL, **sets}.items()])


@pytest.mark.slow
def test_the_pool_beats_fresh_unrolls_of_the_same_cost_on_real_mnist(mnist_train):
    """Equal cost per outer step (10 inner steps each, same outer rate and iterations):
    the pool's memory trains a better network (validation split) than fresh-network
    unrolls, which teach the memory only the first 10 steps of training. Measured on
    this machine kind (2026-11-30, the 1-channel ConvNet with first_pad=1, as here), seeds
    1 and 2: pool - fresh 3.7 and 3.9 points, pool - starting point 1.9 and 2.9; the test
    asks for 1.5 and > 0 at seed 1."""
    common = {"seed": 1, "outer.iterations": 25, "outer.lr": 0.003, "inner.steps": 10, "evaluation.every": 0,
              "inner.first_pad": 1, "evaluation.first_pad": 1}
    acc = {}
    for name, extra in [("fresh", {"evaluation.at_start": True, "outer.pool_size": 0}),
                        ("pool", {"outer.pool_size": 4, "outer.pool_unroll": 10, "outer.pool_max_steps": 100,
                                  "evaluation.at_start": False})]:
        res = Distiller(resolve("cpu-quick", "mnist", 1, flags={**common, **extra}), mnist_train).run()
        acc[name] = res.last_eval["mean"]
        acc.setdefault("start", res.start_eval and res.start_eval["mean"])
    assert acc["pool"] > acc["start"] and acc["pool"] - acc["fresh"] > 0.015, acc
