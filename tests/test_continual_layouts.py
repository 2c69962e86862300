"""``bench/continual_layouts.py``: the committed layout table of docs/CONTINUAL.md is what
the committed JSON renders to, and says what the validation runs chose."""

from __future__ import annotations

import json

import pytest

from _bench_scripts import ROOT, doc_block, load_script, render_block


def test_committed_layout_table_is_the_json_rendered(tmp_path):
    rendered, committed = render_block(load_script("continual_layouts").render, "CONTINUAL.md",
                                       "continual_layouts", tmp_path)
    assert rendered == committed
    rows = [line.split(" | ") for line in committed.splitlines() if line.startswith("| split-")]
    assert len(rows) == 4  # two benchmarks, two budget modes
    for row in rows:
        assert row[2] == "0, 1, 2"  # three class orders each
        ragged, dense = (float(cell.split(" ± ")[0]) for cell in row[3:5])
        assert ragged > dense  # the default layout was chosen on these numbers


def test_every_layout_run_is_a_validation_run():
    for path in sorted((ROOT / "docs" / "bench" / "continual_layouts").glob("*.json")):
        text = path.read_text()
        assert '"--validation"' in text, path.name


def test_a_start_run_gives_start_rows_beside_the_distilled_ones(tmp_path):
    """``bench/continual_tables.py``: a run with ``--iterations 0`` (written by
    ``START=1 bench/continual_docs.sh``) is read as the memories' starting points, its
    strategies shown as "(start)" rows and columns in the same section, and the class
    orders counted once."""
    import json

    tables = load_script("continual_tables")
    src = ROOT / "docs" / "bench" / "continual_split-mnist_ipc1_s0.json"
    run = json.loads(src.read_text())
    start = dict(run, argv=[*run["argv"], "--iterations", "0", "--strategy", "shared,memories"],
                 results=[r for r in run["results"] if r["strategy"] in ("shared", "memories")])
    paths = [tmp_path / "continual_split-mnist_ipc1_s0.json", tmp_path / "continual_start_split-mnist_ipc1_s0.json"]
    paths[0].write_text(json.dumps(run))
    paths[1].write_text(json.dumps(start))
    assert not tables.is_start_run(run) and tables.is_start_run(start)
    assert [r.strategy for r in tables.load(paths[1])[1]] == ["shared (start)", "memories (start)"]
    groups = {("split-mnist", "per-class", 1.0): [(p, tables.load(p)) for p in paths]}
    head, _, row = tables.overview(groups).splitlines()
    assert "| shared | shared (start) | memories | memories (start) |" in head
    assert row.split(" | ")[2] == "1"  # one class order, not two runs


def test_overview_only_prints_the_overview_and_no_section(tmp_path, capsys):
    """``--overview-only`` (the stronger protocol's table in docs/CONTINUAL.md): one table,
    no section headers, no plots drawn."""
    tables = load_script("continual_tables")
    src = ROOT / "docs" / "bench" / "continual_split-mnist_ipc1_s0.json"
    tables.main(["--overview-only", "--img", str(tmp_path), str(src)])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("| benchmark | budget |") and len(out) == 3
    assert not any(line.startswith("###") for line in out) and not list(tmp_path.iterdir())
    tables.main(["--img", str(tmp_path), str(src)])
    assert "### split-mnist" in capsys.readouterr().out


@pytest.mark.parametrize("key", ["continual_val_fashion", "continual_val_fashion_b10", "continual_val_split_mnist_b1",
                                 "continual_val_split_mnist_b10", "continual_val_many_b1"])
def test_validation_tries_table_is_the_json_rendered(key):
    """docs/CONTINUAL.md's tables of the validation-split tries (Split Fashion-MNIST at
    budgets 1 and 10; the views on Split MNIST and MANY) are what
    ``bench/continual_val_table.py`` renders from the committed runs, all on the
    validation split."""
    mod = load_script("continual_val_table")
    folder = ROOT / "docs" / "bench" / key
    for path in sorted(folder.glob("*.json")):
        assert '"--validation"' in path.read_text(), path.name
    committed = doc_block((ROOT / "docs" / "CONTINUAL.md").read_text(), key)
    assert mod.table(mod.load(folder)) == committed


