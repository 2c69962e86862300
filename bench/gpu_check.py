"""One check of a machine with a GPU: the tests that touch CUDA, the speed and peak memory
of the meta-gradient at the ``paper`` preset, the fraction of the device's peak FLOP rate
it reaches, and a short MNIST distillation with its evaluation, all in one JSON file.

    python bench/gpu_check.py --device cuda                 # a CUDA machine, under 8 minutes
    python bench/gpu_check.py --device cpu --quick --out /tmp/g.json   # the same path in CI

Sections (each also times itself; a section, or a part of one, that raises is recorded
with its error and the rest still runs; the script then exits 1, as when a test fails):

* ``machine``: torch, CUDA and cuDNN versions, device name and memory, CPU count, the
  TF32 flags in force, date, git commit.
* ``tests``: pytest (in a subprocess) on every test function of ``tests/`` whose code or
  decorators mention CUDA (read off the source with :mod:`ast`); counts from its JUnit
  report. Without a GPU most of them skip, and the counts say so.
* ``peak_rates``: measured dense matrix-product rates (fp32, TF32 and bf16 on CUDA; fp32
  and bf16 on a CPU) and a 3x3 convolution rate, plus the data sheet's nominal rates
  where the device is in :data:`NOMINAL_TFLOPS`.
* ``outer_step``: seconds per outer step (``Distiller.meta_step``: the unroll, the outer
  loss and the meta-gradient, as ``bench/meta_gradient.py`` times it) and peak memory
  (``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on a CPU) at the
  ``paper`` preset (T = 150, width 128) for MNIST and for a 3 x 32 x 32 stand-in of
  random images in 10 classes (CIFAR-10's settings: ZCA, flips); FLOPs of one outer step
  counted by ``torch.utils.flop_counter`` (that step is the warm-up, not timed); the
  achieved rate and its fraction of each measured and nominal rate. MNIST again with the
  opt-in bfloat16 inner network (``mnist_bfloat16``; ``skipped`` with the reason on a
  device without bfloat16 kernels).
* ``distillation``: the ``paper`` preset on MNIST for ``--distill-seconds`` of wall time
  (``Distiller.run(time_limit=...)``; shortened, to 30 s at least, when the sections
  before it took so long that the check would pass ``--budget-seconds``), then the
  memory, its starting point, random real images and herding at equal storage, each
  retrained ``--eval-runs`` times and tested on MNIST's test split.

``--quick`` shrinks everything (T = 3, width 16, no ZCA, seconds of distillation, a
test subset) so that the whole script runs in well under a minute on one CPU core. The JSON is
rewritten (atomically) after every section, marked ``"complete": false`` until the end.
Default output: ``docs/bench/gpu_check_<device>.json`` (``_quick`` appended with
``--quick``), e.g. ``docs/bench/gpu_check_nvidia_h200.json``.
"""

from __future__ import annotations

import argparse
import ast
import gc
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, whatever else is installed

import torch  # noqa: E402

from memdistill._io import atomic_write_json  # noqa: E402
from memdistill._machine import machine_info  # noqa: E402

# Dense (no sparsity) peak rates from NVIDIA's data sheets, in TFLOP/s: (name pattern,
# fp32, tf32 tensor core, bf16 tensor core). The first pattern found in the device name wins.
NOMINAL_TFLOPS: list[tuple[str, float, float, float]] = [
    ("H200 NVL", 60.0, 417.5, 835.0),
    ("H200", 67.0, 494.7, 989.4),        # SXM
    ("H100 PCIe", 51.0, 378.0, 756.0),
    ("H100 NVL", 60.0, 417.5, 835.0),
    ("H100", 67.0, 494.7, 989.4),        # SXM
    ("A100", 19.5, 156.0, 312.0),
    ("L40S", 91.6, 183.0, 362.0),
    ("L4", 30.3, 60.0, 121.0),
]

EVAL_RESERVE = 60.0  # seconds kept for the evaluation after the distillation (--budget-seconds)
STANDIN_IMAGES = {False: 10_000, True: 500}  # per run size of the 3 x 32 x 32 stand-in (full, quick)


