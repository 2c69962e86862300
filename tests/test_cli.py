"""The command line, end to end on real MNIST (tiny settings)."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
import sys

import pytest
import torch

from _cli_args import tiny_distill_args
from memdistill.cli import main
from memdistill.errors import ConfigError

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


@pytest.mark.parametrize("pool_size, inner_steps, warned", [(4, 7, True), (0, 7, False), (4, None, False)])
def test_inner_steps_ignored_by_the_pool_is_said(pool_size, inner_steps, warned, capsys):
    from memdistill._commands.distill import _warn_unused_steps
    from memdistill.config import resolve

    cfg = resolve("cpu-quick", "mnist", 1, flags={"outer.pool_size": pool_size})
    _warn_unused_steps(argparse.Namespace(inner_steps=inner_steps), cfg)
    assert ("--inner-steps 7 is not used" in capsys.readouterr().err) == warned


def test_distill_info_show_evaluate_end_to_end(data_root, tmp_path, capsys):
    out = tmp_path / "m.mem.safetensors"
    assert main(tiny_distill_args(data_root, out)) == 0
    assert out.exists() and (tmp_path / "m.mem.config.json").exists()
    cfg = json.loads((tmp_path / "m.mem.config.json").read_text())
    assert cfg["inner"]["width"] == 8 and cfg["inner"]["steps"] == 2
    assert len((tmp_path / "m.mem.metrics.jsonl").read_text().splitlines()) == 2
    # the preset's pool unrolls outer.pool_unroll steps: the ignored --inner-steps is said
    assert "--inner-steps 2 is not used" in capsys.readouterr().err
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "bases" in info and "floats_stored" in info and "7776" in info
    png = tmp_path / "m.png"
    assert main(["show", str(out), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ev = tmp_path / "e.json"
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "2", "--width", "8", "--root", str(data_root),
                 "--out", str(ev), "--no-progress"]) == 0
    rec = json.loads(ev.read_text())
    assert rec["examples"] == 290 and rec["reference_ipc"] == 1
    # the memory's own starting point, rebuilt from the file, is the third reference
    assert set(rec["results"]["convnet"]) == {"memory", "random_real", "herding_real", "starting_point"}
    assert rec["starting_point"] == "rebuilt"
    printed = capsys.readouterr().out
    assert "starting point acc %" in printed and ("BELOW its own starting point" in printed
                                                   or "distillation added" in printed)
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "2", "--width", "8", "--root", str(data_root),
                 "--out", str(ev), "--no-progress", "--no-starting-point"]) == 0
    assert set(json.loads(ev.read_text())["results"]["convnet"]) == {"memory", "random_real", "herding_real"}
    # references chosen; the learning-rate schedule defaults to the file's record (constant) and is recorded
    assert json.loads(ev.read_text())["lr_schedule"] == "constant"
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "2", "--width", "8", "--root", str(data_root),
                 "--out", str(ev), "--no-progress", "--references", "herding", "--lr-schedule", "step"]) == 0
    rec = json.loads(ev.read_text())
    assert set(rec["results"]["convnet"]) == {"memory", "herding_real"} and rec["lr_schedule"] == "step"
    # lr and batch size: the file's recorded evaluation values unless flags say otherwise
    recorded = json.loads(Path(str(out)[:-len(".safetensors")] + ".config.json").read_text())["evaluation"]
    assert (rec["lr"], rec["batch_size"]) == (recorded["lr"], recorded["batch_size"])
    assert "starting point: skipped (--references)" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "2", "--width", "8", "--root", str(data_root),
                 "--out", str(ev), "--no-progress", "--references", "none", "--lr", "0.03", "--batch-size", "50"]) == 0
    rec = json.loads(ev.read_text())
    assert set(rec["results"]["convnet"]) == {"memory"} and (rec["lr"], rec["batch_size"]) == (0.03, 50)
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "2", "--width", "8", "--root", str(data_root),
                 "--out", str(ev), "--no-progress", "--references", "none", "--batch-size", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["evaluate", str(out), "--references", "start,best", "--root", str(data_root)]) == 2
    assert "--references 'start,best': name one or more of start, random, herding" in capsys.readouterr().err


def test_distill_time_limit_writes_the_partial_memory_and_resume_completes_it(data_root, tmp_path, capsys):
    out = tmp_path / "t.mem.safetensors"
    assert main(tiny_distill_args(data_root, out) + ["--time-limit", "1e-9"]) == 0
    assert out.exists() and "stopped at the time limit after 1 of 2 iterations" in capsys.readouterr().out
    assert main(tiny_distill_args(data_root, out) + ["--resume"]) == 0
    assert "stopped at the time limit" not in capsys.readouterr().out
    assert len((tmp_path / "t.mem.metrics.jsonl").read_text().splitlines()) == 2
    # a run stopped by its time limit after its latest evaluation says which memory that scored
    assert main(tiny_distill_args(data_root, out) + ["--resume", "--iterations", "4", "--time-limit", "1e-9"]) == 0
    printed = capsys.readouterr().out
    assert "after 2 iterations" in printed and "the memory written has 3 iterations and was not evaluated" in printed
    assert main(tiny_distill_args(data_root, tmp_path / "u.mem.safetensors") + ["--time-limit", "0"]) == 2
    assert "--time-limit must be a positive number of seconds" in capsys.readouterr().err
    assert not (tmp_path / "u.mem.safetensors").exists() and not (tmp_path / "u.mem.config.json").exists()


def test_distill_with_zca_keeps_the_whitening_in_the_file(data_root, tmp_path, capsys):
    out = tmp_path / "z.mem.safetensors"
    assert main(tiny_distill_args(data_root, out) + ["--set", "zca=0.1"]) == 0
    from memdistill import load

    mf = load(out)
    assert mf.zca is not None
    x, _ = mf.recall(classes=[0])
    pix = mf.to_pixels(x)
    assert pix.min() >= 0 and pix.max() <= 1
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "1", "--width", "8", "--root", str(data_root),
                 "--out", str(tmp_path / "z.json"), "--no-progress"]) == 0


def test_distill_resume_via_cli_and_bad_inputs(data_root, tmp_path, capsys):
    out = tmp_path / "r.mem.safetensors"
    assert main(tiny_distill_args(data_root, out)) == 0
    from memdistill import load

    before = load(out).memory.tensors["bases"].clone()
    # resuming a finished run does no more iterations and writes the same memory again
    assert main(tiny_distill_args(data_root, out) + ["--resume"]) == 0
    assert torch.equal(before, load(out).memory.tensors["bases"])
    capsys.readouterr()
    assert main(["evaluate", str(out), "--dataset", "fashion-mnist", "--root", str(data_root)]) == 2
    assert "holds a memory of 'mnist'" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a memory")
    assert main(["info", str(junk)]) == 2
    assert "not a safetensors file" in capsys.readouterr().err
    assert main(tiny_distill_args(data_root, out) + ["--set", "inner.stepz=3"]) == 2
    assert "unknown option 'inner.stepz'" in capsys.readouterr().err
    assert main(["distill", "--dataset", "mnist", "--budget-ipc", "0.01", "--root", str(data_root),
                 "--out", str(tmp_path / "x.safetensors"), "--no-progress"]) == 2
    assert "minimum" in capsys.readouterr().err


def test_distill_reports_its_starting_point_and_evaluate_rebuilds_it_exactly(data_root, tmp_path, capsys):
    """``distill`` evaluates the starting point before the first outer step and says how
    the memory compares; with no outer step the memory *is* the starting point, and the
    one ``starting_point`` rebuilds from the file's seed and configuration is identical."""
    from memdistill import load
    from memdistill.config import from_record
    from memdistill.data import load_dataset
    from memdistill.distill import starting_point

    out = tmp_path / "s.mem.safetensors"
    assert main(tiny_distill_args(data_root, out)) == 0
    printed = capsys.readouterr().out
    assert "validation accuracy: starting point" in printed and "after 2 iterations" in printed
    mf = load(out)
    start = mf.meta["metrics"]["validation_start"]
    assert start["split"] == "val" and 0 <= start["mean"] <= 1
    zero = tmp_path / "z.mem.safetensors"
    assert main(tiny_distill_args(data_root, zero) + ["--iterations", "0"]) == 0
    assert "starting point:" in capsys.readouterr().out
    mz = load(zero)
    x0, y0 = starting_point(from_record(mz.meta["config"]), load_dataset("mnist", "train", root=data_root))
    x, y = mz.recall()
    assert torch.equal(y0, y) and torch.allclose(x0, x, atol=1e-6)  # float32 round trip of the file
    # evaluate trains on the memory with the augmentation the file records (test follows validation)
    rotated = tmp_path / "r.mem.safetensors"
    assert main(tiny_distill_args(data_root, rotated) + ["--iterations", "0", "--set", "evaluation.augment=rotate"]) == 0
    ev = tmp_path / "r.json"
    assert main(["evaluate", str(rotated), "--runs", "1", "--epochs", "1", "--width", "8", "--root", str(data_root),
                 "--out", str(ev), "--no-progress", "--no-starting-point"]) == 0
    assert json.loads(ev.read_text())["augment"] == "rotate"
    assert not torch.allclose(starting_point(from_record(mf.meta["config"]),
                                             load_dataset("mnist", "train", root=data_root))[0], mf.recall()[0])


