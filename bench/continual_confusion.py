"""Which classes a continual run confuses after its last task: one ``memdistill continual``
run of one strategy, and the confusion matrix (true class by predicted class, over the
classes seen) of the classifier trained after the last task, on the split the run tests
(``ContinualResult.final_confusion``, which every ``memdistill continual`` JSON also holds).

    python bench/continual_confusion.py --benchmark split-fashion-mnist --budget-total-ipc 1 \\
        --seed 0 --validation --iterations 0 --out confusion.json

The run's settings are the stronger protocol's of docs/CONTINUAL.md (``cpu-quick``,
width-16 inner network, a width-32 classifier trained for 1000 SGD steps of batch 64,
200 test images per class, at most 60 s of distillation per task); ``--iterations 0``
scores each task's memory as initialised. Writes a JSON with the final average accuracy,
the per-task accuracies and the matrix, and prints the matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from memdistill._io import atomic_write_json
from memdistill.continual import LearnerConfig, StrategyOptions, create_benchmark, run_continual


def first_task_table(records: list[dict]) -> str:
    """A Markdown table of where the first task's test images go after the last task: per
    run and class, the images classed right (of the class's test images) and the class
    that took the most of the others."""
    lines = ["| run | first task's class | right | most taken by (its task) |", "|---|---|---|---|"]
    for r in records:
        m, names, tasks = r["confusion"], r["class_names"], r["tasks"]
        task_of = {c: j + 1 for j, t in enumerate(tasks) for c in t}
        budget = r.get("budget", "")
        for c in tasks[0]:
            row = m[c]
            other = max((k for k in range(len(row)) if k != c), key=lambda k: row[k])
            lines.append(f"| {budget}, order {r['seed']}, {r['final_average_accuracy'] * 100:.1f}% | {names[c]} | "
                         f"{row[c]} / {sum(row)} | {names[other]} {row[other]} (task {task_of[other]}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark", default="split-fashion-mnist")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--budget-ipc", type=float, default=1.0)
    budget.add_argument("--budget-total-ipc", type=float)
    ap.add_argument("--strategy", default="shared")
    ap.add_argument("--seed", type=int, default=0, help="class order (and every other seed of the run)")
    ap.add_argument("--validation", action="store_true", help="test on held-out training images")
    ap.add_argument("--iterations", type=int, default=40, help="outer distillation iterations per task")
    ap.add_argument("--bases", type=int, default=0, help="new bases per task (0: automatic)")
    ap.add_argument("--root", default=os.environ.get("MEMDISTILL_DATA"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", nargs="+", type=Path, metavar="RUN.json",
                    help="print the first task's table of these runs' JSON and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(first_task_table([json.loads(p.read_text()) for p in args.table]))
        return 0
    if args.out is None:
        ap.error("--out is required (or --table)")
    torch.set_num_threads(1)

    bench = create_benchmark(args.benchmark, root=args.root, seed=args.seed)
    if args.validation:
        bench = bench.validation(seed=args.seed)
    total = args.budget_total_ipc is not None
    options = StrategyOptions(budget_ipc=args.budget_total_ipc if total else args.budget_ipc,
                              budget_mode="total" if total else "per-class", preset="cpu-quick",
                              distill_overrides={"inner.width": 16, "outer.iterations": args.iterations},
                              num_bases=args.bases, seed=args.seed, distill_seconds=60)
    learner = LearnerConfig(width=32, steps=1000, batch_size=64, test_per_class=200, seed=args.seed)

    result = run_continual(bench, args.strategy, options, learner)
    m = torch.tensor(result.final_confusion)
    names = list(bench.class_names)
    budget = (f"total {args.budget_total_ipc:g}" if total else f"{args.budget_ipc:g} per class") + (
        f", {args.bases} bases per task" if args.bases else "") + (", start" if args.iterations == 0 else "")
    record = {"argv": [sys.argv[0], *(sys.argv[1:] if argv is None else argv)], "benchmark": bench.name,
              "strategy": args.strategy, "seed": args.seed, "budget": budget,
              "class_names": names, "tasks": [list(t) for t in bench.tasks],
              "final_average_accuracy": result.seen_accuracy[-1],
              "per_task_accuracy": result.per_task_accuracy[-1], "confusion": m.tolist()}
    atomic_write_json(args.out, record)
    short = [n[:8] for n in names]
    print(f"{bench.name} {args.strategy}: final average accuracy {100 * result.seen_accuracy[-1]:.1f}%, per task "
          + ", ".join(f"{100 * a:.1f}" for a in result.per_task_accuracy[-1]))
    print("rows: true class; columns: predicted")
    print(" " * 9 + " ".join(f"{n:>8}" for n in short))
    for i, row in enumerate(m.tolist()):
        print(f"{short[i]:>8} " + " ".join(f"{v:8d}" for v in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