# ------------------------------------------------------------------------ helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def error_text(exc: BaseException) -> str:
    """The end of ``exc``'s traceback, for the JSON."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]


def nested_errors(section: Any) -> dict[str, str]:
    """``{part: error}`` of the parts of a section that recorded their own failure."""
    if not isinstance(section, dict):
        return {}
    return {k: v["error"] for k, v in section.items() if isinstance(v, dict) and "error" in v}


def git_state() -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes (``None`` without git)."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def check_device(name: str) -> torch.device:
    """``--device`` as a torch device; exits with a clear message when CUDA is asked for
    and absent (a GPU check must not pass by skipping the GPU)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        sys.exit(f"gpu_check: unknown device {name!r}; valid: cpu, cuda, cuda:N")
    if device.type not in ("cpu", "cuda"):
        sys.exit(f"gpu_check: device {name!r} is not supported; valid: cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"gpu_check: --device {name} asked for, but this torch ({torch.__version__}, built for "
                     f"CUDA {torch.version.cuda}) sees no CUDA device; run on a CUDA machine or pass --device cpu")
        if (device.index or 0) >= torch.cuda.device_count():
            sys.exit(f"gpu_check: device {name} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
        device = torch.device("cuda", device.index or 0)
    return device


def device_slug(device: torch.device) -> str:
    if device.type == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_") or "cuda"


def data_root(arg: str | None) -> Path:
    """``--data``, else ``$MEMDISTILL_DATA``, else ``../shared/data`` beside the checkout."""
    if arg:
        return Path(arg).resolve()
    env = os.environ.get("MEMDISTILL_DATA")
    return Path(env).resolve() if env else (ROOT.parent / "shared" / "data").resolve()


def peak_memory_gb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, "process peak RSS (ru_maxrss)"


def reset_peak_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ------------------------------------------------------------------------ machine
def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = dict(machine_info())
    info.update({
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "device": str(device),
    })
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({
            "device_name": props.name,
            "device_memory_gb": props.total_memory / 1024**3,
            "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "cudnn_version": torch.backends.cudnn.version(),
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
        })
    else:
        info["device_name"] = info["cpu"]
    return info


# -------------------------------------------------------------------------- tests
def cuda_tests(tests_dir: Path, exclude: tuple[str, ...] = ("test_gpu_check.py",)) -> list[str]:
    """Node ids (``tests/test_x.py::test_y`` or ``::TestClass``) of the tests whose code
    or decorators mention CUDA, and of every test of a module whose ``pytestmark`` does."""
    ids = []
    for path in sorted(tests_dir.glob("test_*.py")):
        if path.name in exclude:
            continue
        text = path.read_text()
        tree = ast.parse(text)
        rel = f"{tests_dir.name}/{path.name}"
        marked = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                     and "cuda" in (ast.get_source_segment(text, n) or "").lower() for n in tree.body)
        for node in tree.body:
            is_test = (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")
                       or isinstance(node, ast.ClassDef) and node.name.startswith("Test"))
            if not is_test:
                continue
            parts = [ast.get_source_segment(text, n) or "" for n in (node, *node.decorator_list)]
            if marked or "cuda" in " ".join(parts).lower():
                ids.append(f"{rel}::{node.name}")
    return ids


def run_tests(ids: list[str], data: Path, timeout: float) -> dict[str, Any]:
    """pytest on ``ids`` in a subprocess: counts, failures and wall seconds."""
    out: dict[str, Any] = {"selected": ids, "selection": "test functions of tests/ whose code mentions CUDA"}
    if not ids:
        return {**out, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "seconds": 0.0, "returncode": None}
    env = dict(os.environ, MEMDISTILL_DATA=str(data),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *ids]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pytest did not finish in {timeout:.0f} s") from None
        out["seconds"] = time.perf_counter() - t0
        out["returncode"] = proc.returncode
        if not report.exists():
            raise RuntimeError(f"pytest wrote no report (exit {proc.returncode}): {proc.stdout[-2000:]}"
                               f"{proc.stderr[-2000:]}")
        out.update(junit_counts(report))
    out["output_tail"] = proc.stdout[-3000:]
    return out


def junit_counts(report: Path) -> dict[str, Any]:
    """Passed/failed/errors/skipped counts and the failing tests of a JUnit XML report."""
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    problems = []
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                problems.append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": child.tag,
                                 "message": (child.get("message") or "")[:500]})
    return {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"],
            "collected": counts["tests"], "problems": problems}


