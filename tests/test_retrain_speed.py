"""bench/retrain_speed.py: its table from a record, and the committed block against its JSON."""

from __future__ import annotations

import json

from _bench_scripts import ROOT, doc_block, load_script

speed = load_script("retrain_speed")


def _record():
    return {"command": "python bench/retrain_speed.py m", "machine": "m", "date": "d", "memory_file": "m",
            "examples": 290, "width": 32,
            "memory": {"fixed": {"epochs_run": 300, "accuracy": 0.80, "train_seconds": 90.0,
                                 "seconds_to_own_final": 60.0},
                       "converge": {"epochs_run": 100, "accuracy": 0.81, "train_seconds": 30.0}},
            "whole": {"examples": 60000, "max_epochs": 2, "check_every_steps": 10,
                      "curve": [[10, 5.0, 0.5], [20, 12.0, 0.805], [30, 20.0, 0.9]]}}


def test_table_reads_times_off_the_whole_data_curve():
    rows = speed.markdown(_record()).splitlines()[-2:]
    assert rows[0] == "| `fixed` | 300 | 80.00 | 90.0 | 60.0 | 12.0 | 0.20 |"
    assert rows[1] == "| `converge` | 100 | 81.00 | 30.0 | 30.0 | 20.0 | 0.67 |"
    assert speed.seconds_to(_record()["whole"]["curve"], 0.95) is None


def test_committed_block_matches_the_json():
    path = ROOT / "docs" / "bench" / "retrain_speed.json"
    block = doc_block((ROOT / "docs" / "RESULTS.md").read_text(), "retrain-speed")
    if not path.exists():
        assert block == "(not measured yet)", "docs/RESULTS.md shows a retrain-speed table without its JSON"
        return
    assert block == speed.markdown(json.loads(path.read_text())), "rerun bench/retrain_speed.py --render"
