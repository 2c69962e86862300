"""Outer iterations per second and meta-samples (inner unrolls) per second of a
distillation run in one process and spread over several with torchrun, side by side.

Each cell is one torchrun launch ``W`` processes x ``T`` threads on one machine (gloo
on CPU, NCCL on CUDA); cells with the same ``W x T`` use the same cores, so the
difference between them is the cost of communication and of splitting the work.
Every cell computes the same total meta-batch per outer step (``--meta-batch``).

    python bench/scaling.py [--cells 1x2,2x1,2x1:split] [--meta-batch 2] [--iterations 4]

A cell ``2x1:split`` sets ``outer.split_classes``: both processes take part in every
unroll, each on half of the classes, with an all-reduce at every inner step.

On a GPU machine (one process per GPU):

    python bench/scaling.py --device cuda --preset paper --budget 10 --cells 1x1 \\
        --meta-batch 1 --iterations 3 --count-flops --peak-tflops 989 --tag gpu

Writes docs/bench/scaling[_TAG].json and the matching block of docs/SCALING.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def worker(spec: dict) -> None:
    """One rank of a cell (run under torchrun)."""
    import memdistill.distill.step as distill_module  # where the meta step sums over ranks
    from memdistill.config import resolve
    from memdistill.data import load_dataset
    from memdistill.distill import Distiller
    from memdistill.distributed import init_distributed

    torch.set_num_threads(spec["threads"])
    dist, device = init_distributed(os.environ, spec["device"], timeout_s=900)
    cfg = resolve(spec["preset"], "mnist", spec["budget"], flags=spec["overrides"], flags_source="bench")
    d = Distiller(cfg, load_dataset("mnist", "train", root=spec.get("root")), device=device, dist=dist)
    mem = d.new_memory()

    comm = {"s": 0.0}
    plain = distill_module.sum_over_ranks

    def timed(ctx, tensors):  # every meta-gradient all-reduce, waiting for the slower rank included
        _sync(device)
        t0 = time.perf_counter()
        out = plain(ctx, tensors)
        _sync(device)
        comm["s"] += time.perf_counter() - t0
        return out

    distill_module.sum_over_ranks = timed
    times, comms = [], []
    for it in range(spec["warmup"] + spec["iterations"]):
        dist.barrier()
        c0, t0 = comm["s"], time.perf_counter()
        d.outer_gradient(mem, it)
        _sync(device)
        if it >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
            comms.append(comm["s"] - c0)
    # communication alone: all-reduce of a buffer the size of the memory
    n = sum(p.numel() for p in mem.parameters())
    buf = torch.zeros(n, device=device)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(20):
        dist.all_reduce_sum(buf)
    _sync(device)
    allreduce_s = (time.perf_counter() - t0) / 20
    flops = None
    if spec.get("count_flops") and dist.is_main:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            d.meta_step(mem, 0)
        flops = fc.get_total_flops() * cfg.outer.meta_batch / dist.world_size
    peak_gb = (torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda"
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)
    ranks = dist.all_gather_object({"times": times, "comm": comms, "peak_gb": peak_gb})
    if dist.is_main:
        print("RESULT " + json.dumps({
            "world_size": dist.world_size, "threads": spec["threads"], "split": spec["split"],
            "memory_floats": n, "allreduce_memory_s": allreduce_s, "flops_per_iteration_per_rank": flops,
            "ranks": ranks}), flush=True)
    dist.close(synchronize=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cell(world: int, threads: int, split: bool, args) -> dict:
    overrides = {
        "inner.steps": args.steps, "inner.width": args.width, "outer.meta_batch": args.meta_batch,
        "outer.split_classes": split, "device": args.device,
    }
    spec = {"threads": threads, "device": args.device, "preset": args.preset, "budget": args.budget,
            "overrides": overrides, "warmup": 1, "iterations": args.iterations, "split": split,
            "root": args.root, "count_flops": args.count_flops}
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    src = str(HERE.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           __file__, "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"cell {world}x{threads} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    cell = json.loads(lines[-1][len("RESULT "):])
    # an iteration ends when the slowest rank's does; take the median over iterations
    per_it = [max(r["times"][i] for r in cell["ranks"]) for i in range(args.iterations)]
    comm = [max(r["comm"][i] for r in cell["ranks"]) for i in range(args.iterations)]
    med = sorted(per_it)[len(per_it) // 2]
    cell.update(seconds_per_iteration=med, iterations_per_s=1 / med,
                meta_samples_per_s=args.meta_batch / med,
                comm_seconds_per_iteration=sorted(comm)[len(comm) // 2],
                peak_gb_per_process=max(r["peak_gb"] for r in cell["ranks"]))
    return cell


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", default="1x2,2x1,2x1:split",
                    help="comma-separated PROCESSESxTHREADS[:split] cells")
    ap.add_argument("--meta-batch", type=int, default=2, help="inner unrolls per outer step (all cells)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=4, help="timed outer iterations per cell (after 1 warm-up)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--root", default=None, help="data folder (default: $MEMDISTILL_DATA)")
    ap.add_argument("--count-flops", action="store_true", help="count FLOPs of one unroll (costs one more)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the fraction reached")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved repeats of all cells; the fastest counts")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--from-json", action="store_true", help="rewrite the doc block from the recorded JSON")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        from memdistill.distributed import exit_process

        worker(json.loads(args.worker))
        exit_process(0)  # a rank ends as the memdistill program does under torchrun

    sys.path.insert(0, str(HERE))
    from _report import DOCS, machine, replace_block, today
    from memdistill._io import atomic_write_json

    suffix = f"_{args.tag}" if args.tag else ""
    if args.from_json:  # re-render the doc block from the recorded numbers
        write_doc(json.loads((DOCS / "bench" / f"scaling{suffix}.json").read_text()), DOCS, replace_block)
        return
    load_before = os.getloadavg()
    best: dict[str, dict] = {}
    for rnd in range(args.rounds):  # cells interleaved; each keeps its fastest round
        for item in args.cells.split(","):
            shape, _, mode = item.partition(":")
            world, threads = (int(v) for v in shape.split("x"))
            cell = run_cell(world, threads, mode == "split", args)
            cell["round"] = rnd
            if item not in best or cell["seconds_per_iteration"] < best[item]["seconds_per_iteration"]:
                best[item] = cell
            print(json.dumps({k: v for k, v in cell.items() if k != "ranks"}), flush=True)
    cells = [best[item] for item in args.cells.split(",")]
    load = [round(v, 2) for v in load_before + os.getloadavg()]
    command = "python bench/scaling.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k.replace('_', '-')}"
        for k, v in vars(args).items()
        if k not in ("worker", "no_doc", "root", "from_json") and v not in (None, False, ""))
    settings = {k: getattr(args, k) for k in ("preset", "steps", "width", "budget", "meta_batch", "iterations",
                                             "rounds", "count_flops", "peak_tflops", "tag")}
    res = {"date": today(), "machine": machine(), "command": command, "load_average_before_after": load,
           "settings": settings, "cells": cells}
    if args.no_doc:
        return
    atomic_write_json(DOCS / "bench" / f"scaling{suffix}.json", res)
    write_doc(res, DOCS, replace_block)


def write_doc(res: dict, docs: Path, replace_block) -> None:
    """The table of ``res`` into its block of docs/SCALING.md."""
    a, cells, load = res["settings"], res["cells"], res["load_average_before_after"]
    suffix = f"_{a['tag']}" if a["tag"] else ""
    base = cells[0]["seconds_per_iteration"]
    rows = ["| processes x threads | unrolls | outer it/s | meta-samples/s | s / outer it | vs first row | "
            "all-reduce s / it (incl. waiting) | one all-reduce of the memory (ms) | peak GB / process |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        how = ("one process, one after another" if c["world_size"] == 1
               else "split by class" if c["split"] else "spread over processes")
        rows.append(f"| {c['world_size']} x {c['threads']} | {how} | {c['iterations_per_s']:.3f} | "
                    f"{c['meta_samples_per_s']:.3f} | {c['seconds_per_iteration']:.2f} | "
                    f"{base / c['seconds_per_iteration']:.2f}x | {c['comm_seconds_per_iteration']:.3f} | "
                    f"{1e3 * c['allreduce_memory_s']:.2f} | {c['peak_gb_per_process']:.2f} |")
    extra = ""
    if a["count_flops"] and cells[0].get("flops_per_iteration_per_rank") and a["peak_tflops"]:
        c = cells[0]
        rate = c["flops_per_iteration_per_rank"] / c["seconds_per_iteration"] / 1e12
        extra = (f" Counted {c['flops_per_iteration_per_rank'] / 1e12:.2f} TFLOP per outer iteration "
                 f"per process: {rate:.1f} TFLOP/s, {rate / a['peak_tflops']:.1%} of the stated peak "
                 f"{a['peak_tflops']:g} TFLOP/s.")
    body = "\n".join([
        f"Command: `{res['command']}`  ", f"Machine: {res['machine']}  ",
        f"Date: {res['date']}. MNIST, preset `{a['preset']}` with T = {a['steps']} inner steps, width "
        f"{a['width']}, budget {a['budget']:g}, {a['meta_batch']} inner unrolls per outer step in every "
        f"cell; median of {a['iterations']} outer iterations after one warm-up, an iteration timed until "
        f"its slowest process finishes; the fastest of {a['rounds']} interleaved rounds per cell. "
        f"Load average (1, 5, 15 min) before: {load[0]}, {load[1]}, {load[2]}; after: {load[3]}, {load[4]}, "
        f"{load[5]} (a load above the cells' own means other jobs ran beside them).{extra}",
        "", *rows, "", f"Raw numbers: `docs/bench/scaling{suffix}.json`."])
    replace_block(docs / "SCALING.md", "scaling" + (f"-{a['tag']}" if a["tag"] else ""), body,
                  "Measured: one process against several" + (f" ({a['tag']})" if a["tag"] else ""))

if __name__ == "__main__":
    main()
