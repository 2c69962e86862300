"""``bench/continual_layouts.py``: the committed layout table of docs/CONTINUAL.md is what
the committed JSON renders to, and says what the validation runs chose."""

from __future__ import annotations

import shutil

from _bench_scripts import ROOT, doc_block, load_script


def test_committed_layout_table_is_the_json_rendered(tmp_path):
    mod = load_script("continual_layouts")
    doc = tmp_path / "CONTINUAL.md"
    shutil.copy(ROOT / "docs" / "CONTINUAL.md", doc)
    mod.render(doc)
    committed = doc_block((ROOT / "docs" / "CONTINUAL.md").read_text(), "continual_layouts")
    assert doc_block(doc.read_text(), "continual_layouts") == committed
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


def test_split_fashion_tries_table_is_the_json_rendered():
    """docs/CONTINUAL.md's table of the Split Fashion-MNIST tries is what
    ``bench/continual_val_table.py`` renders from the committed runs, all on the
    validation split."""
    mod = load_script("continual_val_table")
    folder = ROOT / "docs" / "bench" / "continual_val_fashion"
    for path in sorted(folder.glob("*.json")):
        assert '"--validation"' in path.read_text(), path.name
    committed = doc_block((ROOT / "docs" / "CONTINUAL.md").read_text(), "continual_val_fashion")
    assert mod.table(mod.load(folder)) == committed