def test_digits_are_not_flipped_by_default():
    """Per-dataset defaults: digit datasets rotate only (a flipped digit is not the same
    digit); other datasets keep flip_rotate; a preset's explicit choice wins."""
    from memdistill.config import resolve

    for dataset in ("mnist", "svhn"):
        cfg = resolve("paper", dataset, 1)
        assert (cfg.inner.augment, cfg.evaluation.augment) == ("rotate", "rotate")
    for dataset in ("fashion-mnist", "cifar10"):
        assert resolve("paper", dataset, 1).inner.augment == "flip_rotate"
    assert resolve("cpu", "mnist", 1).inner.augment == "none"
    # the cpu preset's evaluator rotates and scales MNIST at every budget (chosen on the validation split)
    assert resolve("cpu", "mnist", 1).evaluation.augment == "rotate+scale"
    assert resolve("cpu", "mnist", 10).evaluation.augment == "rotate+scale"
    assert resolve("cpu", "mnist", 10).inner.augment == "none"
    # and delivers its memory's moving average on MNIST at budget 1 only (chosen on the validation split)
    assert resolve("cpu", "mnist", 1).outer.average == 0.95
    assert resolve("cpu", "mnist", 10).outer.average == 0.0
    assert resolve("cpu", "fashion-mnist", 1).outer.average == 0.0
    assert resolve("cpu-quick", "mnist", 1).outer.average == 0.0
    # its 225 outer steps there (tests/test_distill.py checks the counts) yield to a flag
    assert resolve("cpu", "mnist", 1, flags={"outer.iterations": 50}).outer.iterations == 50
    # evaluated every 75 steps on MNIST, 250 on Fashion-MNIST (25 elsewhere) to stay within 30 minutes
    assert resolve("cpu", "mnist", 1).evaluation.every == 75
    assert resolve("cpu", "mnist", 10).evaluation.every == 75
    assert resolve("cpu", "fashion-mnist", 1).evaluation.every == 250  # 750 steps (480 of them regression)
    assert resolve("cpu", "cifar10", 1).evaluation.every == 25
    assert resolve("cpu-quick", "mnist", 1).evaluation.augment == "none"
    assert resolve("cpu", "fashion-mnist", 1).evaluation.augment == "none"
    assert resolve("cpu", "mnist", 1, sets=[("evaluation.augment", "none")]).evaluation.augment == "none"
    assert resolve("paper", "mnist", 1, sets=[("inner.augment", "flip")]).inner.augment == "flip"


