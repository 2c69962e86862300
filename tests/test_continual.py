"""Continual learning: benchmarks, the revoking task stream, equal storage, and a real
Split-MNIST run where distilled memories beat fine-tuning."""

from __future__ import annotations

import json

import pytest
import torch

from memdistill.continual import (
    ALL_STRATEGIES,
    Benchmark,
    ContinualResult,
    LearnerConfig,
    StrategyOptions,
    create_benchmark,
    format_table,
    parse_benchmark,
    plot_results,
    run_comparison,
    run_continual,
    save_results,
)
from memdistill.continual.benchmarks import _to_shape
from memdistill.data import ImageDataset, load_dataset
from memdistill.errors import ConfigError, DataNotFoundError, TaskDataRevokedError, UnknownNameError
from memdistill.memory import stored_float_budget

# a distillation small enough for tests (seconds per task)
TINY_DISTILL = {"outer.iterations": 3, "inner.steps": 3, "inner.width": 8, "inner.n_per_class": 4,
                "outer.real_per_class": 8, "evaluation.epochs": 1, "evaluation.width": 8,
                "outer.pool_size": 0}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here: on the shared 2-core CI machines, two threads per process
    spin against each other and make these small networks several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def split_mnist(data_root) -> Benchmark:
    return create_benchmark("split-mnist", root=data_root)


def _synthetic_benchmark(classes: int = 4, tasks: int = 2, per_class: int = 24, size: int = 16) -> Benchmark:
    """Each class a noisy copy of its own random pattern; uint8 1 x size x size."""
    g = torch.Generator().manual_seed(0)
    protos = torch.rand((classes, 1, size, size), generator=g) * 255

    def make(n):
        y = torch.arange(classes).repeat_interleave(n)
        x = (protos[y] + 40 * torch.randn((len(y), 1, size, size), generator=g)).clamp(0, 255)
        return x.to(torch.uint8), y

    names = tuple(f"c{i}" for i in range(classes))
    tr, te = make(per_class), make(10)
    stats = dict(classes=names, mean=(0.5,), std=(0.3,))
    k = classes // tasks
    return Benchmark("synthetic", ImageDataset("synthetic", "train", *tr, **stats),
                     ImageDataset("synthetic", "test", *te, **stats),
                     tuple(tuple(range(t * k, (t + 1) * k)) for t in range(tasks)), names)


# ----------------------------------------------------------------- benchmarks
def test_split_mnist_class_order_is_seeded_and_tasks_disjoint(split_mnist, data_root):
    b = split_mnist
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    assert list(b.class_order) == expected
    assert b.tasks == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))
    flat = [c for t in b.tasks for c in t]
    assert sorted(flat) == list(range(10)) and len(set(flat)) == len(flat)
    # id i holds exactly the images of original class order[i]
    raw = load_dataset("mnist", "train", root=data_root)
    for i, orig in enumerate(expected):
        assert int((b.train.labels == i).sum()) == int((raw.labels == orig).sum())
        first = int(torch.nonzero(raw.labels == orig)[0])
        assert int(b.train.labels[first]) == i
    assert b.class_names == tuple(raw.classes[c] for c in expected)
    other = create_benchmark("split-mnist", root=data_root, seed=1)
    assert list(other.class_order) != expected
    # the test images of the classes seen after task 1 are exactly ids 0..3
    seen = b.test_seen(1)
    assert set(seen.labels.tolist()) == {0, 1, 2, 3}
    assert len(seen) == int(sum((b.test.labels == c).sum() for c in range(4)))


def test_stream_hands_out_only_the_current_task_and_revokes_it(split_mnist):
    b = split_mnist
    stream = b.stream()
    kept_tasks, kept_data = [], []
    for task in stream:
        data = task.train
        assert set(data.labels.unique().tolist()) == set(task.classes)
        assert len(data) == int(sum((b.train.labels == c).sum() for c in task.classes))
        for past, past_data in zip(kept_tasks, kept_data):
            with pytest.raises(TaskDataRevokedError, match=f"task {past.index} .* no longer available"):
                past.train
            assert past_data.images.numel() == 0  # a reference kept by mistake holds nothing
        kept_tasks.append(task)
        kept_data.append(data)
        if task.index == 2:
            break
    with pytest.raises(ConfigError, match="iterated once"):
        next(iter(stream))
    # after a full pass even the last task is gone
    full = b.stream()
    tasks = list(full)
    with pytest.raises(TaskDataRevokedError):
        tasks[-1].train


