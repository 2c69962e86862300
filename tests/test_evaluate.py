"""The retrain-and-test evaluator and the reference selections, on real MNIST."""

from __future__ import annotations

import math

import pytest
import torch

from memdistill.errors import ConfigError
from memdistill.evaluate import (
    TrainConfig,
    TrainingSet,
    evaluate,
    herding_order,
    run_seeds,
    select_subset,
    train_network,
)

SMALL = TrainConfig(arch="convnet", arch_options={"width": 16}, epochs=15, batch_size=64)


@pytest.fixture(scope="module")
def small_test(mnist_test):
    return mnist_test.subset(torch.arange(2000))


def test_select_random_gives_k_per_class_and_depends_on_seed(mnist_train):
    a = select_subset(mnist_train, 10, "random", seed=1)
    b = select_subset(mnist_train, 10, "random", seed=1)
    c = select_subset(mnist_train, 10, "random", seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.bincount(mnist_train.labels[a], minlength=10), torch.full((10,), 10))
    assert len(set(a.tolist())) == 100


def test_select_all_and_bad_ipc(mnist_train):
    assert len(select_subset(mnist_train, None, "all")) == len(mnist_train)
    with pytest.raises(ConfigError, match="ipc"):
        select_subset(mnist_train, 0, "random")
    with pytest.raises(ConfigError, match="choose ipc <="):
        select_subset(mnist_train, 100000, "herding")
    with pytest.raises(ConfigError, match="valid choices: all, herding, random"):
        select_subset(mnist_train, 1, "kmeans")


def _herding_brute_force(features: torch.Tensor, k: int) -> list[int]:
    mu = features.mean(0)
    chosen: list[int] = []
    for _ in range(k):
        best, best_d = -1, math.inf
        for i in range(features.shape[0]):
            if i in chosen:
                continue
            d = float((features[chosen + [i]].mean(0) - mu).norm())
            if d < best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_herding_matches_brute_force_definition():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 7, generator=g, dtype=torch.float64)
    assert herding_order(feats, 8).tolist() == _herding_brute_force(feats, 8)


def test_herding_mean_closer_than_random(mnist_train):
    idx_h = select_subset(mnist_train, 5, "herding")
    idx_r = select_subset(mnist_train, 5, "random", seed=0)
    c0 = mnist_train.indices_of_class(0)
    mu = mnist_train.batch(c0)[0].flatten(1).mean(0)

    def gap(idx):
        sel = idx[mnist_train.labels[idx] == 0]
        return float((mnist_train.batch(sel)[0].flatten(1).mean(0) - mu).norm())

    assert gap(idx_h) < gap(idx_r)


def test_evaluate_is_deterministic_under_a_seed(mnist_train, small_test):
    subset = mnist_train.subset(select_subset(mnist_train, 5, "random", seed=0))
    r1 = evaluate(subset, small_test, SMALL, runs=2, seed=3)
    r2 = evaluate(subset, small_test, SMALL, runs=2, seed=3)
    r3 = evaluate(subset, small_test, SMALL, runs=2, seed=4)
    assert r1.accuracies == r2.accuracies
    assert r1.per_class == r2.per_class
    assert r1.accuracies != r3.accuracies
    assert r1.accuracies[0] != r1.accuracies[1]  # runs are independently initialised


def test_evaluate_does_not_touch_global_rng(mnist_train, small_test):
    subset = mnist_train.subset(select_subset(mnist_train, 2, "random", seed=0))
    before = torch.get_rng_state()
    evaluate(subset, small_test, TrainConfig(arch_options={"width": 8}, epochs=2), runs=1)
    assert torch.equal(before, torch.get_rng_state())


def test_sanity_floor_random_ten_per_class(mnist_train, mnist_test):
    """10 random real MNIST images per class with a small ConvNet: far above chance."""
    subset = mnist_train.subset(select_subset(mnist_train, 10, "random", seed=0))
    cfg = TrainConfig(arch_options={"width": 32}, epochs=150)
    res = evaluate(subset, mnist_test, cfg, runs=1, seed=0)
    assert res.mean > 0.6, res.accuracies
    assert len(res.per_class[0]) == 10 and min(res.per_class[0]) >= 0.0
    assert res.num_test_examples == 10000 and res.num_train_examples == 100
    assert res.wall_seconds > 0 and len(res.train_seconds) == 1


