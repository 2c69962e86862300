"""Sparse checkpointing of the reverse pass against the full-graph unroll in float64, its
cost and memory against the schedule's own accounting, and the unroll's host reads."""

from __future__ import annotations

import math
import weakref

import pytest
import torch
from test_engine import OPTIMIZERS, _problem, _rel_err

import memdistill.engine.unroll as unroll
from memdistill.config import resolve
from memdistill.distill.step import checkpoint_schedule
from memdistill.engine import Checkpoints, ClassSplit, create_inner_optimizer, meta_gradient
from memdistill.engine.schedule import _recompute_table
from memdistill.errors import ConfigError

T = 7  # not divisible by 2, 3, 4 or 5
SCHEDULES = {
    "dense": Checkpoints(),
    "every2": Checkpoints(every=2),
    "every3": Checkpoints(every=3),
    "every7": Checkpoints(every=7),  # k = T: one segment
    "every10": Checkpoints(every=10),  # k > T
    "auto": Checkpoints(every="auto"),
    "binomial1": Checkpoints(max_states=1),  # only the start is kept: quadratic recomputation
    "binomial2": Checkpoints(max_states=2),
    "binomial3": Checkpoints(max_states=3),
    "budget_tiny": Checkpoints(memory_mb=1e-6),  # less than one state: one state kept
}


def _optimizer(opt):
    kw = dict(OPTIMIZERS[opt])
    return create_inner_optimizer(kw.pop("name"), **kw)


def _same(a, b):
    """Bit-for-bit the same result: a recomputed step replays its inputs exactly."""
    assert torch.equal(a.loss, b.loss) and torch.equal(a.inner_losses, b.inner_losses)
    assert all(torch.equal(x, y) for x, y in zip(a.grads, b.grads))
    assert all(torch.equal(x, y) for x, y in zip(a.final[0] + a.final[1], b.final[0] + b.final[1]))