def test_missing_benchmark_data_names_the_files(tmp_path, data_root):
    with pytest.raises(DataNotFoundError, match=r"split-cifar10(.|\n)*data_batch_1"):
        create_benchmark("split-cifar10", root=tmp_path)
    for n in (5, 10, 20):
        with pytest.raises(DataNotFoundError, match=r"cifar-100-python/train"):
            create_benchmark("split-cifar100", root=tmp_path, num_tasks=n)
    with pytest.raises(ConfigError, match="valid numbers of tasks: 1, 2, 4, 5, 10, 20, 25, 50, 100"):
        create_benchmark("split-cifar100", root=tmp_path, num_tasks=7)
    with pytest.raises(DataNotFoundError, match="tiny-imagenet"):
        create_benchmark("split-tiny-imagenet", root=tmp_path)
    # the full MANY on this machine: MNIST is there, the others are named as missing
    with pytest.raises(DataNotFoundError) as err:
        create_benchmark("many", root=data_root)
    msg = str(err.value)
    assert "cifar10" in msg and "svhn" in msg and "cifar100" in msg and "many:mnist,fashion-mnist" in msg
    assert "  mnist:" not in msg
    with pytest.raises(ConfigError, match="partial MANY"):
        create_benchmark("many", root=data_root, datasets=["mnist", "fashion-mnist"])
    with pytest.raises(UnknownNameError, match="valid choices"):
        create_benchmark("split-imagenet")


def test_partial_many_keeps_datasets_apart(data_root, fashion_root):
    b = create_benchmark("many:mnist,fashion-mnist", root=data_root)
    assert b.name == "many:mnist,fashion-mnist"
    assert b.tasks == (tuple(range(10)), tuple(range(10, 20)))
    assert b.image_shape == (1, 28, 28)
    assert all(n.startswith("mnist/") for n in b.class_names[:10])
    assert all(n.startswith("fashion-mnist/") for n in b.class_names[10:])
    assert len(b.train) == 120_000 and len(b.test) == 20_000
    assert parse_benchmark("many:mnist,fashion-mnist") == (
        "many", {"datasets": ["mnist", "fashion-mnist"], "allow_partial": True})
    with pytest.raises(ConfigError, match="only MANY"):
        parse_benchmark("split-mnist:foo")


def test_images_brought_to_a_common_shape():
    grey = torch.full((3, 1, 28, 28), 200, dtype=torch.uint8)
    grey[:, :, :14] = 10
    out = _to_shape(grey, (3, 32, 32))
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], out[:, 2])  # grey replicated to every channel
    assert int(out[0, 0, 0, 0]) == 10 and int(out[0, 0, -1, -1]) == 200


# ------------------------------------------------------------ equal storage
# every strategy, and the shared strategy's other layout ("shared:dense")
WITH_LAYOUTS = (*ALL_STRATEGIES, "shared:dense")


def _name_and_layout(strategy: str) -> tuple[str, dict]:
    name, _, layout = strategy.partition(":")
    return name, ({"shared_layout": layout} if layout else {})


@pytest.mark.parametrize("budget", [1, 3])
@pytest.mark.parametrize("strategy", WITH_LAYOUTS)
def test_every_strategy_stays_within_the_budget_after_every_task(strategy, budget):
    b = _synthetic_benchmark()
    strategy, layout = _name_and_layout(strategy)
    opts = StrategyOptions(budget_ipc=budget, distill_overrides=TINY_DISTILL, **layout)
    r = run_continual(b, strategy, opts, LearnerConfig(steps=3, width=8, batch_size=16))
    assert len(r.floats_stored) == len(r.budget_floats) == b.num_tasks
    m = torch.tensor(r.final_confusion)  # the last task's accuracies are its diagonal
    assert m.shape == (4, 4) and m.sum(1).tolist() == [10] * 4 and r.to_dict()["final_confusion"] == m.tolist()
    assert r.per_task_accuracy[-1] == pytest.approx([float(m.diagonal()[list(t)].sum()) / 20 for t in b.tasks])
    assert r.classes_seen == [2, 4] and r.budget_mode == "per-class"
    d = 16 * 16
    for t in range(b.num_tasks):
        seen = b.classes_seen(t)
        if strategy == "joint":
            assert r.budget_floats[t] is None
            assert r.floats_stored[t] == 24 * seen * d  # every real image so far
        elif strategy == "finetune":
            assert r.floats_stored[t] == 0
        else:
            assert r.budget_floats[t] == stored_float_budget(budget, (1, 16, 16), seen) == budget * d * seen
            assert r.floats_stored[t] <= r.budget_floats[t]
            # and uses most of it (a strategy storing nothing would pass the line above)
            assert r.floats_stored[t] >= 0.9 * r.budget_floats[t]


