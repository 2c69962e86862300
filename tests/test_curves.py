"""bench/curves.py: the method arguments and the committed curve files."""

from __future__ import annotations

import json

import pytest

from _bench_scripts import ROOT, doc_block, load_script

curves = load_script("curves")


def test_extra_methods_parse_to_typed_settings():
    got = curves.parse_methods(["fresh-mb4:outer.pool_size=0,outer.lr=0.001,memory.learned_labels=true",
                                "plain:"])
    assert got == {"fresh-mb4": {"outer.pool_size": 0, "outer.lr": 0.001, "memory.learned_labels": True},
                   "plain": {}}


@pytest.mark.parametrize("bad, words", [("nocolon", "NAME:KEY=VALUE"), ("x:outer.lr", "NAME:KEY=VALUE"),
                                        (":outer.lr=1", "NAME:KEY=VALUE"), ("pool:outer.lr=1", "built-in")])
def test_bad_extra_methods_are_refused_with_the_expected_form(bad, words):
    with pytest.raises(SystemExit, match=words):
        curves.parse_methods([bad])


def test_each_committed_curve_file_is_the_table_in_the_results_doc():
    files = sorted((ROOT / "docs" / "bench").glob("curves_*.json"))
    assert files, "no committed curve files"
    doc = (ROOT / "docs" / "RESULTS.md").read_text()
    for path in files:
        result = json.loads(path.read_text())
        block = doc_block(doc, path.stem)
        assert block == curves.markdown(result, f"img/{path.stem}.png"), f"{path.name}: run bench/curves.py --render"
        assert (ROOT / "docs" / "img" / f"{path.stem}.png").exists()
        for m, points in result["curves"].items():
            assert m in result["methods"] and len(points) == result["slices"]
            assert all(p["std_ddof"] == 1 for p in points)


def test_a_method_with_another_memory_is_read_against_its_own_starting_point():
    """Two methods whose memories differ (K = 4 against K = 8 bases) get their own
    starting points, evaluated once each; a method that changes neither memory nor
    evaluator shares the first one's, and the table reads each against its own."""
    args = curves.argparse.Namespace(
        dataset="mnist", budget_ipc=1.0, preset="cpu-quick", seconds=0.5, slices=1, eval_runs=1, seed=0, root=None,
        only="", no_herding=True, set=["evaluation.epochs=2", "evaluation.width=8", "inner.width=8",
                                        "outer.real_per_class=2", "outer.pool_size=0", "inner.steps=2"],
        method=["k4:memory.num_bases=4", "k4-lr:memory.num_bases=4,outer.lr=0.001", "k8:memory.num_bases=8"])
    result = curves.run_curves(args)
    starts = result["starts"]
    assert set(starts) == {"k4", "k4-lr", "k8"} and "herding" not in result
    assert starts["k4"] is starts["k4-lr"] and starts["k4"] is not starts["k8"]
    assert starts["k4"]["mean"] != starts["k8"]["mean"]
    table = curves.markdown(result, "img/x.png")
    for m, points in result["curves"].items():
        delta = 100 * points[0]["mean"] - 100 * starts[m]["mean"]
        assert f"| {m} |" in table and f"{delta:+.2f} |" in table
    assert "starting points k4 **" in table


def test_an_averaging_method_is_drawn_with_its_last_iterate_which_is_the_plain_run():
    """With ``outer.average`` a method delivers the moving average; its last iterate is
    evaluated beside it as ``NAME/last``, and (averaging never changes the path) scores
    exactly what the same method without averaging scores after as many outer steps."""
    args = curves.argparse.Namespace(
        dataset="mnist", budget_ipc=1.0, preset="cpu-quick", seconds=600.0, slices=1, eval_runs=1, seed=0,
        root=None, only="", no_herding=True,
        set=["evaluation.epochs=30", "evaluation.width=8", "inner.width=8", "outer.real_per_class=2",
             "outer.pool_size=0", "inner.steps=2", "outer.iterations=3"],
        method=["plain:outer.lr=0.3", "avg:outer.lr=0.3,outer.average=0.5"])
    result = curves.run_curves(args)
    assert list(result["curves"]) == ["plain", "avg", "avg/last"]
    assert result["methods"]["avg/last"] == {"outer.lr": 0.3, "outer.average": 0.5, "last_iterate": True}
    assert result["starts"]["avg/last"] == result["starts"]["avg"] == result["starts"]["plain"]
    plain, avg, last = (result["curves"][m][0] for m in ("plain", "avg", "avg/last"))
    assert plain["iterations"] == avg["iterations"] == last["iterations"] == 3
    assert last["mean"] == plain["mean"] != result["starts"]["plain"]["mean"]
    assert avg["mean"] != last["mean"]  # two memories: the average is not the last iterate
    assert "| avg/last |" in curves.markdown(result, "img/x.png")


def _run(method: str, start: float, **extra):
    point = {"seconds": 10.0, "iterations": 3, "mean": start + 0.05, "std": 0.0, "std_ddof": 1}
    return {"dataset": "mnist", "budget_ipc": 1.0, "preset": "cpu", "seed": 0, "seconds": 10.0, "slices": 1,
            "eval_runs": 1, "split": "val", "extra_sets": [], "torch_threads": 1, "methods": {method: {"k": 1}},
            "curves": {method: [point]}, "start": {"split": "val", "mean": start, "std": 0.0, "std_ddof": 1},
            "machine": "m", "date": "d", "command": f"python bench/curves.py --method {method}:k=1", **extra}


def test_runs_of_one_protocol_merge_into_one_table_with_their_own_starts_and_commands():
    herding = {"mean": 0.5, "std": 0.0, "std_ddof": 1, "images_per_class": 1}
    merged = curves.merge([_run("a", 0.6, herding=herding), _run("b", 0.7)])
    merged["merge_command"] = "python bench/curves.py --merge x y"
    assert list(merged["curves"]) == ["a", "b"] and merged["herding"] == herding
    assert merged["starts"]["a"]["mean"] == 0.6 and merged["starts"]["b"]["mean"] == 0.7
    table = curves.markdown(merged, "img/x.png")
    assert table.count("| +5.00 |") == 2  # each method against its own start
    assert "`python bench/curves.py --method a:k=1`; `python bench/curves.py --method b:k=1`" in table
    assert "starting points a **60.00%**, b **70.00%**" in table


@pytest.mark.parametrize("change, words", [({"seconds": 20.0}, "differ in 'seconds'"),
                                           ({"dataset": "fashion-mnist"}, "differ in 'dataset'")])
def test_runs_of_other_protocols_or_clashing_names_are_not_merged(change, words):
    with pytest.raises(SystemExit, match=words):
        curves.merge([_run("a", 0.6), {**_run("b", 0.7), **change}])
    with pytest.raises(SystemExit, match="more than one run"):
        curves.merge([_run("a", 0.6), _run("a", 0.7)])


def test_each_committed_merged_curve_file_is_the_merge_of_its_committed_parts():
    merged_files = [p for p in sorted((ROOT / "docs" / "bench").glob("curves_*.json"))
                    if "commands" in json.loads(p.read_text())]
    assert merged_files, "no committed merged curve file"
    for path in merged_files:
        result = json.loads(path.read_text())
        argv = curves.shlex.split(result["merge_command"])
        parts = curves.parser().parse_args(argv[2:]).merge  # after "python bench/curves.py"
        again = curves.merge([json.loads((ROOT / part).read_text()) for part in parts])
        again["merge_command"] = result["merge_command"]
        assert again == result, f"{path.name}: rerun its merge_command"
