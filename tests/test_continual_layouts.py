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