@pytest.mark.parametrize("budget", [1, 2.5])
@pytest.mark.parametrize("strategy", WITH_LAYOUTS)
def test_every_strategy_keeps_a_fixed_total_budget_after_every_task(strategy, budget):
    """Fixed-total mode: one budget of ``budget * C*H*W * 6`` floats for the stream
    (6 classes in 3 tasks), never exceeded after any task; strategies that cannot
    re-divide storage refuse the mode before any work."""
    b = _synthetic_benchmark(classes=6, tasks=3)
    strategy, layout = _name_and_layout(strategy)
    opts = StrategyOptions(budget_ipc=budget, budget_mode="total", distill_overrides=TINY_DISTILL, **layout)
    learner = LearnerConfig(steps=3, width=8, batch_size=16)
    if strategy in ("memories", "images"):
        with pytest.raises(ConfigError, match="cannot honour the 'total' budget mode.*strategies that can: shared"):
            run_continual(b, strategy, opts, learner)
        return
    r = run_continual(b, strategy, opts, learner)
    total = int(budget * 256 * 6)
    assert r.budget_mode == "total" and r.classes_seen == [2, 4, 6]
    for t in range(b.num_tasks):
        if strategy == "joint":
            assert r.budget_floats[t] is None
            continue
        assert r.budget_floats[t] == total
        assert r.floats_stored[t] <= total
        if strategy != "finetune":  # the whole total is in use from the first task on
            assert r.floats_stored[t] >= 0.9 * total
    saved = r.to_dict()
    assert saved["floats_stored"] == r.floats_stored and "memory" not in saved


def test_exemplar_and_memory_budgets_that_cannot_fit_fail_early():
    b = _synthetic_benchmark()
    with pytest.raises(ConfigError, match="budget-ipc >= 1"):
        run_continual(b, "random", StrategyOptions(budget_ipc=0.5))
    with pytest.raises(ConfigError, match="minimum is"):
        run_continual(b, "memories", StrategyOptions(budget_ipc=0.01))
    with pytest.raises(ConfigError, match="scratch"):
        LearnerConfig(training="sometimes")


def test_forgetting_and_average_accuracy():
    r = ContinualResult("b", "s", 1.0, "scratch", per_task_accuracy=[[0.9], [0.5, 0.8], [0.3, 0.6, 0.7]])
    assert r.final_average_accuracy == pytest.approx((0.3 + 0.6 + 0.7) / 3)
    # task 0: best 0.9 -> 0.3; task 1: best 0.8 -> 0.6
    assert r.forgetting == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)


