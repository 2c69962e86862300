"""The ``shared`` continual strategy (one bases memory for the stream), the fixed-total
budget mode with exemplar eviction, and ``--init-from-previous``'s re-solved addressing."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from memdistill.continual import (
    LearnerConfig,
    StrategyOptions,
    create_benchmark,
    create_strategy,
    run_continual,
    shared_sizes,
)
from memdistill.continual import shared as shared_mod
from memdistill.continual.shared import evict_slots, grow_memory, ragged_sizes, replay_class_weight, resize_slots
from memdistill.continual.strategies import exemplar_quotas, local_view, refit_generator
from memdistill.distill import Distiller
from memdistill.errors import ConfigError, TaskDataRevokedError, UnknownNameError
from memdistill.evaluate import select_subset
from memdistill.memory import BasesMemory, load_memory, solve_addressing
from memdistill.memory.types import real_per_class
from test_continual import TINY_DISTILL, _synthetic_benchmark


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recall_error(memory_tensors, targets, memory):
    """Squared error of slot ``i`` of class ``c`` against ``targets[c, i]``."""
    L, r = targets.shape[:2]
    cls, slots = torch.arange(L).repeat_interleave(r), torch.arange(r).repeat(L)
    x, _ = memory.recall_from(memory_tensors, cls, slots)
    return float((x.double() - targets.flatten(0, 1).double()).pow(2).sum())


# ------------------------------------------------------- init from previous
def test_init_from_previous_re_solves_the_addressing_against_the_swapped_bases():
    """The starting point of task 2 keeps task 1's bases and its addressing is the
    least-squares solution against them: its recall of the task's real images is the
    best these bases give, far better than the addressing fitted to other bases."""
    b = _synthetic_benchmark()
    frozen = {**TINY_DISTILL, "outer.iterations": 0}
    strat = create_strategy("memories", budget_ipc=2, distill_overrides=frozen, init_from_previous=True)
    for task in b.stream():
        if task.index == 0:
            strat.learn_task(0, task.classes, task.train)
            continue
        local = local_view(task.train, task.classes)
        cfg = strat.task_config(1, local.name, local.image_shape, local.num_classes)
        start = strat._initial_memory(cfg, local)
        distiller = Distiller(cfg, local)
        own = distiller.new_memory()  # the task's own start: its bases and the addressing fitted to them
    prev_bases = strat.memories[0][1].tensors["bases"]
    assert torch.equal(start.tensors["bases"], prev_bases)
    targets = real_per_class(distiller.train, start.slots, refit_generator(cfg.seed))
    expected = solve_addressing(prev_bases, targets).float()
    assert torch.allclose(start.tensors["addressing"], expected, atol=1e-5)
    # against the same real images, the mismatched addressing (fitted to the task's own
    # bases, then swapped onto the previous bases) recalls worse (here the images' own
    # noise, which no 8 bases hold, is most of either error: 16.5k vs 20.8k)
    mismatched = {"bases": prev_bases, "addressing": own.tensors["addressing"].detach()}
    refit = _recall_error(start.tensors, targets, start)
    assert refit < 0.9 * _recall_error(mismatched, targets, start)
    # and it is a least-squares optimum: perturbing the addressing only adds error
    g = torch.Generator().manual_seed(1)
    nudged = {**start.tensors, "addressing": start.tensors["addressing"]
              + 0.01 * torch.randn(start.tensors["addressing"].shape, generator=g)}
    assert refit < _recall_error(nudged, targets, start)


def test_solve_addressing_matches_lstsq_on_upsampled_bases():
    g = torch.Generator().manual_seed(0)
    bases, targets = torch.randn(5, 1, 4, 4, generator=g), torch.randn(3, 2, 1, 8, 8, generator=g)
    a = solve_addressing(bases, targets)  # (r, L, K)
    assert a.shape == (2, 3, 5)
    up = F.interpolate(bases.double(), size=(8, 8), mode="bilinear", align_corners=False).flatten(1)
    for c in range(3):
        for i in range(2):
            ref = torch.linalg.lstsq(up.T, targets[c, i].double().flatten()[:, None]).solution.flatten()
            assert torch.allclose(a[i, c], ref, atol=1e-8)


# ------------------------------------------------------------------ sizes
def test_shared_sizes_per_class_and_fixed_total():
    per = StrategyOptions(budget_ipc=1)
    sizes = [shared_sizes(per, (1, 28, 28), n, 10) for n in (2, 4, 6, 8, 10)]
    assert sizes == [(4, 98), (8, 49), (12, 32), (16, 24), (16, 29)]  # = a memories task memory at 2 classes
    total = StrategyOptions(budget_ipc=1, budget_mode="total")
    sizes = [shared_sizes(total, (1, 28, 28), n, 10) for n in (2, 4, 6, 8, 10)]
    assert [k for k, _ in sizes] == [4, 7, 10, 13, 16]  # the classes' share of the final K = 16
    for n, (k, r) in zip((2, 4, 6, 8, 10), sizes):
        floats = k * 196 + r * k * n
        assert floats <= 7840 and 7840 - floats < k * n  # the most slots the total holds
    with pytest.raises(ConfigError, match=r"cannot hold 1 base.*one addressing slot for each of 10 classes.*"
                                          r"the minimum is 206 floats \(--budget-total 206"):
        shared_sizes(StrategyOptions(budget_mode="total", budget_total=200), (1, 28, 28), 10, 10)


def test_exemplar_quotas_only_shrink_as_classes_arrive():
    opts = StrategyOptions(budget_ipc=1.5, budget_mode="total")  # 15 images for 10 classes
    quotas = [exemplar_quotas(opts, (1, 28, 28), n, 10) for n in (2, 4, 6, 8, 10)]
    assert quotas[0] == [8, 7] and quotas[1] == [4, 4, 4, 3] and quotas[-1] == [2] * 5 + [1] * 5
    for before, after in zip(quotas, quotas[1:]):
        assert sum(after) == 15 and all(a <= b for a, b in zip(after, before))
    assert exemplar_quotas(StrategyOptions(budget_ipc=3.7), (1, 28, 28), 4, 10) == [3] * 4


def test_herding_evicts_the_tail_of_each_class_selection():
    b = _synthetic_benchmark(classes=6, tasks=3)
    strat = create_strategy("herding", budget_ipc=1, budget_mode="total")
    strat.begin(b)
    first = None
    for task in b.stream():
        strat.learn_task(task.index, task.classes, task.train)
        if task.index == 0:
            local = local_view(task.train, task.classes)
            first = task.train.images[select_subset(local, 3, "herding", seed=0)].clone()
        counts = [len(strat.kept[c]) for c in range(b.classes_seen(task.index))]
        assert counts == [[3, 3], [2, 2, 1, 1], [1] * 6][task.index]  # 6 images: an even share, evicting
        assert strat.floats_stored() <= strat.budget_floats(b.classes_seen(task.index)) == 6 * 256
    # class 0 kept the first of its 3 herding picks of task 1 (herding's choice of one)
    assert torch.equal(strat.kept[0], first[:1])
    assert [len(strat.kept[c]) for c in range(6)] == [1] * 6


# ------------------------------------------------------------ growing the memory
def test_grow_memory_keeps_earlier_recalls_and_fits_new_rows_by_least_squares():
    b = _synthetic_benchmark(classes=4, tasks=2)
    g = torch.Generator().manual_seed(0)
    stream = b.stream()
    tasks = iter(stream)
    t0 = next(tasks)
    first = grow_memory(None, local_view(t0.train, t0.classes), 3, 5, 2, g)
    assert first.tensors["bases"].shape == (3, 1, 8, 8) and first.tensors["addressing"].shape == (5, 2, 3)
    t1 = next(tasks)
    local = local_view(t1.train, t1.classes)
    g1 = torch.Generator().manual_seed(1)
    grown = grow_memory(first, local, 6, 5, 2, g1)
    assert grown.num_classes == 4 and grown.tensors["bases"].shape[0] == 6
    assert torch.equal(grown.tensors["bases"][:3], first.tensors["bases"])
    # earlier classes recall exactly what they did (zero weight on the new bases)
    assert torch.allclose(grown.recall(classes=[0, 1])[0], first.recall()[0], atol=1e-5)
    # the new bases lie outside the span of the old ones
    old = first.tensors["bases"].double().flatten(1)
    new = grown.tensors["bases"][3:].double().flatten(1)
    assert float((new @ torch.linalg.pinv(old) @ old - new).norm()) > 0.9 * float(new.norm())
    # new rows: least squares against all six bases of the images grow_memory drew
    g1 = torch.Generator().manual_seed(1)
    real_per_class(local, 50, g1)  # the sample its new bases came from
    targets = real_per_class(local, 5, g1)
    expected = solve_addressing(grown.tensors["bases"], targets).float()
    assert torch.allclose(grown.tensors["addressing"][:, 2:], expected, atol=1e-4)


def test_resize_slots_keeps_a_subset_or_adds_midpoints():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    bases = torch.randn(4, 1, 4, 4, generator=g)
    fewer = resize_slots(a, bases, 2, g, (8, 8))
    assert fewer.shape == (2, 3, 4)
    for c in range(3):  # each class keeps two of its own rows
        assert all(any(torch.equal(row, a[i, c]) for i in range(6)) for row in fewer[:, c])
    more = resize_slots(a, bases, 9, g, (8, 8))
    assert more.shape == (9, 3, 4) and torch.equal(more[:6], a)
    for c in range(3):
        for row in more[6:, c]:
            mids = [(a[i, c] + a[j, c]) / 2 for i in range(6) for j in range(6) if i != j]
            assert any(torch.allclose(row, m) for m in mids)


# --------------------------------------------------- frozen copy and revocation
# ------------------------------------------------------------------ ragged layout
def test_ragged_sizes_per_class_and_fixed_total():
    """Split MNIST at budget 1: each task adds 4 bases (14 x 14, 196 floats), the 392
    addressing floats of a class buy 392 // K_j slots on its K_j bases; per-class mode
    keeps the earlier classes' slots, fixed-total mode shrinks them as classes arrive."""
    per = ragged_sizes(StrategyOptions(budget_ipc=1), (1, 28, 28), [2] * 5, 10)
    assert per == [(4, [98]), (8, [98, 49]), (12, [98, 49, 32]), (16, [98, 49, 32, 24]),
                   (20, [98, 49, 32, 24, 19])]
    total = ragged_sizes(StrategyOptions(budget_ipc=1, budget_mode="total"), (1, 28, 28), [2] * 5, 10)
    assert [k for k, _ in total] == [4, 8, 12, 16, 20] and total[-1] == per[-1]
    assert total[0] == (4, [(7840 - 784) // 2 // 4]) and total[1][1] == [392, 196]
    for t in range(1, 5):  # earlier blocks only ever shrink
        assert all(a >= b for a, b in zip(total[t - 1][1], total[t][1]))
    for t, seen in enumerate([2, 4, 6, 8, 10]):  # within the budget: 784 per class seen / 7840 in all
        for (k, slots), budget in ((per[t], 784 * seen), (total[t], 7840)):
            assert k * 196 + sum(2 * r * 4 * (j + 1) for j, r in enumerate(slots)) <= budget


def test_evict_slots_keeps_a_random_subset_of_each_class():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 3, 4, generator=g)
    out = evict_slots(a, 4, torch.Generator().manual_seed(1))
    assert out.shape == (4, 3, 4)
    picks = []
    for c in range(3):
        rows = [next(i for i in range(10) if torch.equal(row, a[i, c])) for row in out[:, c]]
        assert len(set(rows)) == 4  # distinct slots of the class's own
        picks.append(rows)
    assert len({tuple(p) for p in picks}) > 1  # each class draws its own subset
    assert torch.equal(evict_slots(a, 4, torch.Generator().manual_seed(1)), out)  # the generator decides
    with pytest.raises(ConfigError, match="keeps between 1 and 10 slots per class, got 11"):
        evict_slots(a, 11, g)


def test_ragged_tasks_keep_earlier_bases_and_recalls_bit_for_bit(monkeypatch):
    """Ragged layout: task t distils only its block, on its own real data (its classes,
    labels 0..n-1); the earlier bases and the earlier classes' addressing and recalls are
    exactly as before, the task's new bases and addressing move, and the classifier's
    training set is every block's recalls. Fixed-total mode: the earlier classes keep a
    subset of their slots."""
    b = _synthetic_benchmark(classes=6, tasks=3)
    for mode in ("per-class", "total"):
        seen_data = []

        class Recording(shared_mod.RaggedDistiller):
            def __init__(self, config, local, initial_memory, frozen, device="cpu"):
                super().__init__(config, local, initial_memory, frozen, device)
                seen_data.append((local, initial_memory, frozen))

        monkeypatch.setattr(shared_mod, "RaggedDistiller", Recording)
        strat = create_strategy("shared", budget_ipc=2, budget_mode=mode,
                                distill_overrides={**TINY_DISTILL, "outer.iterations": 2, "outer.lr": 0.05})
        strat.begin(b)
        for task in b.stream():
            before_bases = None if strat.bases is None else strat.bases.clone()
            before = [(blk.first, blk.addressing.clone()) for blk in strat.blocks]
            old_recalls = [blk.memory(strat.bases, b.image_shape).recall()[0] for blk in strat.blocks]
            info = strat.learn_task(task.index, task.classes, task.train)
            local, start, frozen = seen_data[-1]
            assert local.num_classes == len(task.classes) and int(local.labels.max()) == len(task.classes) - 1
            k = strat.bases.shape[0]
            assert info["layout"] == "ragged" and info["num_bases"] == k and frozen == k - info["new_bases"]
            if before_bases is not None:
                assert torch.equal(strat.bases[:frozen], before_bases)  # earlier bases untouched
            assert not torch.equal(strat.bases[frozen:], start.tensors["bases"][frozen:])  # the new ones learned
            assert not torch.equal(strat.blocks[-1].addressing, start.tensors["addressing"])
            for j, (first, addr) in enumerate(before):
                now = strat.blocks[j]
                assert now.first == first and now.addressing.shape[2] == addr.shape[2]
                if mode == "per-class":
                    assert torch.equal(now.addressing, addr)
                    assert torch.equal(now.memory(strat.bases, b.image_shape).recall()[0], old_recalls[j])
                else:  # each class kept a subset of its slots, unchanged
                    assert now.addressing.shape[0] < addr.shape[0]
                    for c in range(addr.shape[1]):  # each class keeps its own subset
                        assert all(any(torch.equal(row, old) for old in addr[:, c]) for row in now.addressing[:, c])
            ts = strat.training_set(None)
            assert sorted(set(ts.labels.tolist())) == list(range(task.classes[-1] + 1))
            assert strat.floats_stored() == k * 64 + sum(blk.addressing.numel() for blk in strat.blocks)
            assert strat.floats_stored() <= strat.budget_floats(task.classes[-1] + 1)
            # the memory a file holds is the run's memory itself: same recalls, same stored floats
            exported = strat.final_memory()
            x, y = exported.recall()
            assert torch.equal(x, ts.images) and torch.equal(y, ts.labels)
            assert exported.floats_stored() == strat.floats_stored()
            assert exported.class_slot_counts() == [blk.addressing.shape[0] for blk in strat.blocks
                                                    for _ in range(blk.addressing.shape[1])]


def _ragged_runs_with_and_without(option: str):
    """A 3-task synthetic benchmark and two undistilled ``ragged`` runs on it, without and
    with the boolean ``option``: ``(benchmark, (strategy, training set) off, ... on)``."""
    b = _synthetic_benchmark(classes=6, tasks=3)
    runs = []
    for on in (False, True):
        strat = create_strategy("shared", budget_ipc=2, **{option: on},
                                distill_overrides={**TINY_DISTILL, "outer.iterations": 0})
        strat.begin(b)
        for task in b.stream():
            strat.learn_task(task.index, task.classes, task.train)
        runs.append((strat, strat.training_set(None)))
    return b, runs[0], runs[1]


def test_subspace_views_add_each_class_projected_onto_the_earlier_spans():
    """``subspace_views``: the classifier's training set is every block's recalls plus,
    for each block, its recalls projected onto the first ``k`` bases for every smaller
    span ``k`` an earlier block addresses; each projection lies in that span (projecting
    again changes nothing), labels are the class's; the stored memory is unchanged."""
    b, (plain, ts0), (viewed, ts1) = _ragged_runs_with_and_without("subspace_views")
    assert torch.equal(plain.bases, viewed.bases) and plain.floats_stored() == viewed.floats_stored()
    spans = [blk.addressing.shape[2] for blk in viewed.blocks]
    assert len(set(spans)) == 3  # each task brought bases of its own
    sizes = [blk.addressing.shape[0] * blk.addressing.shape[1] for blk in viewed.blocks]
    assert len(ts1.labels) == sum(n * (1 + sum(k < kj for k in spans)) for n, kj in zip(sizes, spans))
    x, y = ts1.images, ts1.labels
    at = 0
    for j, (blk, n) in enumerate(zip(viewed.blocks, sizes)):
        own, labels = x[at:at + n], y[at:at + n]
        assert torch.equal(own, blk.memory(viewed.bases, b.image_shape).recall()[0])
        at += n
        for k in (k for k in spans if k < spans[j]):
            view = x[at:at + n]
            assert torch.equal(y[at:at + n], labels)
            assert torch.allclose(shared_mod.project_onto_bases(view, viewed.bases[:k]), view, atol=1e-4)
            assert not torch.allclose(view, own, atol=1e-3)  # a real projection, not a copy
            at += n
    assert at == len(y)
    assert sorted(set(y.tolist())) == sorted(set(ts0.labels.tolist()))
    with pytest.raises(ConfigError, match="subspace_views applies to the 'ragged' shared layout only"):
        StrategyOptions(shared_layout="dense", subspace_views=True)


def test_fill_later_bases_adds_a_later_slot_on_the_later_bases_only():
    """Each filled slot keeps its own coefficients on its ``k`` bases and takes, on the
    bases after them, exactly the coefficients of one later slot (zero-padded where
    that slot's block has fewer bases); the draw follows the generator."""
    g = torch.Generator().manual_seed(0)
    own = torch.randn(3, 2, 4, generator=g)  # (r, n, k): 3 slots of 2 classes on 4 bases
    later = [torch.randn(5, 2, 8, generator=g), torch.randn(2, 1, 12, generator=g)]
    rows = torch.cat([F.pad(later[0], (0, 4)).reshape(-1, 12), later[1].reshape(-1, 12)])
    filled = shared_mod.fill_later_bases(own, later, 12, torch.Generator().manual_seed(1))
    assert filled.shape == (3, 2, 12)
    assert torch.equal(filled[..., :4], own)
    tails = filled[..., 4:].reshape(-1, 8)
    for tail in tails:
        assert any(torch.equal(tail, row[4:]) for row in rows)
    assert len({tuple(t.tolist()) for t in tails}) > 1  # drawn, not one row repeated
    again = shared_mod.fill_later_bases(own, later, 12, torch.Generator().manual_seed(1))
    assert torch.equal(again, filled)


def test_fill_later_puts_a_filled_copy_before_each_earlier_blocks_recalls():
    """``fill_later``: the classifier's training set holds, before each block that later
    blocks extend, a copy of its recalls filled on the later bases (same labels, the
    same recall on the block's own bases: their difference lies in the span of the
    later bases alone); the last block has none; the stored memory is unchanged."""
    b, (plain, ts0), (filled, ts1) = _ragged_runs_with_and_without("fill_later")
    assert torch.equal(plain.bases, filled.bases) and plain.floats_stored() == filled.floats_stored()
    assert torch.equal(ts1.images, filled.training_set(None).images)  # seeded: the same draw again
    for a, c in zip(plain.blocks, filled.blocks):  # the stored rows, after two training sets
        assert torch.equal(a.addressing, c.addressing)
    x, y = ts1.images, ts1.labels
    at, bases = 0, filled.bases
    for j, blk in enumerate(filled.blocks):
        own_x, own_y = blk.memory(bases, b.image_shape).recall()
        n, k = len(own_y), blk.addressing.shape[2]
        if j < len(filled.blocks) - 1:
            copy = x[at:at + n]
            assert torch.equal(y[at:at + n], own_y + blk.first)
            diff = copy - own_x
            assert diff.abs().max() > 1e-3  # something was added
            residual = diff - shared_mod.project_onto_bases(diff, bases[k:])
            assert residual.abs().max() < 1e-4  # ... on the later bases only
            at += n
        assert torch.equal(x[at:at + n], own_x) and torch.equal(y[at:at + n], own_y + blk.first)
        at += n
    assert at == len(y) and len(ts1.labels) > len(ts0.labels)
    with pytest.raises(ConfigError, match="fill_later applies to the 'ragged' shared layout only"):
        StrategyOptions(shared_layout="dense", fill_later=True)


def test_context_batch_task_keeps_the_inner_batch_of_the_task_alone():
    """``context_batch="task"``: with context the inner network draws ``n_per_class``
    times the task's classes in all, spread over every class seen (at least one each);
    ``"seen"`` draws ``n_per_class`` of every class seen. Recorded per task."""
    b = _synthetic_benchmark(classes=6, tasks=3)
    per_task = {}
    for batch in ("seen", "task"):
        strat = create_strategy("shared", budget_ipc=2, task_context=True, context_batch=batch,
                                distill_overrides={**TINY_DISTILL, "outer.iterations": 1})
        strat.begin(b)
        per_task[batch] = [strat.learn_task(t.index, t.classes, t.train)["inner_per_class"] for t in b.stream()]
    # TINY_DISTILL's 4 per class; 2-class tasks: 8 in all over 2, 4 and 6 classes seen
    assert per_task == {"seen": [4, 4, 4], "task": [4, 2, 1]}
    with pytest.raises(ConfigError, match="context_batch applies with task_context only"):
        StrategyOptions(context_batch="task")
    with pytest.raises(ConfigError, match="unknown context batch 'all'; valid: seen, task"):
        StrategyOptions(task_context=True, context_batch="all")


def test_task_context_learns_the_new_block_against_the_earlier_recalls(monkeypatch):
    """``task_context``: from the second task on, the block's distillation holds every
    class seen. The inner network's memory starts with the earlier classes' stored
    recalls (their rows, padded and resampled) before the new rows fitted as without
    context; the outer loss reads only those recalls for the earlier classes and real
    images for the new ones. The earlier bases and blocks stay bit for bit, the stored
    block holds the task's classes only, storage is as without context, and the new block
    ends elsewhere than without context from the same start."""
    b = _synthetic_benchmark(classes=6, tasks=3)
    seen = []

    class Recording(shared_mod.RaggedDistiller):
        def __init__(self, config, local, initial_memory, frozen, device="cpu", context=None, old_classes=0):
            super().__init__(config, local, initial_memory, frozen, device, context, old_classes)
            seen.append((local, initial_memory, frozen, old_classes, self._inputs.real, self._inputs.class_index))

        def run(self, *args, **kwargs):
            result = super().run(*args, **kwargs)
            ends.append(result.memory.tensors["addressing"].detach().clone())
            return result

    monkeypatch.setattr(shared_mod, "RaggedDistiller", Recording)
    runs, ends = {}, []
    for context in (False, True):
        seen.clear()
        strat = create_strategy("shared", budget_ipc=2, task_context=context,
                                distill_overrides={**TINY_DISTILL, "outer.iterations": 2, "outer.lr": 0.05})
        strat.begin(b)
        starts, blocks = [], []
        for task in b.stream():
            old = task.classes[0]
            before_bases = None if strat.bases is None else strat.bases.clone()
            before = [blk.addressing.clone() for blk in strat.blocks]
            recalls = strat._recall_blocks() if strat.blocks else None
            strat.learn_task(task.index, task.classes, task.train)
            local, start, frozen, old_classes, source, class_index = seen[-1]
            n = len(task.classes)
            starts.append(start.tensors["addressing"][:, -n:].clone())
            blocks.append(strat.blocks[-1].addressing.clone())
            assert strat.blocks[-1].addressing.shape[1] == n
            if before_bases is not None:
                assert torch.equal(strat.bases[:frozen], before_bases)
                assert all(torch.equal(blk.addressing, a) for blk, a in zip(strat.blocks, before))
            if not context or old == 0:
                assert old_classes == 0 and local.num_classes == n and start.num_classes == n
                continue
            assert old_classes == old and local.num_classes == old + n and start.num_classes == old + n
            rows = start.tensors["addressing"][:, :old]
            assert torch.equal(ends[-1][:, :old], rows)  # the earlier classes' rows did not move
            for c in range(old):  # each context row is one of the class's stored rows, padded
                blk = next(blk for blk in strat.blocks if blk.first <= c < blk.first + blk.addressing.shape[1])
                stored = F.pad(blk.addressing[:, c - blk.first], (0, strat.bases.shape[0] - blk.addressing.shape[2]))
                assert all(any(torch.equal(row, s) for s in stored) for row in rows[:, c])
                idx = class_index[c]
                assert bool((idx >= source.n).all())  # recalled examples only
                x, y = source.batch(idx)
                assert torch.equal(y, recalls[1][recalls[1] == c]) and torch.equal(x, recalls[0][recalls[1] == c])
            for c in range(old, old + n):
                assert bool((class_index[c] < source.n).all())
        runs[context] = (strat.floats_stored(), starts, blocks)
    (f0, s0, b0), (f1, s1, b1) = runs[False], runs[True]
    assert f0 == f1
    assert torch.equal(s0[0], s1[0]) and torch.equal(b0[0], b1[0])  # the first task has no earlier classes
    assert torch.equal(s0[1], s1[1]) and not torch.allclose(b0[1], b1[1])  # same start, other end
    with pytest.raises(ConfigError, match="task_context applies to the 'ragged' shared layout only"):
        StrategyOptions(shared_layout="dense", task_context=True)


def test_old_classes_are_trained_only_on_recalls_of_the_frozen_copy(monkeypatch):
    """While task t is current the earlier classes' outer-loss examples are exactly
    the frozen pre-task memory's recalls (never real images), the frozen copy is not
    changed by the distillation, and past tasks' real data is gone from the stream."""
    b = _synthetic_benchmark(classes=6, tasks=3)
    seen_sources = []

    class Recording(shared_mod.SharedDistiller):
        def __init__(self, config, current, recalled, initial_memory, class_weight=None, device="cpu"):
            super().__init__(config, current, recalled, initial_memory, class_weight, device)
            seen_sources.append((self.source, self._inputs.class_index, current))

    monkeypatch.setattr(shared_mod, "SharedDistiller", Recording)
    strat = create_strategy("shared", budget_ipc=2, shared_layout="dense",
                            distill_overrides={**TINY_DISTILL, "outer.iterations": 2})
    strat.begin(b)
    tasks, datas = [], []
    for task in b.stream():
        before = None if strat.memory is None else strat.memory
        snapshot = None if before is None else {k: v.clone() for k, v in before.tensors.items()}
        data = task.train
        strat.learn_task(task.index, task.classes, data)
        source, class_index, current = seen_sources[-1]
        old = task.classes[0]
        assert set(current.labels.unique().tolist()) == set(task.classes)  # real data: new classes only
        for c in range(task.classes[-1] + 1):
            idx = class_index[c]
            assert len(idx) > 0
            if c < old:  # an earlier class: recalled examples only, exactly the frozen copy's recalls
                assert bool((idx >= source.n).all())
                x, y = source.batch(idx)
                ref_x, ref_y = before.recall(classes=[c])
                assert torch.equal(y, ref_y) and torch.allclose(x, ref_x)
            else:
                assert bool((idx < source.n).all())
        if before is not None:  # the frozen copy was not touched; the live memory moved on
            assert all(torch.equal(before.tensors[k], snapshot[k]) for k in snapshot)
            assert strat.memory is not before
        for past, past_data in zip(tasks, datas):
            with pytest.raises(TaskDataRevokedError):
                past.train
            assert past_data.images.numel() == 0
        kept = strat.training_set(None)
        x, y = kept.get(torch.arange(len(kept)))
        assert sorted(y.unique().tolist()) == list(range(task.classes[-1] + 1)) and bool(torch.isfinite(x).all())
        tasks.append(task)
        datas.append(data)
    assert len(seen_sources) == 3 and seen_sources[0][0].x.numel() == 0  # nothing to replay at first


def test_replay_weight_weighs_old_against_new():
    assert replay_class_weight("classes", 4, 6) is None and replay_class_weight(0.3, 0, 2) is None
    w = replay_class_weight(0.3, 4, 6)
    assert torch.allclose(w, torch.tensor([0.075] * 4 + [0.35] * 2))
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(12, 6, generator=g), torch.arange(6).repeat_interleave(2)
    ce = F.cross_entropy(logits, y, reduction="none")
    expected = 0.3 * ce[y < 4].mean() + 0.7 * ce[y >= 4].mean()
    assert torch.allclose(F.cross_entropy(logits, y, weight=w), expected)
    with pytest.raises(ConfigError, match="replay_weight must be 'classes' or a number in"):
        StrategyOptions(replay_weight=1.5, shared_layout="dense")


# ----------------------------------------------------------------- bad input
def test_bad_budgets_and_modes_fail_with_clear_errors():
    b = _synthetic_benchmark(classes=6, tasks=3)
    # one 8 x 8 basis (64 floats) and one slot for each of the 6 classes (6 floats): 70
    with pytest.raises(ConfigError, match="shared: a total budget of 69 floats cannot hold.*minimum is 70 floats"):
        create_strategy("shared", budget_mode="total", budget_total=69, shared_layout="dense").begin(b)
    create_strategy("shared", budget_mode="total", budget_total=70, shared_layout="dense").begin(b)
    # ragged, one 8 x 8 basis per task: after task 3, 3 bases (192 floats) and a slot of 3 floats per class (18)
    with pytest.raises(ConfigError, match=r"shared \(ragged\): after task 3 a budget of 209 floats cannot hold 3 "
                                          r"bases.*minimum is 210 floats \(--budget-total 210\)"):
        create_strategy("shared", budget_mode="total", budget_total=209, num_bases=1).begin(b)
    create_strategy("shared", budget_mode="total", budget_total=210, num_bases=1).begin(b)
    with pytest.raises(ConfigError, match="unknown shared layout 'sparse'; valid: ragged, dense"):
        StrategyOptions(shared_layout="sparse")
    with pytest.raises(ConfigError, match="replay_weight applies to the 'dense' shared layout only"):
        StrategyOptions(replay_weight=0.5)
    StrategyOptions(replay_weight=0.5, shared_layout="dense")
    with pytest.raises(ConfigError, match="fewer than one real image .* for each of the 6 classes"):
        create_strategy("herding", budget_mode="total", budget_ipc=0.5).begin(b)
    with pytest.raises(ConfigError, match="'memories' cannot honour the 'total' budget mode.*per-class run"):
        create_strategy("memories", budget_mode="total").begin(b)
    with pytest.raises(ConfigError, match="unknown budget mode 'fixed'; valid: per-class, total"):
        StrategyOptions(budget_mode="fixed")
    with pytest.raises(ConfigError, match="budget_total .* needs budget_mode='total'"):
        StrategyOptions(budget_total=1000)
    with pytest.raises(UnknownNameError, match="valid choices"):
        create_strategy("replay")
    with pytest.raises(ConfigError, match="without learned labels"):
        create_strategy("shared", distill_overrides={"memory.learned_labels": True}).begin(b)
    for key, flag in (("memory.num_bases", "--bases"), ("memory.downsample", "--downsample")):
        with pytest.raises(ConfigError, match=f"shared: {key} cannot be overridden.*use {flag}"):
            create_strategy("shared", distill_overrides={key: 4}).begin(b)


# ------------------------------------------------------------ real Split MNIST
SHORT = {"outer.iterations": 3, "outer.pool_size": 0, "inner.steps": 3, "inner.width": 8, "inner.n_per_class": 5,
         "outer.real_per_class": 10}


@pytest.mark.parametrize("layout, bases", [("ragged", [4, 8, 12, 16, 20]), ("dense", [4, 8, 12, 16, 16])])
@pytest.mark.parametrize("seed", [0])
def test_shared_beats_finetune_on_split_mnist(data_root, seed, layout, bases):
    """Measured with these settings (final average accuracy, seeds 0 / 1 / 2): shared
    dense 0.80 / 0.66 / 0.74, finetune 0.19 / 0.19 (it knows only the last two classes)."""
    bench = create_benchmark("split-mnist", root=data_root, seed=seed)
    learner = LearnerConfig(steps=60, width=16, batch_size=64, test_per_class=50, seed=seed)
    opts = StrategyOptions(budget_ipc=1, seed=seed, distill_overrides=SHORT, shared_layout=layout)
    shared = run_continual(bench, "shared", opts, learner)
    ft = run_continual(bench, "finetune", opts, learner)
    assert ft.final_average_accuracy < 0.25
    assert shared.final_average_accuracy > ft.final_average_accuracy + 0.35
    assert shared.forgetting < ft.forgetting - 0.4
    assert all(f <= b for f, b in zip(shared.floats_stored, shared.budget_floats))
    assert [i["num_bases"] for i in shared.task_info] == bases


def test_cli_shared_fixed_total_writes_a_normal_memory_file(tmp_path, data_root, capsys):
    """``--strategy shared --budget-total-ipc`` runs, records the stored floats per task,
    and ``--save-memory`` writes a memory file of MNIST (rows in MNIST's class order)
    that ``show``, ``evaluate`` and ``derive`` read."""
    from memdistill.cli import main

    out, mem = tmp_path / "run.json", tmp_path / "m.safetensors"
    args = ["continual", "--benchmark", "split-mnist", "--strategy", "shared,herding", "--budget-total-ipc", "1",
            "--iterations", "1", "--set", "inner.steps=2", "--set", "inner.width=8", "--set", "outer.pool_size=0",
            "--steps", "3", "--width", "8", "--test-per-class", "5", "--root", str(data_root), "--out", str(out),
            "--save-memory", str(mem), "--no-progress"]
    assert main(args + ["--shared-layout", "dense"]) == 0
    saved = json.loads(out.read_text())
    assert saved["budget_mode"] == "total"
    for r in saved["results"]:
        assert r["budget_floats"] == [7840] * 5 and max(r["floats_stored"]) <= 7840 and r["budget_mode"] == "total"
    mf = load_memory(mem)
    bench = create_benchmark("split-mnist", root=data_root)
    order = list(bench.class_order)
    assert mf.dataset == "mnist" and mf.meta["extra"]["continual"]["class_order"] == order
    # row o of the file is MNIST's class o, which the benchmark called id order.index(o)
    assert mf.classes == [bench.class_names[order.index(o)] for o in range(10)]
    assert mf.memory.floats_stored() == saved["results"][0]["floats_stored"][-1]
    assert main(["show", str(mem), "--png", str(tmp_path / "m.png")]) == 0
    assert main(["evaluate", str(mem), "--runs", "1", "--epochs", "1", "--width", "8", "--root", str(data_root),
                 "--out", str(tmp_path / "e.json"), "--no-progress"]) == 0
    assert main(["derive", str(mem), "--task", "odd-even", "--out", str(tmp_path / "d.safetensors"), "--no-real",
                 "--epochs", "1", "--width", "8", "--root", str(data_root), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["continual", "--benchmark", "split-mnist", "--strategy", "memories", "--budget-total-ipc", "1",
                 "--root", str(data_root)]) == 2
    assert "cannot honour" in capsys.readouterr().err
    assert main(["continual", "--benchmark", "many:mnist,fashion-mnist", "--strategy", "shared",
                 "--save-memory", str(mem), "--root", str(data_root)]) == 2
    assert "split benchmark of one dataset" in capsys.readouterr().err


def test_ragged_memory_is_saved_as_the_run_held_it(tmp_path, data_root):
    """The default ragged layout's ``--save-memory`` writes the run's memory itself: each
    class with its own slot count (98 for task 1's classes ... 19 for task 5's) on the
    bases that existed when it arrived, exactly the run's stored floats, and
    ``evaluate``, ``show`` and ``derive`` read it."""
    from memdistill.cli import main

    out, mem = tmp_path / "run.json", tmp_path / "r.safetensors"
    assert main(["continual", "--benchmark", "split-mnist", "--strategy", "shared", "--budget-ipc", "1",
                 "--iterations", "1", "--set", "inner.steps=2", "--set", "inner.width=8", "--set",
                 "outer.pool_size=0", "--steps", "3", "--width", "8", "--test-per-class", "5", "--root",
                 str(data_root), "--out", str(out), "--save-memory", str(mem), "--no-progress"]) == 0
    mf = load_memory(mem)
    saved = json.loads(out.read_text())["results"][0]
    assert mf.memory.ragged and mf.memory.slots == 98 and mf.memory.tensors["bases"].shape[0] == 20
    assert mf.memory.floats_stored() == saved["floats_stored"][-1] <= saved["budget_floats"][-1] == 7840
    assert mf.meta["budget"]["floats_stored"] == saved["floats_stored"][-1]
    order = list(create_benchmark("split-mnist", root=data_root).class_order)
    held = mf.meta["extra"]["continual"]["run_slots_per_task"]
    assert held == [98, 49, 32, 24, 19]
    for t in range(5):
        for o in order[2 * t: 2 * t + 2]:  # dataset class o arrived with task t: 4 (t + 1) bases
            assert mf.memory.class_slots[o] == held[t] and mf.memory.class_bases[o] == 4 * (t + 1)
            assert len(mf.recall(classes=[o])[0]) == held[t]
    assert len(mf.recall()[0]) == mf.memory.report().examples == 2 * sum(held)
    assert mf.memory.query_slots == 19 and mf.recall(query=torch.eye(10)[order[0]])[0].shape[0] == 19
    assert mf.meta["extra"]["continual"]["shared_layout"] == "ragged"
    ev = tmp_path / "e.json"
    assert main(["evaluate", str(mem), "--runs", "1", "--epochs", "1", "--width", "8", "--root", str(data_root),
                 "--out", str(ev), "--no-progress"]) == 0
    record = json.loads(ev.read_text())
    assert record["examples"] == 2 * sum(held) and record["reference_ipc"] == 1
    assert main(["show", str(mem), "--png", str(tmp_path / "m.png")]) == 0
    assert main(["derive", str(mem), "--task", "odd-even", "--out", str(tmp_path / "d.safetensors"), "--no-real",
                 "--epochs", "1", "--width", "8", "--root", str(data_root), "--no-progress"]) == 0


def test_saved_shared_memory_rows_follow_the_dataset_class_order(tmp_path):
    b = _synthetic_benchmark()
    b = b.__class__(**{**b.__dict__, "class_order": (2, 0, 3, 1)})
    g = torch.Generator().manual_seed(0)
    mem = BasesMemory({"bases": torch.randn(3, 1, 8, 8, generator=g), "addressing": torch.randn(2, 4, 3, generator=g)},
                      (1, 16, 16), 4, 2)
    path = shared_mod.save_shared_memory(tmp_path / "s.safetensors", mem, b)
    mf = load_memory(path)
    for i, o in enumerate((2, 0, 3, 1)):  # benchmark id i is the dataset's class o
        assert torch.allclose(mf.memory.recall(classes=[o])[0], mem.recall(classes=[i])[0])
        assert mf.classes[o] == b.class_names[i]


def test_validation_benchmark_holds_out_training_images_and_never_the_test_split():
    b = _synthetic_benchmark(per_class=20)
    v = b.validation(fraction=0.25, seed=3)
    assert v.tasks == b.tasks and v.name == "synthetic (validation)"
    assert torch.equal(torch.bincount(v.test.labels), torch.full((4,), 5))  # stratified: 5 of 20 per class
    assert len(v.train) + len(v.test) == len(b.train)
    both = torch.cat([v.train.images, v.test.images]).flatten(1)
    assert len(torch.unique(both, dim=0)) == len(b.train)  # disjoint, together the training split
    assert set(map(tuple, v.test.images.flatten(1).tolist())) <= set(map(tuple, b.train.images.flatten(1).tolist()))
    assert torch.equal(b.validation(fraction=0.25, seed=3).test.images, v.test.images)