# --------------------------------------------------------------------- peak rates
def best_seconds(fn: Callable[[], Any], device: torch.device, reps: int, trials: int = 3) -> float:
    """The best over ``trials`` of the mean seconds per call of ``reps`` calls (after a warm-up)."""
    for _ in range(2):
        fn()
    best = math.inf
    for _ in range(trials):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, reps: int, tf32: bool = False) -> float:
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        seconds = best_seconds(lambda: torch.mm(a, b), device, reps)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return 2 * n**3 / seconds / 1e12


def conv_tflops(device: torch.device, batch: int, channels: int, size: int, reps: int) -> float:
    """A 3x3 convolution, ``channels`` -> ``channels``, ``size`` x ``size`` maps, float32 (at
    the backend's default TF32 setting: what the inner network's convolutions get)."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, channels, size, size, device=device, generator=g)
    w = torch.randn(channels, channels, 3, 3, device=device, generator=g)
    seconds = best_seconds(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, reps)
    return 2 * batch * channels**2 * 9 * size**2 / seconds / 1e12


def nominal(device: torch.device) -> dict[str, Any] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, fp32, tf32, bf16 in NOMINAL_TFLOPS:
        if pattern.lower() in name.lower():
            return {"matched": pattern, "fp32": fp32, "tf32": tf32, "bf16": bf16,
                    "source": "NVIDIA data sheet, dense (no sparsity)"}
    return None


def peak_rates(device: torch.device, quick: bool) -> dict[str, Any]:
    """Measured TFLOP/s of large dense products and of a 3x3 convolution on ``device``."""
    cuda = device.type == "cuda"
    n = 8192 if cuda else (384 if quick else 2048)
    measured = {"matmul_fp32": matmul_tflops(device, torch.float32, n, 10 if cuda else 3),
                "matmul_bf16": matmul_tflops(device, torch.bfloat16, n, 50 if cuda else 3)}
    if cuda:
        measured["matmul_tf32"] = matmul_tflops(device, torch.float32, n, 50, tf32=True)
    shape = (320, 128, 32) if not quick else (16, 16, 16)  # the paper preset's inner batch on 32 x 32 maps
    measured["conv3x3"] = conv_tflops(device, *shape, reps=20 if cuda else 3)
    return {"measured_tflops": measured, "matmul_size": n,
            "conv_shape": {"batch": shape[0], "channels": shape[1], "size": shape[2]}, "nominal_tflops": nominal(device)}


# -------------------------------------------------------------------- outer step
def standin_dataset(n: int, seed: int = 0):
    """``n`` random 3 x 32 x 32 ``uint8`` images in 10 classes (a class pattern plus
    noise, so the classes are learnable), built in memory as a training split."""
    from memdistill.data import ImageDataset

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    patterns = torch.rand(10, 3, 32, 32, generator=g)
    images = (0.5 * patterns[labels] + 0.5 * torch.rand(n, 3, 32, 32, generator=g)).mul(255).round().to(torch.uint8)
    return ImageDataset(name="standin-3x32x32", split="train", images=images, labels=labels,
                        classes=tuple(str(c) for c in range(10)), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def quick_flags(quick: bool, steps: int) -> dict[str, Any]:
    """Overrides of the ``paper`` preset: none for a full check, a tiny run with ``--quick``."""
    if not quick:
        return {}
    return {"zca": 0.0,  # fitting ZCA on 3072 dimensions alone takes seconds on one core
            "inner": {"width": 16, "steps": steps, "n_per_class": 4},
            "outer": {"real_per_class": 8},
            "evaluation": {"width": 16, "epochs": 10, "batch_size": 256}}


def distiller_for(name: str, train, device: torch.device, quick: bool, steps: int, extra: dict | None = None):
    from memdistill.config import resolve
    from memdistill.distill import Distiller

    dataset = "mnist" if name == "mnist" else "cifar10"  # the stand-in takes CIFAR-10's settings
    flags = {**quick_flags(quick, steps), "device": str(device), **(extra or {})}
    cfg = resolve("paper", dataset, 1, flags=flags, flags_source="gpu_check")
    return Distiller(cfg, train, device=device)


def time_outer_steps(distiller, device: torch.device, timed: int) -> dict[str, Any]:
    """FLOPs of one outer step (the warm-up), then ``timed`` timed steps and their peak memory."""
    from torch.utils.flop_counter import FlopCounterMode

    mem = distiller.new_memory()
    reset_peak_memory(device)
    t0 = time.perf_counter()
    with FlopCounterMode(display=False) as counter:
        distiller.meta_step(mem, 0)
    sync(device)
    counted_seconds = time.perf_counter() - t0
    flops = counter.get_total_flops()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    reset_peak_memory(device)
    base = torch.cuda.memory_allocated(device) / 1024**3 if device.type == "cuda" else None
    times, losses = [], []
    for i in range(1, timed + 1):
        sync(device)
        t0 = time.perf_counter()
        res = distiller.meta_step(mem, i)
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(res.loss)
    peak, how = peak_memory_gb(device)
    cfg = distiller.config
    best = min(times)
    return {"image_shape": list(distiller.train.image_shape), "T": cfg.inner.steps, "width": cfg.inner.width,
            "n_per_class": cfg.inner.n_per_class, "real_per_class": cfg.outer.real_per_class,
            "augment": cfg.inner.augment, "zca": cfg.zca, "unroll": cfg.outer.unroll, "slots_per_class": mem.slots,
            "seconds_per_step": best, "mean_seconds_per_step": sum(times) / len(times), "all_seconds": times,
            "seconds_per_inner_step": best / cfg.inner.steps, "flop_counted_step_seconds": counted_seconds,
            "flops_per_step": flops, "flops_by_op": by_op, "achieved_tflops": flops / best / 1e12,
            "peak_memory_gb": peak, "peak_memory_measure": how, "allocated_before_gb": base, "losses": losses}


def outer_steps(device: torch.device, root: Path, quick: bool, timed: int) -> dict[str, Any]:
    from memdistill.data import load_dataset

    out = {}
    steps = 3 if quick else 150
    for name in ("mnist", "standin_3x32x32"):
        try:  # one dataset's failure keeps the other's numbers
            if name == "mnist":
                train = load_dataset("mnist", "train", root=root)
                if quick:
                    train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:2000])
            else:
                train = standin_dataset(STANDIN_IMAGES[quick])
            distiller = distiller_for(name, train, device, quick, steps)
            out[name] = time_outer_steps(distiller, device, timed)
            out[name]["train_images"] = len(distiller.train)
            if name == "mnist":
                out["mnist_bfloat16"] = bfloat16_cell(train, device, quick, steps, timed)
        except Exception as exc:  # noqa: BLE001 (recorded; main() reports it)
            out[name] = {"error": error_text(exc)}
        train = distiller = None  # free the device before the next dataset
        reset_peak_memory(device)
    return out


def bfloat16_cell(train, device: torch.device, quick: bool, steps: int, timed: int) -> dict[str, Any]:
    """MNIST's cell again with the opt-in bfloat16 inner network (``inner.precision``),
    where the device has bfloat16 kernels; else why it was skipped."""
    from memdistill.engine.precision import bfloat16_support

    ok, why = bfloat16_support(device)
    if not ok:
        return {"skipped": why}
    reset_peak_memory(device)
    try:  # its failure is its own: MNIST's float32 cell stands
        cell = time_outer_steps(distiller_for("mnist", train, device, quick, steps, {"inner.precision": "bfloat16"}),
                                device, timed)
    except Exception as exc:  # noqa: BLE001 (recorded; main() reports it)
        return {"error": error_text(exc)}
    cell["precision"] = "bfloat16"
    return cell


def add_fractions(result: dict[str, Any]) -> None:
    """Each outer step's achieved rate as a fraction of every measured and nominal rate."""
    rates = result.get("peak_rates") or {}
    refs = dict(rates.get("measured_tflops", {}))
    for key, value in (rates.get("nominal_tflops") or {}).items():
        if isinstance(value, float):
            refs[f"nominal_{key}"] = value
    for cell in (result.get("outer_step") or {}).values():
        if isinstance(cell, dict) and "achieved_tflops" in cell:
            cell["fraction_of"] = {k: cell["achieved_tflops"] / v for k, v in refs.items() if v > 0}