def test_one_hot_soft_labels_train_like_hard_labels(mnist_train):
    subset = mnist_train.subset(select_subset(mnist_train, 3, "random", seed=0))
    x, y = subset.batch()
    hard = TrainingSet(x, y)
    soft = TrainingSet(x, torch.nn.functional.one_hot(y, 10).float())
    cfg = TrainConfig(arch_options={"width": 8}, epochs=5, batch_size=16)
    m1 = train_network(hard, 10, cfg, torch.Generator().manual_seed(0))
    m2 = train_network(soft, 10, cfg, torch.Generator().manual_seed(0))
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-4, atol=1e-5)


def test_training_from_dataset_equals_training_from_normalised_tensors(mnist_train):
    subset = mnist_train.subset(select_subset(mnist_train, 2, "random", seed=0))
    cfg = TrainConfig(arch_options={"width": 8}, epochs=3, batch_size=8, augment="flip_rotate")
    m1 = train_network(TrainingSet(subset), 10, cfg, torch.Generator().manual_seed(5))
    m2 = train_network(TrainingSet(*subset.batch()), 10, cfg, torch.Generator().manual_seed(5))
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


def test_bad_training_input_is_refused(mnist_test):
    x = torch.zeros(4, 1, 28, 28)
    with pytest.raises(ConfigError, match="NaN"):
        TrainingSet(torch.full_like(x, float("nan")), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="labels must be"):
        TrainingSet(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="float tensor"):
        TrainingSet(x.to(torch.uint8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="shape"):
        evaluate(TrainingSet(torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)), mnist_test)
    with pytest.raises(ConfigError, match="soft labels have 5 columns"):
        evaluate(TrainingSet(x, torch.full((4, 5), 0.2)), mnist_test)
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)


def test_run_seeds_are_distinct_and_stable():
    assert run_seeds(0, 5) == run_seeds(0, 5)
    assert len(set(run_seeds(0, 5))) == 5
    assert run_seeds(0, 3) != run_seeds(1, 3)


def test_training_options_evaluate_exactly_like_the_train_config_they_stand_for(mnist_train, small_test):
    """``DistillConfig.evaluation`` passed as is trains the same networks, bit for bit, as
    the TrainConfig that distillation used to copy out of it field by field."""
    from memdistill.config import EvalConfig
    from memdistill.models import supported_options

    subset = mnist_train.subset(select_subset(mnist_train, 2, "random", seed=0))
    ec = EvalConfig(width=8, epochs=2, batch_size=16, augment="flip_rotate", runs=2)
    by_hand = TrainConfig(arch=ec.arch, arch_options=supported_options(ec.arch, width=ec.width), epochs=ec.epochs,
                          lr=ec.lr, batch_size=ec.batch_size, augment=ec.augment)
    assert TrainConfig.from_options(ec) == by_hand
    a = evaluate(subset, small_test, ec, runs=ec.runs, seed=3)
    b = evaluate(subset, small_test, by_hand, runs=ec.runs, seed=3)
    assert a.accuracies == b.accuracies and a.per_class == b.per_class and a.config == b.config


def test_batch_norm_evaluation_networks_are_refused():
    """Without running statistics a batch-norm network is tested with each test batch's
    statistics (accuracy depending on the test batch size): the evaluator refuses it."""
    with pytest.raises(ConfigError, match="norm='batch'.*running statistics"):
        TrainConfig(arch="convnet", arch_options={"norm": "batch"})
    TrainConfig(arch="convnet", arch_options={"norm": "group"})  # every other norm is fine


def test_converged_rule():
    from memdistill.evaluate import converged

    falling = [2.0 * 0.9 ** e for e in range(20)]  # last window's mean 65% of the one before
    assert not converged(falling[:9]) and not converged(falling)
    assert converged([1.0] * 20) and not converged([1.0] * 19)  # a plateau needs two windows
    assert converged([1.0] * 10 + [0.995] * 10)  # 0.5% lower: within tol
    assert not converged([1.0] * 10 + [0.98] * 10)
    assert converged([0.09] * 10)  # fitted: under 0.1 nats
    assert not converged([0.09 + 0.5] * 10) and converged([0.09 + 0.5] * 10, floor=0.5)  # soft labels' entropy
    assert not converged([0.09] * 10, target=0.05)


