"""Reported spreads are sample standard deviations (ddof 1), in the evaluator, the tables
and the committed JSON (converted by bench/migrate_std.py)."""

from __future__ import annotations

import copy
import json
import math
import statistics

import pytest

from memdistill.evaluate import EvaluationResult, format_accuracy, sample_std

from _bench_scripts import ROOT, load_script

migrate_std = load_script("migrate_std")


def _result(accuracies):
    n = len(accuracies)
    return EvaluationResult(accuracies=accuracies, per_class=[[a] for a in accuracies], train_seconds=[1.0] * n,
                            wall_seconds=1.0, num_train_examples=10, num_test_examples=100, config={})


def test_sample_std_against_the_statistics_module():
    values = [0.91, 0.88, 0.93, 0.90, 0.87]
    assert sample_std(values) == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert sample_std([0.5, 0.7]) == pytest.approx(0.1 * math.sqrt(2), rel=1e-12)  # not 0.1 (ddof 0)
    assert sample_std([0.8]) == 0.0


def test_evaluation_result_reports_the_sample_std_and_says_so():
    res = _result([0.80, 0.84, 0.88])
    assert res.std == pytest.approx(statistics.stdev([0.80, 0.84, 0.88]))
    d = res.to_dict()
    assert d["std"] == res.std and d["std_ddof"] == 1
    assert res.summary() == "84.00 ± 4.00" and res.summary(pm="+-") == "84.00 +- 4.00"
    assert _result([0.8123]).summary() == "81.23"  # one run: no spread shown
    assert format_accuracy(0.5, 0.1, 2) == "50.00 ± 10.00"


def test_migration_recomputes_from_accuracies_or_scales_by_the_run_count():
    tree = {
        "config": {"evaluation": {"runs": 4}},
        "test": {"accuracies": [0.5, 0.7], "mean": 0.6, "std": 0.1},
        "validation": {"mean": 0.6, "std": 0.3},  # 4 runs, from the file's configuration
        "tasks": [{"mean": 0.9, "std": 0.2, "runs": 2}, {"accuracies": [0.9], "mean": 0.9, "std": 0.0}],
    }
    before = copy.deepcopy(tree)
    assert migrate_std.migrate(tree) == 4
    assert tree["test"]["std"] == pytest.approx(0.1 * math.sqrt(2))
    assert tree["validation"]["std"] == pytest.approx(0.3 * math.sqrt(4 / 3))
    assert tree["tasks"][0]["std"] == pytest.approx(0.2 * math.sqrt(2))
    assert tree["tasks"][1]["std"] == 0.0
    assert all(d["std_ddof"] == 1 for d in (tree["test"], tree["validation"], *tree["tasks"]))
    assert tree["test"]["mean"] == before["test"]["mean"]
    again = copy.deepcopy(tree)
    assert migrate_std.migrate(again) == 0 and again == tree  # idempotent
    with pytest.raises(ValueError, match="without accuracies or a run count"):
        migrate_std.migrate({"x": {"mean": 0.5, "std": 0.1}})


def test_migration_rewrites_files_once(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"test": {"accuracies": [0.5, 0.7], "mean": 0.6, "std": 0.1}}))
    assert migrate_std.main([str(tmp_path), "--check"]) == 1
    assert migrate_std.main([str(tmp_path)]) == 0
    assert json.loads(f.read_text())["test"]["std_ddof"] == 1
    assert migrate_std.main([str(tmp_path), "--check"]) == 0


def test_every_committed_result_file_holds_sample_stds():
    assert migrate_std.main([str(ROOT / "docs"), "--check"]) == 0, "run bench/migrate_std.py"
