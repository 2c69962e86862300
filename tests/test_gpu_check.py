"""bench/gpu_check.py: the CPU smoke run writes its JSON with every section, and its parts
(test selection, JUnit counts, the refusal of a missing GPU) behave."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from _bench_scripts import ROOT, load_script

check = load_script("gpu_check")


def _positive(record: dict, *path: str) -> float:
    value = record
    for key in path:
        value = value[key]
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (path, value)
    return value


@pytest.mark.slow
def test_quick_cpu_run_writes_one_json_with_every_section(data_root, tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, MEMDISTILL_DATA=str(data_root))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["complete"] is True and rec["errors"] == {} and rec["quick"] is True and rec["device"] == "cpu"
    assert rec["machine"]["torch"] == torch.__version__ and rec["machine"]["cuda_available"] is torch.cuda.is_available()
    _positive(rec, "machine", "cpu_count")
    tests = rec["tests"]
    assert tests["selected"] and not any("test_gpu_check" in t for t in tests["selected"])
    assert tests["failed"] == 0 and tests["errors"] == 0 and tests["passed"] + tests["skipped"] >= len(tests["selected"])
    _positive(rec, "tests", "seconds")
    assert set(rec["peak_rates"]["measured_tflops"]) == {"matmul_fp32", "matmul_bf16", "conv3x3"}
    for key in rec["peak_rates"]["measured_tflops"]:
        _positive(rec, "peak_rates", "measured_tflops", key)
    shapes = {"mnist": [1, 28, 28], "standin_3x32x32": [3, 32, 32]}
    assert set(rec["outer_step"]) == {*shapes, "mnist_bfloat16"}
    if "skipped" in rec["outer_step"]["mnist_bfloat16"]:  # a CPU without bfloat16 kernels says why
        assert "bfloat16" in rec["outer_step"]["mnist_bfloat16"]["skipped"]
    else:
        assert rec["outer_step"]["mnist_bfloat16"]["precision"] == "bfloat16"
        shapes["mnist_bfloat16"] = [1, 28, 28]
    for name, shape in shapes.items():
        cell = rec["outer_step"][name]
        assert cell["image_shape"] == shape and cell["T"] == 3 and cell["width"] == 16
        for key in ("seconds_per_step", "seconds_per_inner_step", "flops_per_step", "achieved_tflops",
                    "peak_memory_gb"):
            _positive(rec, "outer_step", name, key)
        assert set(cell["fraction_of"]) == set(rec["peak_rates"]["measured_tflops"])
        for key in cell["fraction_of"]:
            _positive(cell, "fraction_of", key)
        # the achieved rate is the counted FLOPs over the best step time
        assert cell["achieved_tflops"] == pytest.approx(cell["flops_per_step"] / cell["seconds_per_step"] / 1e12)
    dist = rec["distillation"]
    for key in ("iterations", "wall_seconds", "seconds_per_iteration", "loss_first", "loss_last"):
        _positive(rec, "distillation", key)
    ev = dist["evaluation"]
    assert ev["split"] == "test" and ev["real_ipc"] == 1
    for name in ("memory", "starting_point", "random_real", "herding_real"):
        acc = _positive(ev, name, "mean")
        assert acc <= 1
    assert ev["memory"]["examples"] == 10 * dist["slots_per_class"] and ev["random_real"]["examples"] == 10
    assert set(rec["section_seconds"]) == {"machine", "tests", "peak_rates", "outer_step", "distillation"}


def test_cuda_tests_are_selected_by_their_code_and_the_check_never_runs_itself(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text(
        "import pytest, torch\n"
        "@pytest.mark.skipif(not torch.cuda.is_available(), reason='no GPU')\n"
        "def test_on_gpu():\n    pass\n"
        "def test_plain():\n    pass\n"
        "def test_body():\n    x = torch.zeros(1, device='CUDA')\n"
        "def helper_cuda():\n    pass\n"
        "class TestDevices:\n    def test_x(self):\n        torch.cuda.synchronize()\n")
    (tests / "test_b.py").write_text("import pytest\npytestmark = pytest.mark.cuda\ndef test_one():\n    pass\n")
    (tests / "test_gpu_check.py").write_text("def test_cuda():\n    pass\n")
    (tests / "helpers.py").write_text("def test_cuda():\n    pass\n")
    assert check.cuda_tests(tests) == ["tests/test_a.py::test_on_gpu", "tests/test_a.py::test_body",
                                       "tests/test_a.py::TestDevices", "tests/test_b.py::test_one"]
    # the project's own selection holds the known device tests
    ids = check.cuda_tests(ROOT / "tests")
    assert "tests/test_distributed.py::test_without_torchrun_it_is_one_process_and_bad_devices_fail_clearly" in ids


def test_junit_counts(tmp_path):
    report = tmp_path / "r.xml"
    report.write_text(
        '<?xml version="1.0"?><testsuites><testsuite tests="5" failures="1" errors="1" skipped="2">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2"/></testcase>'
        '<testcase classname="tests.test_a" name="test_err"><error message="boom"/></testcase>'
        '<testcase classname="tests.test_a" name="test_s1"><skipped/></testcase>'
        '<testcase classname="tests.test_a" name="test_s2"><skipped/></testcase>'
        "</testsuite></testsuites>")
    got = check.junit_counts(report)
    assert (got["passed"], got["failed"], got["errors"], got["skipped"], got["collected"]) == (1, 1, 1, 2, 5)
    assert [p["test"] for p in got["problems"]] == ["tests.test_a::test_bad", "tests.test_a::test_err"]
    assert got["problems"][0]["message"] == "assert 1 == 2"


def test_asking_for_a_missing_gpu_fails_clearly():
    name = "cuda:99" if torch.cuda.is_available() else "cuda"
    with pytest.raises(SystemExit, match="does not exist" if torch.cuda.is_available() else "sees no CUDA device"):
        check.check_device(name)
    with pytest.raises(SystemExit, match="valid: cpu, cuda, cuda:N"):
        check.check_device("tpu")
    assert check.check_device("cpu") == torch.device("cpu")


def test_nominal_rates_match_device_names_most_specific_first():
    names = [p for p, *_ in check.NOMINAL_TFLOPS]
    for i, a in enumerate(names):  # a pattern listed later must not contain an earlier one
        assert not any(b.lower() in a.lower() for b in names[:i]), a


def test_the_distillation_is_shortened_only_to_keep_the_whole_check_in_its_budget():
    args = check.parse_args(["--device", "cpu"])
    assert (args.distill_seconds, args.budget_seconds) == (180.0, 450.0)
    assert check.distill_limit(args, elapsed=100.0) == 180.0  # 100 + 180 + 60 s of evaluation fit in 450
    assert check.distill_limit(args, elapsed=300.0) == 90.0
    assert check.distill_limit(args, elapsed=440.0) == 30.0  # never below 30 s
    quick = check.parse_args(["--device", "cpu", "--quick"])
    assert check.distill_limit(quick, elapsed=1e6) == quick.distill_seconds == 3.0


def test_a_failing_part_is_recorded_and_the_rest_still_measured(data_root, tmp_path, monkeypatch):
    def broken(n):
        raise RuntimeError("no stand-in today")

    monkeypatch.setattr(check, "standin_dataset", broken)
    out = tmp_path / "g.json"
    rc = check.main(["--device", "cpu", "--quick", "--out", str(out), "--data", str(data_root),
                     "--skip", "tests,peak_rates,distillation"])
    rec = json.loads(out.read_text())
    assert rc == 1 and rec["complete"] is True
    assert list(rec["errors"]) == ["outer_step.standin_3x32x32"] and "no stand-in today" in rec["errors"][
        "outer_step.standin_3x32x32"]
    _positive(rec, "outer_step", "mnist", "seconds_per_step")
    assert rec["distillation"] == {"skipped": "--skip"}


@pytest.mark.slow
def test_gpu_profile_quick_cpu_run_times_every_variant_and_profiles_a_step(data_root, tmp_path):
    profile = load_script("gpu_profile")
    out = tmp_path / "gpu_profile.json"
    assert profile.main(["--device", "cpu", "--quick", "--data", str(data_root), "--rounds", "1",
                         "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["complete"] is True and rec["errors"] == {}
    settings = rec["settings"]
    assert settings["default"]["speedup_over_default"] == 1.0
    for name in profile.VARIANTS:
        cell = settings[name]
        assert "skipped" in cell or (_positive(cell, "best_seconds") and len(cell["all_seconds"]) == 1)
    prof = rec["profile"]
    _positive(prof, "wall_seconds_profiled")
    assert prof["top_ops"] and all(op["self_seconds"] >= 0 for op in prof["top_ops"])
    # the variants leave the backend as they found it
    assert torch.backends.cudnn.benchmark is False


def test_gpu_profile_refuses_an_unknown_variant(data_root, capsys):
    profile = load_script("gpu_profile")
    with pytest.raises(SystemExit):
        profile.main(["--device", "cpu", "--quick", "--data", str(data_root), "--variants", "default,nope"])
    assert "unknown variants ['nope']" in capsys.readouterr().err
