"""The tuning script (bench/tune.py): it reads only the training split, and the table
in docs/RESULTS.md is the committed JSON."""

from __future__ import annotations

import json

import pytest

from _bench_scripts import ROOT, doc_block, load_script


tune = load_script("tune")


def test_a_candidate_never_reads_the_test_split(tmp_path, data_root, monkeypatch):
    real_load = tune.load_dataset
    splits = []

    def guarded(name, split, **kw):
        splits.append(split)
        assert split == "train", "the tuning script must not read the test split"
        return real_load(name, split, **kw)

    monkeypatch.setattr(tune, "load_dataset", guarded)
    doc = tmp_path / "R.md"
    # any iteration outlasts a nanosecond: one outer iteration per candidate
    rc = tune.main(["--only", "T10,T20", "--seconds", "1e-9", "--eval-epochs", "1", "--eval-runs", "2",
                    "--eval-width", "8", "--root", str(data_root), "--out-dir", str(tmp_path / "t"),
                    "--doc", str(doc), "--no-progress"])
    assert rc == 0 and splits == ["train", "train"]
    rec = json.loads((tmp_path / "t" / "mnist.b1.cpu" / "T10.json").read_text())
    assert rec["iterations"] == 1 and rec["config"]["inner"]["steps"] == 10
    assert len(rec["val"]["accuracies"]) == 2 and rec["examples"] == 290
    table = doc_block(doc.read_text(), "tuning")
    assert f"{100 * rec['val']['mean']:.2f}" in table and "`T10`" in table and "`T20`" in table


def test_unknown_candidates_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        tune.main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown candidate(s) nope" in capsys.readouterr().err


def test_committed_tuning_table_is_the_json():
    assert any(tune.OUT.glob("*/*.json")), "docs/bench/tuning/ holds no candidate: run bench/tune.py"
    block = doc_block((ROOT / "docs" / "RESULTS.md").read_text(), "tuning")
    assert block == tune.tuning_markdown().rstrip(), "docs/RESULTS.md is stale: rerun bench/tune.py --render"
