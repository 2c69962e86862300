"""The opt-in bfloat16 inner network (``inner.precision``): off by default, refused where
the device cannot run it, and a meta-gradient close to (not equal to) float32's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import memdistill.engine.precision as precision
from memdistill.config import DistillConfig, resolve
from memdistill.distill import Distiller
from memdistill.engine import INNER_PRECISIONS, with_precision
from memdistill.errors import ConfigError

from test_distill import _tiny, small_train  # noqa: F401 (small_train: a fixture)


def test_float32_is_the_default_everywhere_and_leaves_the_forward_as_it_is():
    assert DistillConfig().inner.precision == "float32" and INNER_PRECISIONS == ("float32", "bfloat16")
    for preset in ("paper", "cpu", "cpu-quick"):
        for budget in (1, 10):
            assert resolve(preset, "mnist", budget).inner.precision == "float32"

    def forward(params, x):
        return x

    assert with_precision(forward, "float32", torch.device("cpu")) is forward


def test_an_unknown_precision_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"inner.precision must be one of float32, bfloat16.*got 'fp16'"):
        _tiny(**{"inner.precision": "fp16"}).validate()


def test_bfloat16_is_refused_where_the_device_has_no_kernels(small_train, monkeypatch):
    monkeypatch.setattr(precision, "bfloat16_support", lambda device: (False, "this CPU has no oneDNN kernels"))
    with pytest.raises(ConfigError, match=r"inner.precision=bfloat16 cannot run here: this CPU has no oneDNN "
                                          r"kernels.*inner.precision=float32"):
        Distiller(_tiny(**{"inner.precision": "bfloat16"}), small_train)


def test_an_unsupported_device_type_says_which_are():
    ok, why = precision.bfloat16_support(torch.device("meta"))
    assert not ok and "cuda and cpu" in why


def test_the_bfloat16_meta_gradient_is_close_to_float32s_but_not_equal(small_train, monkeypatch):
    """Same memory, same outer iteration (network, slots, real batch): the meta-gradient
    of the bfloat16 network points the same way as float32's, and really is computed
    at the lower precision (it differs). The memory and its gradient stay float32."""
    monkeypatch.setattr(precision, "bfloat16_support", lambda device: (True, ""))  # runs emulated if need be
    over = {"inner.width": 16, "inner.steps": 4, "inner.augment": "none"}
    engines = {p: Distiller(_tiny(**over, **{"inner.precision": p}), small_train) for p in INNER_PRECISIONS}
    memory = engines["float32"].new_memory()
    res = {p: d.meta_step(memory, 0) for p, d in engines.items()}
    a, b = (torch.cat([g.flatten() for g in res[p].grads]) for p in INNER_PRECISIONS)
    assert all(g.dtype == torch.float32 for g in res["bfloat16"].grads)
    assert all(t.dtype == torch.float32 for t in memory.tensors.values())
    assert not torch.equal(a, b)
    assert float(F.cosine_similarity(a, b, dim=0)) > 0.98
    assert res["bfloat16"].loss == pytest.approx(res["float32"].loss, rel=0.02)


def test_the_benchmark_script_writes_its_json_and_doc_block(tmp_path, monkeypatch):
    """``bench/precision.py`` end to end at a toy size: both engines timed on the same
    iterations, the cosine of their meta-gradients recorded, the block rendered."""
    from _bench_scripts import doc_block, load_script

    monkeypatch.setattr(precision, "bfloat16_support", lambda device: (True, ""))
    bench = load_script("precision")
    out, doc = tmp_path / "precision.json", tmp_path / "BENCH.md"
    assert bench.main(["--steps", "2", "--widths", "8", "--rounds", "2", "--out", str(out), "--doc", str(doc)]) == 0
    import json

    res = json.loads(out.read_text())
    (cell,) = res["cells"]
    assert cell["steps"] == 2 and all(len(cell["seconds"][p]) == 2 for p in INNER_PRECISIONS)
    assert len(cell["gradient_cosine"]) == 2 and all(0.95 < c <= 1 for c in cell["gradient_cosine"])
    assert cell["speedup"] == pytest.approx(cell["median_seconds"]["float32"] / cell["median_seconds"]["bfloat16"])
    block = doc_block(doc.read_text(), "precision")
    assert "python bench/precision.py --steps 2" in block and f"| 8 | 2 | {cell['median_seconds']['float32']:.2f} |" in block


def test_the_engine_comparison_runs_a_landed_commit_beside_the_working_tree(tmp_path):
    """``bench/engine_compare.py`` at a toy size: the baseline really is the exported
    commit (each worker says which memdistill it imported), the two take turns, and
    the block names both and the settings of each side."""
    import json

    from _bench_scripts import ROOT, doc_block, load_script

    bench = load_script("engine_compare")
    out, doc = tmp_path / "ec.json", tmp_path / "BENCH.md"
    assert bench.main(["--baseline", "HEAD", "--steps", "2", "--width", "8", "--rounds", "2", "--threads", "2",
                       "--candidate-set", "inner.n_per_class=3", "--out", str(out), "--doc", str(doc)]) == 0
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    assert res["threads"] == 2 and row["baseline_threads"] == row["candidate_threads"] == [2]  # every worker's own
    assert len(row["baseline_seconds"]) == len(row["candidate_seconds"]) == 2
    assert row["speedup"] == pytest.approx(row["baseline_median_seconds"] / row["candidate_median_seconds"])
    assert res["sets"] == {"baseline": {}, "candidate": {"inner.n_per_class": 3}}
    assert len(res["baseline_commit"]) == 40 and (ROOT / ".git").exists()
    block = doc_block(doc.read_text(), "engine-compare")
    assert f"commit `{res['baseline_commit'][:10]}`, default settings" in block and "inner.n_per_class=3" in block
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.main(["--candidate-set", "precision", "--out", str(out), "--doc", str(doc)])


def test_channels_last_gives_the_same_meta_gradient_to_float32_rounding(small_train):
    """``channels_last=true`` (NHWC activations, on any device) changes the memory layout
    of the inner network's activations, not the arithmetic: same meta-gradient up to
    float32 rounding on the same iteration."""
    over = {"inner.width": 16, "inner.steps": 4, "inner.augment": "none"}
    a, b = (Distiller(_tiny(**over, channels_last=cl), small_train) for cl in (False, True))
    memory = a.new_memory()
    ga, gb = (torch.cat([g.flatten() for g in d.meta_step(memory, 0).grads]) for d in (a, b))
    assert float(ga.abs().sum()) > 0
    assert float((ga - gb).norm() / ga.norm()) < 1e-4
