"""The model-pool measurements of docs/RESULTS.md ("Model pool"): one distillation per
call, printing the validation accuracy of its starting point, of the memory and of
herding at equal storage (the same evaluator and validation split, ``--herding``).

    python bench/pool_sweep.py --dataset mnist --budget-ipc 1 --iterations 30 \\
        --set outer.lr=0.003 --set outer.pool_size=4 --set outer.pool_unroll=20 \\
        --set outer.pool_max_steps=200 --set inner.first_pad=1 --set evaluation.first_pad=1

(fresh rows: ``--set outer.pool_size=0 --set inner.steps=10`` and their lr). One torch
thread; the evaluation is the preset's (``cpu-quick``: width 32, 100 epochs, 1 run) on
the validation split carved from the training set. The rows of 2026-11-30 were run with
the same calls from scratch scripts, before this file was committed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves import herding_reference  # noqa: E402

from memdistill.config import parse_sets, resolve
from memdistill.data import load_dataset
from memdistill.distill import Distiller


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--budget-ipc", type=float, default=1.0)
    p.add_argument("--preset", default="cpu-quick")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--root", default=None)
    p.add_argument("--herding", action="store_true", help="also herding at equal storage")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train = load_dataset(args.dataset, "train", root=args.root)
    cfg = resolve(args.preset, args.dataset, args.budget_ipc, sets=parse_sets(args.set),
                  flags={"outer.iterations": args.iterations, "evaluation.every": 0, "seed": args.seed})
    started = time.perf_counter()
    d = Distiller(cfg, train)
    res = d.run()
    herding = herding_reference(d, args.budget_ipc)["mean"] if args.herding else None
    print(json.dumps({
        "dataset": args.dataset, "budget_ipc": args.budget_ipc, "seed": args.seed, "iterations": res.iterations,
        "sets": args.set, "start_val": res.start_eval["mean"],
        "memory_val": res.last_eval["mean"] if res.last_eval else None, "herding_val": herding,
        "distill_seconds": sum(r["seconds"] for r in res.history), "wall_seconds": time.perf_counter() - started,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
