"""Seconds per outer iteration and peak memory of the meta-gradient, checkpointed
against full-graph mode, side by side on the same machine.

Configuration (the issue's): ConvNet-3 width 128 instance norm, `bases` memory with
K = 16, ds = 2, MNIST (1 x 28 x 28), 10 recalled examples per class per inner step,
inner SGD lr 0.01 momentum 0.9, outer loss on 640 real images (64 per class).

Each cell runs in its own process, so peak resident memory (ru_maxrss) is the cell's
own. A cell whose projected memory would not fit the machine is skipped and says so.

    python bench/meta_gradient.py [--steps 10,30,50] [--budgets 1,10] [--width 128]

Writes docs/bench/meta_gradient.json and the matching block of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


SCHEDULES = "dense (every state kept), auto (every ceil(sqrt(T))-th), every:K, mb:M (at most M MiB of states)"


def schedule_flags(schedule: str) -> dict:
    """The ``outer`` options of a checkpoint schedule named as in :data:`SCHEDULES`."""
    name, _, value = schedule.partition(":")
    if name == "dense":
        return {}
    if name == "auto":
        return {"checkpoint_segment": 0}
    if name == "every":
        return {"checkpoint_segment": int(value)}
    if name == "mb":
        return {"checkpoint_memory_mb": float(value)}
    raise SystemExit(f"unknown schedule {schedule!r}; valid: {SCHEDULES}")


def reference_config(mode: str, steps: int, budget: float, width: int, schedule: str = "dense",
                     arch: str = "convnet", n_per_class: int = 10, real_per_class: int = 64, device: str = "cpu",
                     sets: dict | None = None):
    """The reference (``paper``) protocol on MNIST at a cell's network, unroll, budget and
    schedule (``bases`` K = 16, ds = 2); ``sets``: more settings (``{"inner.precision": ...}``)."""
    from memdistill.config import resolve

    return resolve("paper", "mnist", budget, flags={
        "device": device,
        "memory": {"num_bases": 16, "downsample": 2},
        "inner": {"arch": arch, "width": width, "steps": steps, "n_per_class": n_per_class, "augment": "none"},
        "outer": {"unroll": mode, "real_per_class": real_per_class, **schedule_flags(schedule)},
        **(sets or {}),
    }, flags_source="bench")


def one_cell(mode: str, steps: int, budget: float, width: int, iterations: int, schedule: str = "dense",
             arch: str = "convnet", n_per_class: int = 10, real_per_class: int = 64, device: str = "cpu",
             sets: dict | None = None) -> dict:
    """One cell, timed in this process (``sets``: see :func:`reference_config`; used by
    ``bench/engine_compare.py``)."""
    from memdistill.data import load_dataset
    from memdistill.distill import Distiller

    cfg = reference_config(mode, steps, budget, width, schedule, arch, n_per_class, real_per_class, device, sets)
    if getattr(cfg, "keep_freed_memory", False):  # this worker is its own process, as the CLI's is
        from memdistill._allocator import keep_freed_memory

        keep_freed_memory()
    d = Distiller(cfg, load_dataset("mnist", "train"))
    mem = d.new_memory()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for it in range(iterations):
        t0 = time.perf_counter()
        d.meta_step(mem, it)  # reads the losses back once, at its end
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "steps": steps, "budget_ipc": budget, "width": width, "arch": arch,
            "schedule": schedule, "n_per_class": n_per_class, "real_per_class": real_per_class,
            "seconds_per_iteration": min(times), "all_seconds": times,
            "seconds_per_inner_step": min(times) / steps,
            "peak_rss_gb": peak / 1024**2, "rss_before_gb": base_rss / 1024**2,
            "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1024**3 if cuda else None,
            "slots": mem.slots, "sets": sets or {}, "threads": torch.get_num_threads(), "memdistill": str(Path(sys.modules["memdistill"].__file__).parent)}


def schedule_table(args) -> None:
    """Peak memory and time of each checkpoint schedule at each T (``--schedules``), each
    cell in a fresh process: its own ``ru_maxrss`` (or CUDA peak). Writes
    docs/bench/meta_gradient_memory[_TAG].json and the matching block of BENCHMARKS.md."""
    from _report import DOCS, machine, replace_block, today
    from memdistill._io import atomic_write_json

    cells = []
    for steps in [int(s) for s in args.steps.split(",")]:
        for schedule in args.schedules.split(","):
            cmd = [sys.executable, __file__, "--cell", f"checkpointed:{steps}:{args.budgets.split(',')[0]}:{schedule}",
                   "--width", str(args.width), "--iterations", str(args.iterations), "--arch", args.arch,
                   "--n-per-class", str(args.n_per_class), "--real-per-class", str(args.real_per_class),
                   "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            ok = proc.returncode == 0
            cells.append(json.loads(proc.stdout.strip().splitlines()[-1]) if ok else
                         {"steps": steps, "schedule": schedule, "skipped": proc.stderr.strip().splitlines()[-1:]})
            print(json.dumps(cells[-1]), flush=True)
    command = "python bench/meta_gradient.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("cell", "no_doc", "from_json", "full_max_gb") and not (k == "tag" and not v))
    res = {"date": today(), "machine": machine(), "command": command, "cells": cells}
    suffix = f"_{args.tag}" if args.tag else ""
    if args.no_doc:
        return
    atomic_write_json(DOCS / "bench" / f"meta_gradient_memory{suffix}.json", res)
    peak_key = "peak_cuda_gb" if args.device.startswith("cuda") else "peak_rss_gb"
    ref = {c["schedule"]: c[peak_key] for c in cells if "skipped" not in c and c["steps"] == min(
        int(s) for s in args.steps.split(","))}
    rows = ["| T | schedule | s / outer it | peak GB | peak / same schedule's at the smallest T | before the step GB |",
            "|---|---|---|---|---|---|"]
    for c in cells:
        if "skipped" in c:
            rows.append(f"| {c['steps']} | {c['schedule']} | failed: {c['skipped']} | - | - | - |")
            continue
        base = ref.get(c["schedule"])
        ratio = f"{c[peak_key] / base:.2f}x" if base else "-"
        rows.append(f"| {c['steps']} | {c['schedule']} | {c['seconds_per_iteration']:.1f} | {c[peak_key]:.2f} | "
                    f"{ratio} | {c['rss_before_gb']:.2f} |")
    body = "\n".join([f"Command: `{command}`  ", f"Machine: {res['machine']}  ", f"Date: {res['date']}.", "",
                      *rows, "", f"Raw numbers: `docs/bench/meta_gradient_memory{suffix}.json`."])
    key = "meta-gradient-memory" + (f"-{args.tag}" if args.tag else "")
    replace_block(DOCS / "BENCHMARKS.md", key, body, "Meta-gradient: peak memory of checkpoint schedules"
                  + (f" ({args.tag})" if args.tag else ""))


def flops_per_iteration(width: int) -> tuple[float, float]:
    """FLOPs of one outer iteration as ``(constant, per inner step)``, counted by
    ``torch.utils.flop_counter`` (convolutions and matrix products, double backward
    included) at T = 2 and T = 3; the count is linear in T."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    for steps in (2, 3):
        from memdistill.config import resolve
        from memdistill.data import load_dataset
        from memdistill.distill import Distiller

        cfg = resolve("paper", "mnist", 1, flags={"inner": {"width": width, "steps": steps, "n_per_class": 10,
                                                            "augment": "none"}, "outer": {"real_per_class": 64}},
                      flags_source="bench")
        d = Distiller(cfg, load_dataset("mnist", "train"))
        mem = d.new_memory()
        with FlopCounterMode(display=False) as fc:
            d.meta_step(mem, 0)
        counts.append(fc.get_total_flops())
    per_step = counts[1] - counts[0]
    return counts[0] - 2 * per_step, per_step