def test_refused_resume_writes_nothing(data_root, tmp_path, capsys):
    """A ``--resume`` refused because the checkpoint holds another configuration leaves
    the previous run's files (memory, resolved configuration, metrics) untouched."""
    out = tmp_path / "r.mem.safetensors"
    assert main(tiny_distill_args(data_root, out)) == 0
    files = sorted(p for p in tmp_path.iterdir() if p.is_file())
    before = {p.name: p.read_bytes() for p in files}
    capsys.readouterr()
    assert main(tiny_distill_args(data_root, out) + ["--resume", "--seed", "7"]) == 2
    assert "different seed" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir()) if p.is_file()} == before


@pytest.mark.parametrize("extra, kind, bases", [
    ([], "bases", 64),
    (["--memory", "images"], "images", 16),
    (["--set", "memory.kind=images"], "images", 16),
    (["--bases", "8"], "bases", 8),
])
def test_distill_config_budget10_settings_follow_the_memory_kind(extra, kind, bases):
    from memdistill.cli import _distill_config, build_parser

    args = build_parser().parse_args(["distill", "--dataset", "mnist", "--budget-ipc", "10",
                                      "--preset", "cpu-quick", "--out", "m.safetensors", *extra])
    cfg = _distill_config(args)
    assert (cfg.memory.kind, cfg.memory.num_bases) == (kind, bases)
    assert cfg.inner.steps == (300 if kind == "bases" else 10)


