"""``bench/eval_augment.py``: the evaluator's augmentation, learning-rate schedule, rate and batch size
tried on a memory file's validation split, each row as ``evaluate`` scores it."""

from __future__ import annotations

import json
from dataclasses import replace

from _bench_scripts import load_script
from _cli_args import tiny_distill_args
from memdistill.cli import main
from memdistill.config import from_record
from memdistill.data import load_dataset
from memdistill.distill import Distiller
from memdistill.evaluate import TrainingSet, evaluate
from memdistill.memory.file import load_memory


def test_every_augmentation_with_every_schedule_on_the_validation_split(data_root, tmp_path, monkeypatch):
    mem = tmp_path / "m.mem.safetensors"
    assert main(tiny_distill_args(data_root, mem)) == 0
    monkeypatch.setenv("MEMDISTILL_DATA", str(data_root))
    out = tmp_path / "lr.json"
    script = load_script("eval_augment")
    assert script.main([str(mem), "--augments", "none,rotate", "--lr-schedules", "constant,step", "--runs", "1",
                        "--width", "8", "--epochs", "4", "--sets", "memory", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert [(r["augment"], r["lr_schedule"]) for r in rec["rows"]] == [
        ("none", "constant"), ("none", "step"), ("rotate", "constant"), ("rotate", "step")]
    assert rec["split"] == "val" and rec["evaluator"]["recorded_lr_schedule"] == "constant"
    # each row is what evaluate() gives on the file's validation split with that protocol
    mf = load_memory(mem)
    cfg = from_record(mf.meta["config"])
    d = Distiller(cfg, load_dataset("mnist", "train", root=data_root))
    data = TrainingSet(*d.label_space.class_examples(mf.memory))
    ec = replace(cfg.evaluation, width=8, epochs=4, augment="none", lr_schedule="step")
    assert rec["rows"][1]["memory"]["accuracies"] == evaluate(data, d.val, ec, runs=1, seed=cfg.seed).accuracies
    assert rec["rows"][0]["memory"]["accuracies"] != rec["rows"][1]["memory"]["accuracies"]
    # defaults: the file's own augmentation and schedule, one row
    assert script.main([str(mem), "--runs", "1", "--width", "8", "--epochs", "1", "--sets", "memory",
                        "--out", str(out)]) == 0
    assert [(r["augment"], r["lr_schedule"]) for r in json.loads(out.read_text())["rows"]] == [
        (cfg.evaluation.augment, "constant")]
    # the evaluator's learning rate and batch size, when given, replace the file's
    assert script.main([str(mem), "--runs", "1", "--width", "8", "--epochs", "1", "--sets", "memory",
                        "--lr", "0.03", "--batch-size", "50", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert (rec["evaluator"]["lr"], rec["evaluator"]["batch_size"]) == (0.03, 50)
    ec = replace(cfg.evaluation, width=8, epochs=1, lr=0.03, batch_size=50)
    assert rec["rows"][0]["memory"]["accuracies"] == evaluate(data, d.val, ec, runs=1, seed=cfg.seed).accuracies