def conv_rate(threads: int) -> float:
    """Measured GFLOP/s of a 128->128 3x3 convolution, 16x16, batch 100 (forward)."""
    x = torch.randn(100, 128, 16, 16)
    w = torch.randn(128, 128, 3, 3)
    for _ in range(2):
        torch.nn.functional.conv2d(x, w, padding=1)
    n, t0 = 10, time.perf_counter()
    for _ in range(n):
        torch.nn.functional.conv2d(x, w, padding=1)
    dt = (time.perf_counter() - t0) / n
    return 2 * 100 * 128 * 128 * 9 * 16 * 16 / dt / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="10,30,50")
    ap.add_argument("--budgets", default="1,10")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--full-max-gb", type=float, default=18.0,
                    help="skip full-graph cells projected above this (about 0.4 GB per step)")
    ap.add_argument("--tag", default="", help="a separate JSON/doc block for this set of cells (e.g. long)")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    ap.add_argument("--cell-sets", default="{}", help=argparse.SUPPRESS)  # JSON: more settings of the cell
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--from-json", action="store_true",
                    help="reuse the cells of docs/bench/meta_gradient.json; recount FLOPs and rewrite the doc")
    ap.add_argument("--schedules", help=f"compare checkpoint schedules instead of checkpointed vs full: "
                    f"a comma-separated list of {SCHEDULES}; its own doc block")
    ap.add_argument("--arch", default="convnet", help="the inner network (--schedules only)")
    ap.add_argument("--n-per-class", type=int, default=10, help="recalled examples per class per inner step (--schedules only)")
    ap.add_argument("--real-per-class", type=int, default=64, help="real images per class of the outer loss (--schedules only)")
    ap.add_argument("--device", default="cpu", help="--schedules only; cuda: peak memory is torch.cuda.max_memory_allocated")
    args = ap.parse_args()
    if args.cell:
        # an arm of bench/engine_compare.py (--candidate-env MEMDISTILL_BENCH_FLUSH_DENORMAL=1):
        # subnormal floats treated as zero by the CPU in this worker
        if os.environ.get("MEMDISTILL_BENCH_FLUSH_DENORMAL") == "1" and not torch.set_flush_denormal(True):
            raise SystemExit("MEMDISTILL_BENCH_FLUSH_DENORMAL=1: this CPU cannot flush denormals (no SSE3)")
        mode, steps, budget, *schedule = args.cell.split(":", 3)
        print(json.dumps(one_cell(mode, int(steps), float(budget), args.width, args.iterations,
                                  schedule[0] if schedule else "dense", args.arch, args.n_per_class,
                                  args.real_per_class, args.device, json.loads(args.cell_sets))))
        return

    sys.path.insert(0, str(HERE))
    if args.schedules:
        schedule_table(args)
        return
    from _report import DOCS, machine, replace_block, today
    from memdistill._io import atomic_write_json

    suffix = f"_{args.tag}" if args.tag else ""
    cells = []
    if args.from_json:
        old = json.loads((DOCS / "bench" / f"meta_gradient{suffix}.json").read_text())
        cells = old["cells"]
    for budget in ([] if args.from_json else [float(b) for b in args.budgets.split(",")]):
        for steps in [int(s) for s in args.steps.split(",")]:
            for mode in ("checkpointed", "full"):
                if mode == "full" and 0.45 * steps > args.full_max_gb:
                    cells.append({"mode": mode, "steps": steps, "budget_ipc": budget,
                                  "skipped": f"projected > {args.full_max_gb} GB"})
                    continue
                cmd = [sys.executable, __file__, "--cell", f"{mode}:{steps}:{budget}", "--width",
                       str(args.width), "--iterations", str(args.iterations)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    cells.append({"mode": mode, "steps": steps, "budget_ipc": budget,
                                  "skipped": f"failed: {proc.stderr.strip().splitlines()[-1:]}"})
                else:
                    cells.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(cells[-1]), flush=True)
    rate = conv_rate(torch.get_num_threads())
    const, per_step = flops_per_iteration(args.width)
    for c in cells:
        if "skipped" not in c:
            c["gflop_per_iteration"] = (const + c["steps"] * per_step) / 1e9
            c["achieved_gflops"] = c["gflop_per_iteration"] / c["seconds_per_iteration"]
    command = "python bench/meta_gradient.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("cell", "no_doc", "from_json", "schedules", "arch", "n_per_class", "real_per_class", "device")
        and not (k == "tag" and not v))
    res = {"date": today(), "machine": machine(), "command": command, "conv_gflops": rate,
           "gflop_per_inner_step": per_step / 1e9, "gflop_constant": const / 1e9, "cells": cells}
    if args.no_doc:
        return
    atomic_write_json(DOCS / "bench" / f"meta_gradient{suffix}.json", res)
    rows = ["| budget | T | mode | slots/class | s / outer it | s / inner step | peak RSS GB | GFLOP/s (fraction of conv rate) |",
            "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        if "skipped" in c:
            rows.append(f"| {c['budget_ipc']:g} | {c['steps']} | {c['mode']} | - | skipped: {c['skipped']} | - | - | - |")
        else:
            rows.append(f"| {c['budget_ipc']:g} | {c['steps']} | {c['mode']} | {c['slots']} | {c['seconds_per_iteration']:.1f} | "
                        f"{c['seconds_per_inner_step']:.2f} | {c['peak_rss_gb']:.2f} | "
                        f"{c['achieved_gflops']:.0f} ({c['achieved_gflops'] / rate:.0%}) |")
    body = "\n".join([f"Command: `{command}`  ", f"Machine: {res['machine']}  ",
                      f"Date: {res['date']}. Fastest of {args.iterations} outer iterations per cell, each cell in its own "
                      f"process. Measured 3x3 convolution rate (128->128 channels, 16x16, batch 100): {rate:.0f} GFLOP/s. "
                      f"FLOPs counted with torch.utils.flop_counter: {per_step / 1e9:.1f} GFLOP per inner step "
                      f"(forward unroll + recomputation + vector-Jacobian product), {const / 1e9:.1f} GFLOP per "
                      f"iteration besides (outer loss).",
                      "", *rows, "", f"Raw numbers: `docs/bench/meta_gradient{suffix}.json`."])
    replace_block(DOCS / "BENCHMARKS.md", "meta-gradient" + (f"-{args.tag}" if args.tag else ""), body,
                  "Meta-gradient: checkpointed vs full graph" + (f" ({args.tag})" if args.tag else ""))


if __name__ == "__main__":
    main()