@pytest.mark.parametrize("name, also", [
    ("many", {}),
    ("split_fashion", {"k16": "continual_val_fashion_b10/base"}),
    ("split_mnist", {"k16": "continual_val_split_mnist_b10/base", "k16-start": "continual_val_split_mnist_b10/base-start"}),
])
def test_bases_per_task_tables_are_the_json_rendered(name, also):
    """docs/CONTINUAL.md's "Bases per task at budget 10" tables are the committed validation
    runs (with the earlier settings' runs they are compared with)."""
    mod = load_script("continual_val_table")
    bench = ROOT / "docs" / "bench"
    folder = bench / "continual_val_bases_b10" / name
    for path in sorted(folder.glob("*.json")):
        assert '"--validation"' in path.read_text(), path.name
    patterns = {k: str(bench / f"{v}_s{{order}}.json") for k, v in also.items()}
    committed = doc_block((ROOT / "docs" / "CONTINUAL.md").read_text(), f"continual_val_bases_b10_{name}")
    assert mod.table(mod.load(folder, patterns)) == committed


@pytest.mark.parametrize("name, split, also", [
    ("fashion_b1", "validation", {"base": "continual_val_fashion/base", "base-start": "continual_val_fashion/base-start"}),
    ("fashion_b10", "validation", {"base": "continual_val_fashion_b10/base"}),
    ("split_mnist_b1", "validation", {"base": "continual_val_split_mnist_b1/base",
                                      "base-start": "continual_val_split_mnist_b1/base-start"}),
    ("many_b1", "validation", {"base": "continual_val_many_b1/base", "base-start": "continual_val_many_b1/base-start"}),
    ("fashion_b1", "test", {"base": "continual_strong_split-fashion-mnist_ipc1",
                            "base-start": "continual_strong_start_split-fashion-mnist_ipc1"}),
    ("split_mnist_b1", "test", {"base": "continual_strong_split-mnist_ipc1",
                                "base-start": "continual_strong_start_split-mnist_ipc1"}),
])
def test_task_context_tables_are_the_json_rendered(name, split, also):
    """docs/CONTINUAL.md's ``--task-context`` tables are the committed runs (context on,
    on the split named) beside the runs without it they are compared with."""
    mod = load_script("continual_val_table")
    bench = ROOT / "docs" / "bench"
    folder = bench / ("continual_val_context" if split == "validation" else "continual_context_test") / name
    for path in sorted(folder.glob("*.json")):
        argv = json.loads(path.read_text())["argv"]
        assert "--task-context" in argv and ("--validation" in argv) == (split == "validation"), path.name
    patterns = {k: str(bench / f"{v}_s{{order}}.json") for k, v in also.items()}
    key = f"continual_{'val' if split == 'validation' else 'test'}_context_{name}"
    committed = doc_block((ROOT / "docs" / "CONTINUAL.md").read_text(), key)
    assert mod.table(mod.load(folder, patterns)) == committed


def test_first_task_confusion_table_is_the_json_rendered():
    """docs/CONTINUAL.md's table of where the first task's images go is what
    ``bench/continual_confusion.py --table`` renders from the committed runs (validation
    split, each row's count out of the class's images, the most-confused class of a
    later task)."""
    mod = load_script("continual_confusion")
    folder = ROOT / "docs" / "bench" / "continual_confusion"
    names = ["b1_s0", "b1_s1", "start_total_s0", "start_total_s1", "start_total_k6_s0", "start_total_k6_s1"]
    records = [json.loads((folder / f"{n}.json").read_text()) for n in names]
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(names)
    for r in records:
        assert "--validation" in r["argv"] and len(r["confusion"]) == 10
        assert sum(map(sum, r["confusion"])) == 2000
    committed = doc_block((ROOT / "docs" / "CONTINUAL.md").read_text(), "continual_confusion")
    assert mod.first_task_table(records) == committed


def _run_file(path, orders_scores):
    path.write_text(json.dumps({"results": [{"strategy": k, "final_average_accuracy": v / 100}
                                            for k, v in orders_scores.items()]}))


def test_tries_table_reads_settings_kept_elsewhere(tmp_path):
    """``--also SETTING=PATTERN`` adds runs from another place for the folder's orders;
    a missing order, a pattern without ``{order}`` and herding that two runs of one
    order disagree on are refused."""
    mod = load_script("continual_val_table")
    folder, other = tmp_path / "runs", tmp_path / "other"
    folder.mkdir(), other.mkdir()
    for order in (0, 1):
        _run_file(folder / f"views_s{order}.json", {"shared": 70.0 + order})
        _run_file(other / f"strong_s{order}.json", {"shared": 60.0 + order, "herding": 65.0})
    runs = mod.load(folder, {"base": str(other / "strong_s{order}.json")})
    lines = mod.table(runs).splitlines()
    assert lines[2] == "| herding | 65.0 | 65.0 | 65.0 | |"
    assert lines[3] == "| views | 70.0 | 71.0 | 70.5 | +5.5 |"
    assert lines[4] == "| base | 60.0 | 61.0 | 60.5 | -4.5 |"
    with pytest.raises(SystemExit, match="needs {order}"):
        mod.load(folder, {"base": str(other / "strong_s0.json")})
    (other / "strong_s1.json").unlink()
    with pytest.raises(SystemExit, match="missing"):
        mod.load(folder, {"base": str(other / "strong_s{order}.json")})
    _run_file(other / "strong_s1.json", {"shared": 61.0, "herding": 65.0})
    _run_file(folder / "views_s1.json", {"shared": 71.0, "herding": 64.0})
    with pytest.raises(SystemExit, match="disagree on herding"):
        mod.table(mod.load(folder, {"base": str(other / "strong_s{order}.json")}))


