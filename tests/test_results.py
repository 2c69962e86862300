"""The results script (bench/results.py): a tiny cell end to end, and the committed
docs/RESULTS.md against the JSON the script wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from memdistill.errors import ConfigError

from _bench_scripts import ROOT, doc_block, load_script


results = load_script("results")

TINY = ["--set", "outer.iterations=1", "--set", "inner.steps=2", "--set", "inner.width=8", "--set", "runs=2",
        "--set", "eval_epochs=1"]
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")


def test_tiny_cells_write_json_and_a_matching_table(tmp_path, data_root):
    out, doc = tmp_path / "cells", tmp_path / "RESULTS.md"
    rc = results.main(["--preset", "cpu-quick", "--only", "main.mnist.b1.bases,main.mnist.b1.random",
                       "--out-dir", str(out), "--mem-dir", str(tmp_path / "mem"), "--doc", str(doc),
                       "--root", str(data_root), "--no-progress", *TINY])
    assert rc == 0
    bases = json.loads((out / "main.mnist.b1.bases.json").read_text())
    rand = json.loads((out / "main.mnist.b1.random.json").read_text())
    # equal storage, counted from the saved memory file
    assert bases["floats_stored"] <= rand["floats_stored"] == 784 * 10
    assert bases["examples"] == 290 and rand["examples"] == 10
    assert len(bases["test"]["accuracies"]) == 2 and 0 <= bases["test"]["mean"] <= 1
    assert bases["iterations"] == 1 and bases["config"]["inner"]["steps"] == 2
    assert Path(bases["memory_file"]).exists()
    # the doc table shows exactly the JSON's numbers
    text = doc_block(doc.read_text(), "results-cpu-quick")
    row_b = next(line for line in text.splitlines() if line.startswith("| 1 | bases |"))
    assert f"{100 * bases['test']['mean']:.2f} ± {100 * bases['test']['std']:.2f}" in row_b
    assert f"| {bases['floats_stored']} |" in row_b
    row_r = next(line for line in text.splitlines() if line.startswith("| 1 | random |"))
    assert f"{100 * rand['test']['mean']:.2f} ± {100 * rand['test']['std']:.2f}" in row_r
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells"] == ["main.mnist.b1.bases", "main.mnist.b1.random"]
    # a second run reuses the cells (nothing recomputed) and renders the same doc
    before = doc.read_text()
    assert results.main(["--preset", "cpu-quick", "--only", "main.mnist.b1.random", "--out-dir", str(out),
                         "--mem-dir", str(tmp_path / "mem"), "--doc", str(doc), "--no-progress"]) == 0
    assert doc.read_text() == before


def test_unknown_cells_and_overrides_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown cell"):
        results.parse_cell("main.mnist.b1.nonsense")
    with pytest.raises(ConfigError, match="unknown cell"):
        results.parse_cell("main.cifar7.b1.bases")
    with pytest.raises(ConfigError, match="unknown override"):
        results.Runner("cpu-quick", tmp_path, tmp_path, overrides={"iterations": "3"})
    assert results.main(["--only", "xarch.mnist.b1.bogus", "--out-dir", str(tmp_path)]) == 2


def test_cell_names_cover_every_table():
    names = results.cell_names()
    for n in names:
        results.parse_cell(n)
    assert "main.fashion-mnist.b10.herding" in names and "main.mnist.whole" in names
    assert "speed.mnist.b10" in names and "xarch.fashion-mnist.b1.resnet18" in names
    assert {f"ablation.mnist.b1.{a}" for a in results.ABLATIONS} <= set(names)


def test_every_ablation_fits_the_mnist_budget_of_its_cell():
    """An ablation whose memory cannot be stored in budget 1 would only fail after the
    cells before it ran (as ``ds1`` with 16 full-resolution bases once did)."""
    from memdistill.memory._base import solve_slots

    for preset in results.PROTOCOLS:
        runner = results.Runner(preset, ROOT / "unused", ROOT / "unused", root=None, device="cpu",
                                overrides={}, force=False, progress=False)
        for name, (_, extra) in results.ABLATIONS.items():
            cfg = runner.distill_config("mnist", 1, "bases", extra)
            m = cfg.memory
            slots = solve_slots(m.budget_ipc, (1, 28, 28), 10, m.num_bases, m.downsample,
                                learned_labels=m.learned_labels)
            assert slots >= 1, (preset, name)


def _committed_presets():
    base = ROOT / "docs" / "bench" / "results"
    return sorted(p.name for p in base.iterdir() if (p / "summary.json").exists()) if base.exists() else []


@pytest.mark.parametrize("preset", _committed_presets())
def test_committed_results_doc_is_the_json(preset):
    """Every table of docs/RESULTS.md is rebuilt from the committed cell JSONs, and
    every number in it appears in those JSONs' rendered rows."""
    out = ROOT / "docs" / "bench" / "results" / preset
    cells = results.load_cells(out)
    tables = results.build_tables(cells)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tables"] == json.loads(json.dumps(tables)), "summary.json is stale: rerun --render"
    block = doc_block((ROOT / "docs" / "RESULTS.md").read_text(), f"results-{preset}")
    assert block == results.render_markdown(preset, tables, cells).rstrip(), "docs/RESULTS.md is stale: rerun --render"
    allowed = {tok for t in tables for row in t["rows"] for cell in row for tok in NUMBER.findall(cell)}
    allowed |= {tok for t in tables for h in t["headers"] for tok in NUMBER.findall(h)}
    for line in block.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            for tok in NUMBER.findall(line):
                assert tok in allowed, f"{tok} in {line!r} is not from the JSON"


def test_committed_results_exist():
    assert _committed_presets(), "docs/bench/results/<preset>/summary.json missing: run bench/results.py"