# the required arguments of each command, so that its parser accepts the line
REQUIRED = {
    "datasets": [],
    "evaluate-subset": ["--dataset", "mnist"],
    "distill": ["--dataset", "mnist", "--budget-ipc", "1", "--out", "m.safetensors"],
    "evaluate": ["m.safetensors"],
    "info": ["m.safetensors"],
    "show": ["m.safetensors"],
    "derive": ["m.safetensors", "--task", "odd-even", "--out", "d.safetensors"],
    "continual": ["--benchmark", "split-mnist"],
}
READS_DATA = {"datasets", "evaluate-subset", "distill", "evaluate", "derive", "continual"}
DOWNLOADS = {"evaluate-subset", "distill", "evaluate", "derive"}
LONG_RUNNING = {"evaluate-subset", "distill", "evaluate", "derive", "continual"}
JOINS_TORCHRUN = {"evaluate-subset", "distill", "evaluate"}
DEVICE_DEFAULT = {"evaluate-subset": "cpu", "distill": None, "evaluate": "cpu", "derive": "cpu", "continual": "cpu"}


@pytest.mark.parametrize("command", list(REQUIRED))
def test_shared_options_are_offered_on_every_command_where_they_make_sense(command, capsys):
    from memdistill.cli import build_parser

    def parse(*extra):
        try:
            return build_parser().parse_args([command, *REQUIRED[command], *extra])
        except SystemExit:  # argparse refuses an option the command does not take
            return None

    assert parse() is not None
    assert (parse("--root", "/data") is not None) == (command in READS_DATA)
    assert (parse("--download") is not None) == (command in DOWNLOADS)
    assert (parse("--device", "cuda") is not None) == (command in DEVICE_DEFAULT)
    if command in DEVICE_DEFAULT:
        assert parse().device == DEVICE_DEFAULT[command]  # distill: None, so the configuration's device applies
    progress = parse("--no-progress")
    assert (progress is not None) == (command in LONG_RUNNING)
    if progress is not None:
        assert progress.no_progress is True and parse().no_progress is False
    timeout = parse("--collective-timeout", "60")
    assert (timeout is not None) == (command in JOINS_TORCHRUN)
    if timeout is not None:
        assert timeout.collective_timeout == 60.0 and parse().collective_timeout == 1800.0


def test_every_command_has_help_and_no_command_prints_usage(capsys):
    for command in REQUIRED:
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        assert f"usage: memdistill {command}" in capsys.readouterr().out
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_run_records_share_one_header(data_root, tmp_path, capsys):
    import memdistill

    header = {"command", "argv", "version", "date", "machine"}
    out = tmp_path / "h.mem.safetensors"
    assert main(tiny_distill_args(data_root, out)) == 0
    ev = tmp_path / "h.eval.json"
    assert main(["evaluate", str(out), "--runs", "1", "--epochs", "1", "--width", "8", "--root", str(data_root),
                 "--out", str(ev), "--no-progress"]) == 0
    rec = json.loads(ev.read_text())
    assert header <= set(rec) and rec["command"] == "evaluate" and rec["version"] == memdistill.__version__
    assert rec["machine"]["device"] == "cpu" and rec["machine"]["processes"] == 1 and "torch" in rec["machine"]
    assert isinstance(rec["argv"], list) and rec["date"].endswith("+00:00")
    sub = tmp_path / "s.json"
    assert main(["evaluate-subset", "--dataset", "mnist", "--ipc", "1", "--root", str(data_root),
                 "--out", str(sub), *FAST]) == 0
    rec_sub = json.loads(sub.read_text())
    assert list(rec_sub)[:5] == list(rec)[:5] == ["command", "argv", "version", "date", "machine"]
    assert set(rec_sub["machine"]) == set(rec["machine"])
    derived = tmp_path / "d.safetensors"
    assert main(["derive", str(out), "--task", "odd-even", "--out", str(derived), "--no-real", "--epochs", "1",
                 "--width", "8", "--root", str(data_root), "--no-progress"]) == 0
    rec_derive = json.loads(derived.with_suffix(".json").read_text())
    assert rec_derive["command"] == "derive" and rec_derive["machine"]["device"] == "cpu"
    assert "processes" not in rec_derive["machine"]  # derive runs in one process, as before


def test_continual_record_has_the_same_header(data_root, tmp_path):
    out = tmp_path / "c.json"
    assert main(["continual", "--benchmark", "split-mnist", "--strategy", "finetune", "--steps", "1", "--width", "8",
                 "--test-per-class", "5", "--root", str(data_root), "--out", str(out), "--no-progress"]) == 0
    rec = json.loads(out.read_text())
    assert list(rec)[:5] == ["command", "argv", "version", "date", "machine"] and rec["command"] == "continual"
    assert isinstance(rec["machine"], str) and "torch" in rec["machine"]  # the line continual tables print


