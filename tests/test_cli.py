"""The command line, end to end on real MNIST (tiny settings)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from memdistill.cli import main

FAST = ["--runs", "1", "--epochs", "2", "--width", "8", "--no-progress"]


def test_datasets_lists_found_and_missing(data_root, capsys, monkeypatch):
    monkeypatch.setenv("MEMDISTILL_DATA", str(data_root))
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "found" in lines["mnist"] and str(data_root) in lines["mnist"]
    assert "missing" in lines["cifar10"]


def test_evaluate_subset_writes_json_and_table(data_root, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["evaluate-subset", "--dataset", "mnist", "--ipc", "2", "--selection", "herding",
               "--root", str(data_root), "--out", str(out), *FAST])
    assert rc == 0
    printed = capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["examples"] == 20 and rec["stored_floats"] == 20 * 28 * 28
    assert rec["tested_on"] == "test" and rec["result"]["num_test_examples"] == 10000
    acc = rec["result"]["accuracies"][0]
    assert 0.0 <= acc <= 1.0 and f"{100 * acc:.2f}" in printed
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary behind


def test_evaluate_subset_on_validation_split(data_root, tmp_path):
    out = tmp_path / "v.json"
    rc = main(["evaluate-subset", "--dataset", "mnist", "--ipc", "1", "--eval-split", "val",
               "--root", str(data_root), "--out", str(out), *FAST])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["tested_on"] == "val" and abs(rec["result"]["num_test_examples"] - 6000) <= 10


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "mnist", "--ipc", "1", "--arch", "transformer"], "valid choices: alexnet, convnet"),
        (["--dataset", "imagenet21k", "--ipc", "1"], "valid choices:"),
        (["--dataset", "mnist", "--ipc", "1", "--selection", "kmeans"], "valid choices: all, herding, random"),
        (["--dataset", "mnist"], "needs --ipc"),
        pytest.param(["--dataset", "mnist", "--ipc", "1", "--device", "cuda:0"], "no CUDA device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
    ],
)
def test_bad_arguments_give_clear_errors(argv, message, data_root, tmp_path, capsys):
    out = tmp_path / "never.json"
    rc = main(["evaluate-subset", *argv, "--root", str(data_root), "--out", str(out), *FAST])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_console_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "memdistill", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "memdistill" in proc.stdout
