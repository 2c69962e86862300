"""Which augmentation the evaluator should train with, per dataset, chosen on the
validation split (docs/RESULTS.md, "The evaluator's augmentation at budget 1"), and with
which learning-rate schedule (``--lr-schedules``; "The evaluator's learning-rate schedule"),
rate (``--lr``) and batch size (``--batch-size``; "The evaluator's batch size and rate").

A memory distilled by the CLI (``memdistill distill ... --out FILE``) holds out the
validation split its configuration records. For each augmentation named, this script
retrains networks on the memory, on its own starting point (rebuilt from the recorded
seed and configuration) and on herded real images at equal storage, and scores them all
on that validation split: the three under the same evaluator, so each augmentation is
judged by what it does to the memory *against* its references, never on the test set.

    memdistill distill --preset cpu --dataset mnist --budget-ipc 1 --iterations 120 \\
        --set evaluation.every=0 --set evaluation.at_start=false --out mnist.safetensors
    python bench/eval_augment.py mnist.safetensors --augments none,rotate,scale,crop \\
        --runs 2 --out docs/bench/eval_augment/mnist_b1.json

The evaluator is the memory's recorded one (the preset's: for ``cpu`` width 32, 200
epochs) unless ``--width`` / ``--epochs`` say otherwise. An augmentation is any
registered name or a ``+`` chain of them (``crop+scale+rotate``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from memdistill._io import atomic_write_json
from memdistill._machine import machine_info
from memdistill.augment import create_augmentation
from memdistill.config import from_record
from memdistill.data import load_dataset
from memdistill.distill import Distiller, starting_point
from memdistill.evaluate import TrainConfig, TrainingSet, evaluate
from memdistill.evaluate.selection import select_subset
from memdistill.memory.file import load_memory


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="a memory file written by `memdistill distill`")
    p.add_argument("--augments", help="comma-separated, e.g. none,rotate,crop+scale (default: the file's)")
    p.add_argument("--lr-schedules", help="comma-separated evaluation learning-rate schedules, e.g. "
                                          "constant,step,cosine (default: the file's); every augmentation is "
                                          "tried with every schedule")
    p.add_argument("--runs", type=int, default=2, help="networks per (set, augmentation)")
    p.add_argument("--width", type=int, help="evaluation width (default: the file's)")
    p.add_argument("--epochs", type=int, help="evaluation epochs (default: the file's)")
    p.add_argument("--batch-size", type=int, help="evaluation batch size (default: the file's)")
    p.add_argument("--lr", type=float, help="evaluation SGD learning rate (default: the file's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-herding", action="store_true")
    p.add_argument("--sets", default="memory,start,herding",
                   help="which of memory,start,herding to retrain (default: all three; a subset saves "
                        "time when the references were measured under the same evaluator before)")
    p.add_argument("--root", default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wanted = {x.strip() for x in args.sets.split(",") if x.strip()}
    if not wanted or wanted - {"memory", "start", "herding"}:
        raise SystemExit(f"--sets {args.sets!r}: name one or more of memory,start,herding")
    if args.no_herding:
        wanted.discard("herding")
    mf = load_memory(args.file)
    if not mf.meta.get("config"):
        raise SystemExit(f"{args.file} records no configuration: cannot rebuild its validation split")
    cfg = from_record(mf.meta["config"])
    augments = _names(args.augments, cfg.evaluation.augment)
    schedules = _names(args.lr_schedules, cfg.evaluation.lr_schedule)
    for a in augments:
        create_augmentation(a)  # fail now on a bad name, not after an hour
    for s in schedules:
        TrainConfig(lr_schedule=s)
    train = load_dataset(cfg.dataset, "train", root=args.root)
    d = Distiller(cfg, train)  # only for its split: d.train excludes d.val, as in the distillation
    sets = {}
    if "memory" in wanted:
        sets["memory"] = TrainingSet(*d.label_space.class_examples(mf.memory))
    if "start" in wanted:
        sets["start"] = TrainingSet(*starting_point(cfg, train))
    if "herding" in wanted:
        ipc = max(1, int(cfg.memory.budget_ipc))
        idx = select_subset(d.train, ipc, "herding")
        sets["herding"] = TrainingSet(d.train.subset(idx))
    ec = cfg.evaluation
    ec = replace(ec, width=args.width or ec.width, epochs=args.epochs or ec.epochs,
                 batch_size=args.batch_size or ec.batch_size, lr=args.lr or ec.lr)
    rows = []
    for a, s in [(a, s) for a in augments for s in schedules]:
        row = {"augment": a, "lr_schedule": s}
        for name, data in sets.items():
            t = time.perf_counter()
            res = evaluate(data, d.val, replace(ec, augment=a, lr_schedule=s), runs=args.runs, seed=cfg.seed)
            row[name] = {"mean": res.mean, "std": res.std, "std_ddof": 1, "accuracies": res.accuracies,
                         "seconds": time.perf_counter() - t}
        print(json.dumps({k: (v if isinstance(v, str) else round(100 * v["mean"], 2)) for k, v in row.items()}),
              flush=True)
        rows.append(row)
    out = {"file": str(args.file), "dataset": cfg.dataset, "budget_ipc": cfg.memory.budget_ipc,
           "split": d.val.split,
           "evaluator": {"arch": ec.arch, "width": ec.width, "epochs": ec.epochs, "runs": args.runs,
                         "lr": ec.lr, "batch_size": ec.batch_size, "recorded_augment": cfg.evaluation.augment,
                         "recorded_lr_schedule": cfg.evaluation.lr_schedule},
           "command": "python bench/eval_augment.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": {**machine_info(), "torch_threads": torch.get_num_threads()},
           "date": time.strftime("%Y-%m-%d", time.gmtime()), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, out)
    return 0


def _names(text: str | None, recorded: str) -> list[str]:
    """The comma-separated names of ``text``, else the file's ``recorded`` one."""
    names = [x.strip() for x in (text or "").split(",") if x.strip()]
    return names or [recorded]


if __name__ == "__main__":
    sys.exit(main())