def test_converge_schedule_stops_early_on_the_fixed_schedule_path(mnist_train, small_test):
    """A converged network is the fixed-schedule network of the same number of epochs
    (same generator draws), trained on 100 images; the cap is respected."""
    from memdistill.evaluate import fit_network

    data = TrainingSet(mnist_train.subset(select_subset(mnist_train, 10, "random", seed=0)))
    cfg = TrainConfig(arch="convnet", arch_options={"width": 8}, epochs=200, schedule="converge",
                      converge_window=5, converge_loss=1.0)
    model, losses = fit_network(data, 10, cfg, torch.Generator().manual_seed(0))
    assert 5 <= len(losses) < 200 and sum(losses[-5:]) / 5 < 1.0 < sum(losses[-6:-1]) / 5
    fixed = train_network(data, 10, TrainConfig(arch="convnet", arch_options={"width": 8}, epochs=len(losses)),
                          torch.Generator().manual_seed(0))
    for a, b in zip(model.parameters(), fixed.parameters()):
        assert torch.equal(a, b)
    capped = dict(vars(cfg), epochs=7)
    assert len(fit_network(data, 10, TrainConfig(**capped), torch.Generator().manual_seed(0))[1]) == 7
    res = evaluate(data, small_test, cfg, runs=2, seed=0)
    assert len(res.epochs_run) == 2 and all(e < 200 for e in res.epochs_run)
    assert evaluate(data, small_test, TrainConfig(**dict(vars(cfg), schedule="fixed", epochs=3)),
                    runs=1).epochs_run == [3]


def test_bad_schedule_is_refused():
    with pytest.raises(ConfigError, match="schedule='auto' is invalid; valid: 'fixed', 'converge'"):
        TrainConfig(schedule="auto")
    with pytest.raises(ConfigError, match="converge_tol must be in"):
        TrainConfig(converge_tol=0.0)


def test_training_set_on_its_own_device_is_itself():
    """(Moving to another device: tests/test_cuda.py, the continual CLI on CUDA.)"""
    from memdistill.evaluate import TrainingSet

    ts = TrainingSet(torch.randn(6, 1, 4, 4), torch.arange(6) % 3)
    assert ts.to("cpu") is ts and ts.to(torch.device("cpu")) is ts


@pytest.mark.parametrize("epochs", [1, 2, 7, 300])
def test_epoch_lr_follows_torch_schedulers(epochs):
    """``step`` is ``MultiStepLR`` with one milestone at half the epochs, x0.1 (the
    DC/DSA/MTT evaluation protocol); ``cosine`` is ``CosineAnnealingLR`` down to 0."""
    from memdistill.evaluate import epoch_lr

    for schedule, make in [("step", lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [epochs // 2], 0.1)),
                           ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, epochs)),
                           ("constant", lambda o: torch.optim.lr_scheduler.ConstantLR(o, 1.0, epochs))]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.03)
        ref = make(opt)
        for e in range(epochs):
            assert epoch_lr(0.03, schedule, e, epochs) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12,
                                                                        abs=1e-15), (schedule, e)
            opt.step()
            ref.step()


def test_lr_schedules_change_training_only_where_they_lower_the_rate(mnist_train):
    """With one step per epoch, ``step`` trains the first half exactly like ``constant``
    and then differently; ``cosine`` differs from the second epoch on."""
    from memdistill.evaluate import fit_network

    data = TrainingSet(mnist_train.subset(select_subset(mnist_train, 2, "random", seed=0)))

    def params(schedule, stop):
        cfg = TrainConfig(arch="convnet", arch_options={"width": 8}, epochs=6, batch_size=64, lr_schedule=schedule)
        model, _ = fit_network(data, 10, cfg, torch.Generator().manual_seed(0), on_step=lambda s, m: s >= stop)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(params("step", 3), params("constant", 3))
    assert not torch.equal(params("step", 4), params("constant", 4))
    assert torch.equal(params("cosine", 1), params("constant", 1))
    assert not torch.equal(params("cosine", 2), params("constant", 2))


def test_bad_lr_schedule_is_refused():
    from memdistill.config import resolve

    with pytest.raises(ConfigError, match="lr_schedule='linear' is invalid; valid: 'constant', 'step', 'cosine'"):
        TrainConfig(lr_schedule="linear")
    with pytest.raises(ConfigError, match="evaluation.lr_schedule must be one of constant, step, cosine"):
        resolve("cpu", "mnist", sets=[("evaluation.lr_schedule", "linear")])