# ------------------------------------------------------------------- distillation
def distill_and_evaluate(device: torch.device, root: Path, quick: bool, seconds: float,
                         runs: int) -> dict[str, Any]:
    """The ``paper`` preset on MNIST for ``seconds`` of wall time, then the memory and the
    references at equal storage, each retrained ``runs`` times, tested on MNIST's test split."""
    from memdistill.data import load_dataset
    from memdistill.distill import starting_point

    train, test = load_dataset("mnist", "train", root=root), load_dataset("mnist", "test", root=root)
    if quick:
        test = test.subset(torch.arange(1000), split="test")
    extra = {"evaluation.every": 0, "evaluation.at_start": False, "evaluation.runs": runs}
    distiller = distiller_for("mnist", train, device, quick, 3 if quick else 150, extra)
    sync(device)
    t0 = time.perf_counter()
    res = distiller.run(time_limit=seconds)
    sync(device)
    wall = time.perf_counter() - t0
    history = res.history
    out: dict[str, Any] = {
        "time_limit_seconds": seconds, "wall_seconds": wall, "iterations": res.iterations,
        "seconds_per_iteration": wall / max(res.iterations, 1), "skipped": res.skipped,
        "rollbacks": res.rollbacks, "loss_first": history[0]["loss"] if history else None,
        "loss_last": history[-1]["loss"] if history else None, "T": distiller.config.inner.steps,
        "width": distiller.config.inner.width, "slots_per_class": res.memory.slots,
        "floats_stored": res.memory.floats_stored(),
    }
    ipc = max(1, int(distiller.config.memory.budget_ipc))
    x, y = distiller.label_space.class_examples(res.memory)
    try:  # a failing evaluation keeps the distillation's numbers
        start = starting_point(distiller.config, train, device)
        out["evaluation"] = evaluate_sets(distiller, test, device, runs, ipc,
                                          {"memory": (x, y), "starting_point": start})
    except Exception as exc:  # noqa: BLE001 (recorded; main() reports it)
        out["evaluation"] = {"error": error_text(exc)}
    return out


