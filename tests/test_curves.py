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