def test_reports_table_json_and_plot(tmp_path):
    b = _synthetic_benchmark()
    results = run_comparison(b, ["random", "finetune"], StrategyOptions(budget_ipc=1),
                             LearnerConfig(steps=2, width=8, training="continue"))
    table = format_table(results)
    assert table.splitlines()[0].startswith("| strategy | task 1 | task 2 | final avg")
    assert "| random |" in table and "| finetune |" in table
    path = save_results(tmp_path / "r.json", results, benchmark="synthetic")
    saved = json.loads(path.read_text())
    assert [r["strategy"] for r in saved["results"]] == ["random", "finetune"]
    assert saved["results"][1]["training"] == "continue" and len(saved["results"][0]["seen_accuracy"]) == 2
    png = plot_results(results, tmp_path / "r.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_balanced_classifier_batches_draw_every_class_equally_often():
    from memdistill.continual._learner import _train
    from memdistill.evaluate import TrainingSet

    # 90 examples of class 0, 10 of class 1; each image holds its class in every pixel
    y = torch.cat([torch.zeros(90, dtype=torch.long), torch.ones(10, dtype=torch.long)])
    data = TrainingSet(y.float().view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous(), y)
    seen_labels = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(16, 2)

        def forward(self, x):
            seen_labels.append(x[:, 0, 0, 0].round().long())
            return self.linear(x.flatten(1))

    def share_of_class_1(balanced: bool) -> float:
        seen_labels.clear()
        _train(Spy(), data, 2, LearnerConfig(steps=200, batch_size=32, balanced=balanced),
               torch.Generator().manual_seed(0))
        return float(torch.cat(seen_labels).float().mean())

    assert share_of_class_1(False) == pytest.approx(0.1, abs=0.02)  # passes over the examples
    assert share_of_class_1(True) == pytest.approx(0.5, abs=0.03)   # 6 400 draws, sd 0.006


# ------------------------------------------------------------ real Split MNIST
def test_memories_beat_finetune_on_split_mnist(split_mnist):
    learner = LearnerConfig(steps=100, width=16, batch_size=64, test_per_class=100)
    opts = StrategyOptions(budget_ipc=1, distill_overrides={
        "outer.iterations": 5, "inner.steps": 5, "inner.width": 16, "evaluation.epochs": 1})
    mem = run_continual(split_mnist, "memories", opts, learner)
    ft = run_continual(split_mnist, "finetune", opts, learner)
    # fine-tuning forgets: after the last task it only knows the last two classes
    assert ft.final_average_accuracy < 0.35
    assert mem.final_average_accuracy > ft.final_average_accuracy + 0.3
    assert mem.forgetting < ft.forgetting
    assert all(f <= b for f, b in zip(mem.floats_stored, mem.budget_floats))


def test_memories_can_start_from_the_previous_tasks_bases():
    from memdistill.continual import create_strategy
    from memdistill.config import resolve
    from memdistill.distill import Distiller

    b = _synthetic_benchmark()
    frozen = {**TINY_DISTILL, "outer.iterations": 0}  # no update: the memory is its initialisation
    kept = {}
    for flag in (False, True):
        strat = create_strategy("memories", budget_ipc=2, distill_overrides=frozen, init_from_previous=flag)
        for task in b.stream():
            strat.learn_task(task.index, task.classes, task.train)
        kept[flag] = [m.tensors["bases"] for _, m in strat.memories]
    assert torch.equal(kept[True][0], kept[True][1])
    assert not torch.equal(kept[False][0], kept[False][1])
    # a memory that does not fit the run is refused with what it needs
    data = b.train.subset(torch.nonzero(b.train.labels < 3).flatten())
    data = data.__class__(**{**data.__dict__, "classes": data.classes[:3]})
    with pytest.raises(ConfigError, match="initial_memory is a 'bases' memory of 2 classes"):
        Distiller(resolve("cpu-quick", "synthetic"), data,
                  initial_memory=strat.memories[0][1]).new_memory()


def test_cli_runs_a_comparison_and_reports_errors(tmp_path, data_root, capsys):
    from memdistill.cli import main

    out = tmp_path / "run.json"
    rc = main(["continual", "--benchmark", "split-mnist", "--strategy", "random,finetune", "--steps", "3",
               "--width", "8", "--test-per-class", "10", "--root", str(data_root), "--out", str(out),
               "--no-progress"])
    assert rc == 0
    saved = json.loads(out.read_text())
    assert [r["strategy"] for r in saved["results"]] == ["random", "finetune"]
    assert saved["benchmark"] == "split-mnist" and saved["learner"]["steps"] == 3
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "| random |" in capsys.readouterr().out
    assert main(["continual", "--benchmark", "many", "--root", str(data_root)]) == 2
    assert "cifar10" in capsys.readouterr().err
    assert main(["continual", "--benchmark", "split-mnist", "--strategy", "replay", "--root", str(data_root)]) == 2
    assert "valid choices" in capsys.readouterr().err


def test_strategies_are_classes_registered_under_their_names():
    from memdistill.continual.strategies import STRATEGIES

    for name in ALL_STRATEGIES:
        cls = STRATEGIES.get(name)
        assert cls.name == name and cls.__name__ == f"{name.title()}Strategy"
    assert sorted(STRATEGIES) == sorted(ALL_STRATEGIES)


def test_task_memories_size_themselves_and_keep_the_preset_schedule_at_budget_10():
    """A task memory's K comes from its share of the budget; the preset's budget-10 choice
    (K = 64, T = 40, lr 0.001, 10 iterations, for whole 10-class datasets) does not reach
    it, and ``distill_overrides`` win over everything."""
    from memdistill.continual import auto_num_bases, create_strategy

    mem = create_strategy("memories", budget_ipc=10, preset="cpu-quick")
    cfg = mem.task_config(3, "mnist", (1, 28, 28), 2)
    assert cfg.memory.num_bases == auto_num_bases(10, (1, 28, 28), 2, 2) != 64
    assert (cfg.inner.steps, cfg.outer.lr, cfg.outer.iterations, cfg.inner.n_per_class) == (10, 0.003, 40, 20)
    assert (cfg.seed, cfg.zca, cfg.evaluation.epochs, cfg.evaluation.every) == (3, 0.0, 30, 0)
    mine = create_strategy("memories", budget_ipc=10, preset="cpu-quick",
                           distill_overrides={"memory.num_bases": 3, "outer.iterations": "2"})
    cfg = mine.task_config(0, "mnist", (1, 28, 28), 2)
    assert (cfg.memory.num_bases, cfg.outer.iterations) == (3, 2)
    img = create_strategy("images", budget_ipc=10).task_config(0, "mnist", (1, 28, 28), 2)
    assert img.memory.kind == "images" and img.inner.steps == 10


def test_auto_bases_follow_the_budget_and_the_task_classes():
    """Below 10 images per class a task gets at most the paper's 16 bases; from 10 on 6.4
    per class of the task (64 for 10 classes, the single-task budget-10 K), at least 16 and
    at most 64; never more than half of the task's floats."""
    from memdistill.continual import auto_num_bases
    from memdistill.continual.shared import ragged_sizes
    from memdistill.continual.strategies import StrategyOptions

    mnist = (1, 28, 28)
    assert [auto_num_bases(b, mnist, 10, 2) for b in (1, 9.5, 10, 50)] == [16, 16, 64, 64]
    assert [auto_num_bases(10, mnist, n, 2) for n in (2, 5, 20)] == [16, 32, 64]
    assert auto_num_bases(1, mnist, 2, 2) == 4  # half of the task's 1568 floats
    assert auto_num_bases(10, mnist, 10, 1) == 50 and auto_num_bases(10, mnist, 10, 2, cap=16) == 16
    # MANY at budget 10: two 10-class tasks of 64 new bases each, 102 and 51 slots per class
    sizes = ragged_sizes(StrategyOptions(budget_ipc=10), mnist, [10, 10], 20)
    assert sizes == [(64, [102]), (128, [102, 51])]


def test_tasks_that_take_more_than_16_bases_keep_the_budget_10_schedule():
    """A 10-class task at budget 10 distills with the preset's long truncated unrolls (as a
    single-task memory of 64 bases does); 2-class tasks and budget 1 keep the budget-1
    schedule, in both strategies that distill bases, and flags still win."""
    from memdistill.config import BUDGET10_SETTINGS, base_schedule
    from memdistill.continual import create_strategy

    long = BUDGET10_SETTINGS["cpu-quick"]
    short = base_schedule("cpu-quick")
    assert short["inner.steps"] != long["inner.steps"]

    def schedule(cfg):
        keys = ("inner.steps", "outer.window", "outer.random_truncation", "outer.lr", "outer.pool_size")
        return {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in keys}

    for budget, classes, expect in ((10, 10, long), (10, 2, short), (1, 10, short)):
        shared = create_strategy("shared", budget_ipc=budget, preset="cpu-quick").task_config(0, "mnist", 48, classes)
        mem = create_strategy("memories", budget_ipc=budget, preset="cpu-quick").task_config(
            0, "mnist", (1, 28, 28), classes)
        for cfg in (shared, mem):
            assert schedule(cfg) == {k: expect[k] for k in schedule(cfg)}, (budget, classes)
        assert shared.memory.num_bases == 48  # the caller's K, not the budget-10 setting's 64
    mine = create_strategy("shared", budget_ipc=10, preset="cpu-quick", distill_overrides={"inner.steps": 50})
    assert mine.task_config(0, "mnist", 64, 10).inner.steps == 50


def test_settings_and_budgets_are_checked_before_any_work():
    from memdistill.continual import create_strategy

    b = _synthetic_benchmark()
    with pytest.raises(ConfigError, match="unknown option 'outer.iteration'"):
        create_strategy("memories", distill_overrides={"outer.iteration": 1}).check_fits(b)
    with pytest.raises(ConfigError, match="unknown preset"):
        create_strategy("images", preset="gpu-huge").check_fits(b)
    with pytest.raises(ConfigError, match="holds no image"):
        create_strategy("images", budget_ipc=0.5).check_fits(b)
    for name in ("random", "finetune", "joint"):
        create_strategy(name).check_fits(b)  # nothing to refuse


def test_every_registered_strategy_is_in_the_comparison_and_its_contract_tests():
    """``ALL_STRATEGIES`` (the order of ``--strategy all`` and of the parametrised tests
    above) holds every registered strategy, so a new one is compared and tested."""
    from memdistill.continual.strategies import STRATEGIES

    assert sorted(ALL_STRATEGIES) == STRATEGIES.names()