def evaluate_sets(distiller, test, device: torch.device, runs: int, ipc: int,
                  recalled: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Test accuracy of networks retrained on each recalled set and on ``ipc`` random and
    herded real images per class of the distillation split."""
    from memdistill.evaluate import TrainingSet, evaluate, select_subset

    ec = distiller.config.evaluation
    sets = {name: TrainingSet(x, y, device=device) for name, (x, y) in recalled.items()}
    for method in ("random", "herding"):
        chosen = distiller.train.subset(select_subset(distiller.train, ipc, method, seed=0))
        sets[f"{method}_real"] = TrainingSet(chosen, device=device)
    out: dict[str, Any] = {"split": test.split, "test_images": len(test), "runs": runs, "epochs": ec.epochs,
                           "width": ec.width, "real_ipc": ipc}
    for name, data in sets.items():
        r = evaluate(data, test, ec, runs=runs, seed=0, device=device)
        out[name] = {"mean": r.mean, "std": r.std, "std_ddof": 1, "accuracies": r.accuracies,
                     "examples": len(data), "seconds": r.wall_seconds}
    return out


# ------------------------------------------------------------------------- driver
def default_out(device: torch.device, quick: bool) -> Path:
    return ROOT / "docs" / "bench" / f"gpu_check_{device_slug(device)}{'_quick' if quick else ''}.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda; fails without CUDA)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the CI smoke run (about half a minute on one core)")
    ap.add_argument("--out", help="the JSON file (default: docs/bench/gpu_check_<device>[_quick].json)")
    ap.add_argument("--data", help="folder holding MNIST/ (default: $MEMDISTILL_DATA, else ../shared/data)")
    ap.add_argument("--distill-seconds", type=float, help="wall-time limit of the distillation (default 180; quick 3)")
    ap.add_argument("--timed-steps", type=int, help="timed outer steps per dataset after the warm-up (default 2; quick 1)")
    ap.add_argument("--eval-runs", type=int, help="networks retrained per evaluated set (default 2; quick 1)")
    ap.add_argument("--budget-seconds", type=float, help="shorten the distillation so the whole check ends "
                    "within this many seconds (default 450; quick and 0: never shorten)")
    ap.add_argument("--test-timeout", type=float, default=300.0, help="seconds allowed to the pytest run")
    ap.add_argument("--skip", default="", help="comma-separated sections not to run (tests, peak_rates, "
                                                 "outer_step, distillation)")
    args = ap.parse_args(argv)
    args.distill_seconds = args.distill_seconds if args.distill_seconds is not None else (3.0 if args.quick else 180.0)
    args.budget_seconds = args.budget_seconds if args.budget_seconds is not None else (0.0 if args.quick else 450.0)
    args.timed_steps = args.timed_steps or (1 if args.quick else 2)
    args.eval_runs = args.eval_runs or (1 if args.quick else 2)
    return args


def distill_limit(args: argparse.Namespace, elapsed: float) -> float:
    """``--distill-seconds``, shortened (to 30 s at least) when the sections before it ran
    so long that the whole check would pass ``--budget-seconds`` (``EVAL_RESERVE`` seconds
    are kept for the evaluation after it)."""
    if args.budget_seconds <= 0:
        return args.distill_seconds
    return min(args.distill_seconds, max(30.0, args.budget_seconds - elapsed - EVAL_RESERVE))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = check_device(args.device)
    root = data_root(args.data)
    out_path = Path(args.out) if args.out else default_out(device, args.quick)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "script": "bench/gpu_check.py",
        "command": "python bench/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": git_state(),
        "device": str(device), "quick": args.quick, "data": str(root), "complete": False,
        "errors": {}, "section_seconds": {},
    }
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("machine", lambda: machine(device)),
        ("tests", lambda: run_tests(cuda_tests(ROOT / "tests"), root, args.test_timeout)),
        ("peak_rates", lambda: peak_rates(device, args.quick)),
        ("outer_step", lambda: outer_steps(device, root, args.quick, args.timed_steps)),
        ("distillation", lambda: distill_and_evaluate(
            device, root, args.quick, distill_limit(args, time.perf_counter() - started), args.eval_runs)),
    ]
    for name, run in sections:
        if name in skip:
            result[name] = {"skipped": "--skip"}
            continue
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            result[name] = run()
            if name == "distillation":
                result[name]["time_limit_requested_seconds"] = args.distill_seconds
        except Exception as exc:  # noqa: BLE001 (recorded; the other sections still run)
            result[name] = None
            result["errors"][name] = error_text(exc)
        for part, error in nested_errors(result[name]).items():
            result["errors"][f"{name}.{part}"] = error
        for part, error in result["errors"].items():
            if part.split(".")[0] == name:
                print(f"gpu_check: {part} failed:\n{error}", file=sys.stderr, flush=True)
        result["section_seconds"][name] = time.perf_counter() - t0
        add_fractions(result)
        result["total_seconds"] = time.perf_counter() - started
        atomic_write_json(out_path, result)
    result["complete"] = True
    result["total_seconds"] = time.perf_counter() - started
    atomic_write_json(out_path, result)
    print(f"gpu_check: wrote {out_path} in {result['total_seconds']:.0f} s"
          + (f"; failed sections: {', '.join(result['errors'])}" if result["errors"] else ""), file=sys.stderr)
    tests = result.get("tests") or {}
    return 1 if result["errors"] or tests.get("failed") or tests.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
