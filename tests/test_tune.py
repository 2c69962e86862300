"""The tuning script (bench/tune.py): it reads only the training split, and the table
in docs/RESULTS.md is the committed JSON."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_tune", ROOT / "bench" / "tune.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_tune"] = mod
    spec.loader.exec_module(mod)
    return mod


tune = _load_script()


def _block(text: str, key: str) -> str:
    m = re.search(rf"<!-- {re.escape(key)}:start -->\n(.*?)\n<!-- {re.escape(key)}:end -->", text, re.S)
    assert m, f"block {key} missing"
    return m.group(1)


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
    table = _block(doc.read_text(), "tuning")
    assert f"{100 * rec['val']['mean']:.2f}" in table and "`T10`" in table and "`T20`" in table


def test_unknown_candidates_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        tune.main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown candidate(s) nope" in capsys.readouterr().err


def test_committed_tuning_table_is_the_json():
    assert any(tune.OUT.glob("*/*.json")), "docs/bench/tuning/ holds no candidate: run bench/tune.py"
    block = _block((ROOT / "docs" / "RESULTS.md").read_text(), "tuning")
    assert block == tune.tuning_markdown().rstrip(), "docs/RESULTS.md is stale: rerun bench/tune.py --render"
