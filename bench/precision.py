"""The opt-in bfloat16 inner network (``inner.precision=bfloat16``) against the float32
default, side by side in one process: seconds per outer step and how close the
meta-gradient stays.

Configuration: issue 13's reference (the ``paper`` protocol at a ConvNet-3 of
``--width``, instance norm, the field's geometry: 32 x 32 maps from 28 x 28 MNIST;
``bases`` memory K = 16, ds = 2; 10 recalled examples per class per inner step; 640
real images in the outer loss), one torch thread unless ``--threads``. For each unroll
length T the two engines take turns on the same memory and the same outer iteration
(same network initialisation, slots and real batch), ``--rounds`` times each, so the
ratio is measured under the same machine load; the cosine compares the two
meta-gradients of the same iteration.

    python bench/precision.py --steps 10,30 --widths 128,32 --rounds 2

Writes docs/bench/precision.json and the matching block of docs/BENCHMARKS.md
(``--doc`` to write the block elsewhere). Quality on the validation split is measured
with ``bench/pool_sweep.py --set inner.precision=bfloat16`` (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def distiller(precision: str, steps: int, width: int, train):
    """Issue 13's reference cell (``bench/meta_gradient.py``) at ``precision``."""
    from meta_gradient import reference_config

    from memdistill.distill import Distiller

    return Distiller(reference_config("checkpointed", steps, 1, width, sets={"inner.precision": precision}), train)


def flat(grads) -> torch.Tensor:
    return torch.cat([g.detach().flatten() for g in grads])


def one_length(steps: int, width: int, rounds: int, train) -> dict:
    engines = {p: distiller(p, steps, width, train) for p in ("float32", "bfloat16")}
    memory = engines["float32"].new_memory()
    seconds: dict[str, list[float]] = {p: [] for p in engines}
    cosines, norm_ratios, losses = [], [], {p: [] for p in engines}
    for it in range(rounds):
        grads = {}
        for p, d in engines.items():
            t0 = time.perf_counter()
            res = d.meta_step(memory, it)
            seconds[p].append(time.perf_counter() - t0)
            grads[p], _ = flat(res.grads), losses[p].append(res.loss)
        a, b = grads["float32"], grads["bfloat16"]
        cosines.append(float(F.cosine_similarity(a, b, dim=0)))
        norm_ratios.append(float(b.norm() / a.norm()))
    med = {p: statistics.median(s) for p, s in seconds.items()}
    return {"steps": steps, "width": width, "rounds": rounds, "seconds": seconds,
            "median_seconds": med, "speedup": med["float32"] / med["bfloat16"],
            "gradient_cosine": cosines, "gradient_norm_ratio": norm_ratios, "outer_loss": losses}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default="10,30", help="unroll lengths T, comma separated")
    p.add_argument("--widths", default="128", help="ConvNet-3 widths, comma separated")
    p.add_argument("--rounds", type=int, default=2, help="outer steps per engine and length")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON path (default docs/bench/precision.json)")
    p.add_argument("--doc", default=None, help="markdown file for the block (default docs/BENCHMARKS.md)")
    args = p.parse_args(argv)
    from _report import DOCS, machine, replace_block, today

    from memdistill.data import load_dataset
    from memdistill.engine import check_precision

    check_precision("bfloat16", torch.device("cpu"))  # a clear error on a CPU without bfloat16 kernels
    torch.set_num_threads(args.threads)
    train = load_dataset("mnist", "train")
    command = "python bench/precision.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cells = []
    for width in (int(w) for w in args.widths.split(",")):
        for T in (int(s) for s in args.steps.split(",")):
            cells.append(one_length(T, width, args.rounds, train))
            print(json.dumps({k: cells[-1][k] for k in ("width", "steps", "median_seconds", "speedup",
                                                        "gradient_cosine")}), flush=True)
    res = {"date": today(), "machine": machine(), "threads": args.threads, "command": command, "cells": cells}
    out = Path(args.out) if args.out else DOCS / "bench" / "precision.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    rows = ["| width | T | float32 s/step | bfloat16 s/step | speed-up | meta-gradient cosine | norm ratio (bf16 / f32) |",
            "|---|---|---|---|---|---|---|"]
    for c in cells:
        rows.append(f"| {c['width']} | {c['steps']} | {c['median_seconds']['float32']:.2f} | {c['median_seconds']['bfloat16']:.2f} "
                    f"| {c['speedup']:.2f}x | {', '.join(f'{x:.4f}' for x in c['gradient_cosine'])} "
                    f"| {', '.join(f'{x:.3f}' for x in c['gradient_norm_ratio'])} |")
    body = "\n".join([f"Command: `{command}`  ", f"Machine: {res['machine']}  ",
                      f"Date: {res['date']}. Median seconds per outer step over {args.rounds} interleaved rounds; "
                      "ConvNet-3, 32 x 32 maps.", "", *rows, "",
                      f"Raw numbers: `{out.relative_to(DOCS.parent) if out.is_relative_to(DOCS.parent) else out}`."])
    replace_block(Path(args.doc) if args.doc else DOCS / "BENCHMARKS.md", "precision", body,
                  "Reduced precision: a bfloat16 inner network")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