@pytest.mark.parametrize("kind", ["images", "bases"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_every_schedule_equals_the_full_graph_float64(kind, opt):
    mem, recall, forward, init, optimizer, plans, outer = _problem(kind, _optimizer(opt), steps=T)
    args = (mem.parameters(), recall, forward, init, optimizer, plans, outer)
    full = meta_gradient(*args, mode="full")
    dense = meta_gradient(*args)
    assert _rel_err(dense.grads, full.grads) < 1e-8 and all(float(g.abs().sum()) > 0 for g in full.grads)
    torch.testing.assert_close(dense.inner_losses, full.inner_losses, rtol=1e-12, atol=0)
    for name, schedule in SCHEDULES.items():
        _same(meta_gradient(*args, checkpoints=schedule), dense)


@pytest.mark.parametrize("kind", ["images", "bases"])
def test_schedules_with_augmentation_labels_and_window_equal_the_full_graph(kind):
    optimizer = create_inner_optimizer("sgd", lr=0.05, momentum=0.9)
    prob = _problem(kind, optimizer, learned_labels=True, augment="flip_rotate", steps=T, budget=3)
    mem, recall, forward, init, optimizer, plans, outer = prob
    args = (mem.parameters(), recall, forward, init, optimizer, plans, outer)
    for window in (None, 5, 1):
        full = meta_gradient(*args, mode="full", window=window)
        for schedule in SCHEDULES.values():
            ckpt = meta_gradient(*args, window=window, checkpoints=schedule)
            assert _rel_err(ckpt.grads, full.grads) < 1e-8
            torch.testing.assert_close(ckpt.inner_losses, full.inner_losses, rtol=1e-12, atol=0)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_schedules_of_a_split_unroll_equal_the_plain_one(opt):
    mem, recall, forward, init, optimizer, plans, outer = _problem("bases", _optimizer(opt), steps=T)
    args = (mem.parameters(), recall, forward, init, optimizer, plans, outer)
    plain = meta_gradient(*args, window=6)
    one = ClassSplit(reduce=lambda ts: list(ts))
    for schedule in SCHEDULES.values():
        split = meta_gradient(*args, window=6, split=one, checkpoints=schedule)
        assert _rel_err(split.grads, plain.grads) < 1e-10
        torch.testing.assert_close(split.inner_losses, plain.inner_losses, rtol=1e-12, atol=0)


def _count_steps_and_states(monkeypatch, checkpoints, steps, window=None):
    """Run an unroll counting its no-graph forward steps and the most packed states alive."""
    mem, recall, forward, init, optimizer, plans, outer = _problem("images", _optimizer("sgd_momentum"), steps=steps)
    counts = {"forward": 0, "alive": 0, "peak": 0}

    def counting_recall(values, plan):
        if not values[0].requires_grad:  # the frozen memory: a step without a graph
            counts["forward"] += 1
        return recall(values, plan)

    real_pack = unroll._pack

    def pack(ts):
        buf = real_pack(ts)
        counts["alive"] += 1
        counts["peak"] = max(counts["peak"], counts["alive"])
        weakref.finalize(buf, lambda: counts.__setitem__("alive", counts["alive"] - 1))
        return buf

    monkeypatch.setattr(unroll, "_pack", pack)
    meta_gradient(mem.parameters(), counting_recall, forward, init, optimizer, plans, outer, window=window,
                  checkpoints=checkpoints)
    return counts["forward"], counts["peak"]


@pytest.mark.parametrize("W,k", [(12, 1), (12, 3), (12, 5), (12, 12), (12, 40), (13, "auto")])
def test_segments_recompute_each_state_once_and_keep_what_they_promise(monkeypatch, W, k):
    forward, peak = _count_steps_and_states(monkeypatch, Checkpoints(every=k), W)
    k = math.ceil(math.sqrt(W)) if k == "auto" else min(k, W)
    segments = math.ceil(W / k)
    # first pass: W steps; then every segment but the last recomputes its k - 1 states once
    assert forward == W + (segments - 1) * (k - 1)
    assert peak <= segments + k - 1 if k > 1 else peak == W - 1  # dense: every state but the last


@pytest.mark.parametrize("W,n", [(12, 1), (12, 2), (12, 3), (20, 4), (20, 19), (20, 25)])
def test_the_binomial_schedule_holds_n_states_at_the_fewest_recomputed_steps(monkeypatch, W, n):
    forward, peak = _count_steps_and_states(monkeypatch, Checkpoints(max_states=n), W, window=W - 2)
    assert peak <= min(n, W - 2)
    m = min(n, W - 2)
    cost = 0 if m >= W - 2 - 1 else int(_recompute_table(W - 2, m - 1)[0][m - 1, W - 2])
    expected = 2 + (W - 2 if m >= W - 3 else cost + 1)  # 2 steps before the window; last step once more
    assert forward == expected
    if n == 1:  # nothing kept but the start: step j of the window is recomputed j times
        assert forward == 2 + (W - 2) * (W - 3) // 2 + 1


def test_the_recomputation_table_is_optimal_on_small_cases():
    """The vectorised table against a plain recursive search over every split, and a case
    worked by hand: 6 steps, one free state: keep position 3 (3 steps), reverse 5, 4, 3
    from it (2 + 1 steps), then 2, 1, 0 keeping 1 (1 + 1 steps): 8."""
    cost, _ = _recompute_table(14, 4)
    best: dict[tuple[int, int], int] = {}

    def search(length, free):
        if length == 1:
            return 0
        if free == 0:
            return length * (length - 1) // 2
        if (length, free) not in best:
            best[length, free] = min(m + search(length - m, free - 1) + search(m, free) for m in range(1, length))
        return best[length, free]

    for free in range(5):
        for length in range(1, 15):
            assert cost[free, length] == search(length, free)
    assert cost[1, 6] == 8 and cost[4, 14] < cost[1, 14] < cost[0, 14] == 91


def test_the_unroll_does_not_read_values_back_to_the_host(monkeypatch):
    """No ``float(loss)`` / ``.item()`` per inner step: the losses stay tensors."""
    mem, recall, forward, init, optimizer, plans, outer = _problem("bases", _optimizer("adam"), steps=5)
    args = (mem.parameters(), recall, forward, init, optimizer, plans, outer)
    reads = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _n=name, _r=real: reads.append(_n) or _r(self, *a))
    float(torch.ones(()))
    assert reads == ["__float__"]  # the counter sees a read
    reads.clear()
    results = [meta_gradient(*args, mode="full"), meta_gradient(*args),
               meta_gradient(*args, checkpoints=Checkpoints(every=2)),
               meta_gradient(*args, split=ClassSplit(reduce=lambda ts: list(ts)))]
    assert reads == []
    monkeypatch.undo()
    for res in results:
        assert isinstance(res.inner_losses, torch.Tensor) and res.inner_losses.shape == (5,)
        assert res.inner_losses.dtype == torch.float64 and not res.inner_losses.requires_grad


def test_bad_schedules_are_refused_with_what_is_valid():
    with pytest.raises(ConfigError, match="int >= 1 or 'auto'"):
        Checkpoints(every=0)
    with pytest.raises(ConfigError, match="not both"):
        Checkpoints(max_states=3, memory_mb=10)
    with pytest.raises(ConfigError, match="max_states must be >= 1"):
        Checkpoints(max_states=0)
    with pytest.raises(ConfigError, match="leave every at 1"):
        Checkpoints(every=3, max_states=3)
    mem, recall, forward, init, optimizer, plans, outer = _problem("images", _optimizer("sgd"), steps=3)
    with pytest.raises(ConfigError, match="needs mode 'checkpointed'"):
        meta_gradient(mem.parameters(), recall, forward, init, optimizer, plans, outer, mode="full",
                      checkpoints=Checkpoints(every=2))


def test_the_config_chooses_the_schedule():
    def cfg(**sets):
        return resolve("cpu-quick", "mnist", flags=sets)

    assert checkpoint_schedule(cfg()) == Checkpoints()
    assert checkpoint_schedule(cfg(**{"outer.checkpoint_segment": 0})) == Checkpoints(every="auto")
    assert checkpoint_schedule(cfg(**{"outer.checkpoint_segment": 5})) == Checkpoints(every=5)
    assert checkpoint_schedule(cfg(**{"outer.checkpoint_memory_mb": 64})) == Checkpoints(memory_mb=64.0)
    with pytest.raises(ConfigError, match="not both"):
        cfg(**{"outer.checkpoint_memory_mb": 64, "outer.checkpoint_segment": 3})
    with pytest.raises(ConfigError, match="outer.checkpoint_segment must be >= 1"):
        cfg(**{"outer.checkpoint_segment": -1})
    with pytest.raises(ConfigError, match="need outer.unroll=checkpointed"):
        cfg(**{"outer.checkpoint_segment": 3, "outer.unroll": "full"})