@pytest.mark.parametrize("key, folder, strong", [
    ("continual_views_fashion_b10", "fashion_b10", "split-fashion-mnist_ipc10"),
    ("continual_views_fashion_b1", "fashion_b1", "split-fashion-mnist_ipc1"),
    ("continual_views_many_b10", "many_b10", None),  # its base runs are in its folder (older than today's)
    ("continual_views_fashion_total1", "fashion_total1", "split-fashion-mnist_totalipc1"),
])
def test_views_test_tables_are_the_json_rendered(key, folder, strong):
    """docs/CONTINUAL.md's test-split tables of the projected views are the committed runs
    (test split, views on) beside the stronger protocol's runs (views off): its committed
    files, or copies kept in the folder as ``base*``."""
    mod = load_script("continual_val_table")
    runs = ROOT / "docs" / "bench" / "continual_views_test" / folder
    for path in sorted(runs.glob("*.json")):
        argv = json.loads(path.read_text())["argv"]
        views = not path.name.startswith("base")
        assert "--validation" not in argv and ("--subspace-views" in argv) == views, path.name
    bench = ROOT / "docs" / "bench"
    also = {} if strong is None else {
        "base": str(bench / f"continual_strong_{strong}_s{{order}}.json"),
        "base-start": str(bench / f"continual_strong_start_{strong}_s{{order}}.json")}
    committed = doc_block((ROOT / "docs" / "CONTINUAL.md").read_text(), key)
    assert mod.table(mod.load(runs, also)) == committed


@pytest.mark.parametrize("name, split, also", [
    ("val_fashion_b1", "validation", {"base": "continual_val_fashion/base",
                                      "base-start": "continual_val_fashion/base-start",
                                      "ctx": "continual_val_context/fashion_b1/ctx",
                                      "bal-start": "continual_val_fashion/bal-start"}),
    ("test_fashion_b1", "test", {"base": "continual_strong_split-fashion-mnist_ipc1",
                                 "base-start": "continual_strong_start_split-fashion-mnist_ipc1",
                                 "views": "continual_views_test/fashion_b1/views"}),
    ("test_fashion_total1", "test", {"base": "continual_strong_split-fashion-mnist_totalipc1",
                                     "base-start": "continual_strong_start_split-fashion-mnist_totalipc1"}),
    ("test_fashion_b10", "test", {"base": "continual_strong_split-fashion-mnist_ipc10",
                                  "base-start": "continual_strong_start_split-fashion-mnist_ipc10",
                                  "views": "continual_views_test/fashion_b10/views",
                                  "views-start": "continual_views_test/fashion_b10/views-start"}),
    ("val_split_mnist_b1", "validation", {"base": "continual_val_split_mnist_b1/base",
                                          "base-start": "continual_val_split_mnist_b1/base-start"}),
    ("val_many_b1", "validation", {"base": "continual_val_many_b1/base",
                                   "base-start": "continual_val_many_b1/base-start"}),
    ("test_fashion_b1_more", "test", {}),  # orders 3 and 4: its base runs are in its folder
])
def test_fill_later_tables_are_the_json_rendered(name, split, also):
    """docs/CONTINUAL.md's ``--fill-later`` tables are the committed runs (the option on,
    on the split named) beside the runs without it they are compared with."""
    mod = load_script("continual_val_table")
    bench = ROOT / "docs" / "bench"
    folder = bench / "continual_fill" / name
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text())
        argv = record["argv"]
        fill = not path.name.startswith("base")
        assert ("--fill-later" in argv) == fill and ("--validation" in argv) == (split == "validation"), path.name
        assert record["options"]["fill_later"] is fill, path.name
    patterns = {k: str(bench / f"{v}_s{{order}}.json") for k, v in also.items()}
    committed = doc_block((ROOT / "docs" / "CONTINUAL.md").read_text(), f"continual_fill_{name}")
    assert mod.table(mod.load(folder, patterns)) == committed