def test_resolve_applies_preset_budget_toml_flags_and_sets_in_that_order(tmp_path):
    from memdistill.config import base_schedule, parse_sets, resolve

    toml = tmp_path / "run.toml"
    toml.write_text("seed = 4\n[inner]\nsteps = 12\n")  # shorter than the budget settings' window
    with pytest.raises(ConfigError, match="outer.window must be in .0, inner.steps=12., got 20"):
        resolve("cpu-quick", "mnist", 10, toml=toml)
    toml.write_text("seed = 4\n[inner]\nsteps = 12\nlr = 0.5\n[outer]\nwindow = 0\nrandom_truncation = false\n")
    cfg = resolve("cpu-quick", "mnist", 10, toml=toml)
    assert (cfg.seed, cfg.inner.steps, cfg.inner.lr, cfg.memory.num_bases) == (4, 12, 0.5, 64)  # TOML over budget
    cfg = resolve("cpu-quick", "mnist", 10, toml=toml, flags={"inner.steps": 13, "seed": None},
                  sets=[("inner.steps", "14"), ("inner.lr", "0.25")])
    assert (cfg.seed, cfg.inner.steps, cfg.inner.lr) == (4, 14, 0.25)  # --set over flags over TOML
    assert resolve("cpu-quick", "mnist", 10, flags={"inner.steps": 13, "outer.window": 0,
                                                    "outer.random_truncation": False}).inner.steps == 13
    # the kind is decided first: the budget settings are for ``bases`` memories only
    toml.write_text('[memory]\nkind = "images"\n')
    assert resolve("cpu-quick", "mnist", 10, toml=toml).memory.num_bases == 16
    assert resolve("cpu-quick", "mnist", 10, toml=toml, flags={"memory.kind": "bases"}).memory.num_bases == 64
    assert resolve("cpu-quick", "mnist", 10, kind="images", sets=[("memory.kind", "bases")]).inner.steps == 300
    # the preset's own schedule as flags wins over its budget settings
    assert base_schedule("paper") == {}
    own = resolve("cpu-quick", "mnist", 10, flags=base_schedule("cpu-quick"))
    assert (own.memory.num_bases, own.inner.steps, own.outer.iterations) == (16, 10, 40)
    # dataset and budget are the arguments', whatever the layers say
    cfg = resolve("cpu", "cifar10", 2, sets=[("dataset", "mnist"), ("memory.budget_ipc", "5")])
    assert (cfg.dataset, cfg.memory.budget_ipc, cfg.zca) == ("cifar10", 2.0, 0.1)
    with pytest.raises(ConfigError, match="inner.window"):
        resolve("cpu", "mnist", 1, flags={"inner.window": 1}, flags_source="ablation")
    with pytest.raises(ConfigError, match="outer.window must be in"):
        resolve("cpu", "mnist", 1, sets=[("outer.window", "500")])
    assert parse_sets([" inner.lr = 0.02", "a=b=c"]) == [("inner.lr", "0.02"), ("a", "b=c")]
    with pytest.raises(ConfigError, match=r"--set expects KEY=VALUE \(e.g. inner.lr=0.02\), got 'inner.lr'"):
        parse_sets(["inner.lr"])


def test_distill_with_a_moving_average_writes_it_and_the_last_iterate(data_root, tmp_path, capsys):
    from memdistill.memory.file import load_memory

    out = tmp_path / "m.mem.safetensors"
    assert main([*tiny_distill_args(data_root, out), "--set", "outer.average=0.5"]) == 0
    last = tmp_path / "m.mem.last.safetensors"
    assert "the last iterate in" in capsys.readouterr().out and last.exists()
    avg, it = load_memory(out), load_memory(last)
    assert avg.meta["config"]["outer"]["average"] == 0.5
    assert any(not torch.equal(avg.memory.tensors[k], it.memory.tensors[k]) for k in avg.memory.tensors)
    plain = tmp_path / "p.mem.safetensors"
    assert main(tiny_distill_args(data_root, plain)) == 0
    assert not (tmp_path / "p.mem.last.safetensors").exists()
    for k, v in load_memory(plain).memory.tensors.items():  # averaging leaves the path alone
        assert torch.equal(v, it.memory.tensors[k]), k
