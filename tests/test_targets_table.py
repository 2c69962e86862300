"""``bench/targets.py``: docs/RESULTS.md's Targets table is what the committed cells render
to, every cell retrains its starting point, herding and random real images as many times
as the memory, and ``--reuse-memory`` refuses a memory of another seed."""

from __future__ import annotations

import json

import pytest

from _bench_scripts import ROOT, load_script, render_block

CELLS = ROOT / "docs" / "bench" / "targets"


def test_committed_targets_table_is_the_json_rendered(tmp_path):
    rendered, committed = render_block(load_script("targets").render, "RESULTS.md", "targets", tmp_path)
    assert rendered == committed
    rows = [line for line in committed.splitlines() if line.startswith("| `cpu")]
    assert len(rows) == len(list(CELLS.glob("*.json"))) == 8


def test_every_cell_has_its_references_and_verdict():
    mod = load_script("targets")
    for path in sorted(CELLS.glob("*.json")):
        cell = json.loads(path.read_text())
        res = cell["evaluation"]["results"]["convnet"]
        runs = len(res["memory"]["accuracies"])
        for ref in ("starting_point", "herding_real", "random_real"):
            assert len(res[ref]["accuracies"]) == runs, (path.name, ref)
        assert cell["target"] is None or f"| {cell['target']:g} | " in mod.row(cell)


def test_reuse_memory_refuses_a_file_of_another_seed(tmp_path, monkeypatch):
    """``--reuse-memory`` evaluates a memory an earlier run of the cell left only if that
    run used the same seed; otherwise it stops before evaluating anything."""
    mod = load_script("targets")
    monkeypatch.setattr(mod, "MEMORIES", tmp_path)
    (tmp_path / "cpu.mnist.1.mem.safetensors").write_bytes(b"")
    (tmp_path / "cpu.mnist.1.mem.config.json").write_text(json.dumps({"seed": 3}))
    ran = []
    monkeypatch.setattr(mod, "_run", lambda argv, threads: ran.append(argv))
    args = mod.argparse.Namespace(seed=0, runs=1, threads=1, reuse_memory=True)
    with pytest.raises(SystemExit, match="seed 3, not 0"):
        mod.run_cell("cpu.mnist.1", args)
    assert ran == []
