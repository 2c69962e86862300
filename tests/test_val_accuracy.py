"""bench/val_accuracy.py: a memory file's validation accuracy under its own run's evaluator
is the number the distillation recorded for it."""

from __future__ import annotations

import json

import pytest

from _bench_scripts import load_script
from _cli_args import tiny_distill_args
from memdistill.cli import main
from memdistill.memory.file import load_memory


@pytest.mark.slow
def test_a_files_validation_accuracy_is_the_one_its_distillation_recorded(data_root, tmp_path):
    out = tmp_path / "m.mem.safetensors"
    assert main([*tiny_distill_args(data_root, out), "--set", "outer.average=0.5"]) == 0
    recorded = load_memory(out).meta["metrics"]["validation"]["mean"]
    script = load_script("val_accuracy")
    js = tmp_path / "v.json"
    assert script.main([str(out), str(tmp_path / "m.mem.last.safetensors"), "--runs", "1", "--root", str(data_root),
                        "--out", str(js)]) == 0
    res = json.loads(js.read_text())["results"]
    assert res["m.mem.safetensors"]["mean"] == pytest.approx(recorded, abs=1e-12)
    assert res["m.mem.safetensors"]["split"] == "val" and 0 <= res["m.mem.last.safetensors"]["mean"] <= 1
