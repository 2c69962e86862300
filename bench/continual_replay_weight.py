"""Choose the ``shared`` strategy's replay weight (``dense`` layout) on a validation split.

Runs ``shared`` on the validation version of a benchmark (10 % of each class's training
images held out and tested on; the test split is never read) for each replay weight and
class order, and prints the final average accuracy per weight (mean over orders).

    PYTHONPATH=src python bench/continual_replay_weight.py --benchmark split-mnist \\
        --weights classes,0.3,0.5,0.8 --seeds 0,1 --out outputs/replay_weight.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from memdistill._io import atomic_write_json
from memdistill.continual import LearnerConfig, StrategyOptions, create_benchmark, run_continual

# short settings (the CI test's, with 5 outer iterations): minutes for the whole sweep on one core
SHORT = {"outer.iterations": 5, "outer.pool_size": 0, "inner.steps": 3, "inner.width": 8, "inner.n_per_class": 5,
         "outer.real_per_class": 10}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="split-mnist")
    ap.add_argument("--root")
    ap.add_argument("--weights", default="classes,0.3,0.5,0.8")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--budget-ipc", type=float, default=1.0)
    ap.add_argument("--budget-mode", default="per-class")
    ap.add_argument("--out", default="outputs/continual_replay_weight.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    weights = [w if w == "classes" else float(w) for w in args.weights.split(",")]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        bench = create_benchmark(args.benchmark, root=args.root, seed=seed).validation(seed=seed)
        learner = LearnerConfig(steps=60, width=16, batch_size=64, test_per_class=100, seed=seed)
        for w in weights:
            opts = StrategyOptions(budget_ipc=args.budget_ipc, budget_mode=args.budget_mode, seed=seed,
                                   replay_weight=w, shared_layout="dense", distill_overrides=SHORT)
            t0 = time.perf_counter()
            r = run_continual(bench, "shared", opts, learner)
            rows.append({"seed": seed, "replay_weight": w, "final_average_accuracy": r.final_average_accuracy,
                         "forgetting": r.forgetting, "seen_accuracy": r.seen_accuracy,
                         "seconds": time.perf_counter() - t0})
            print(f"seed {seed} weight {w}: final {100 * r.final_average_accuracy:.1f} "
                  f"forgetting {100 * r.forgetting:.1f}", flush=True)
    print("\n| replay weight | final avg (val, mean over seeds) | forgetting |\n|---|---|---|")
    for w in weights:
        mine = [x for x in rows if x["replay_weight"] == w]
        print(f"| {w} | {100 * statistics.fmean(x['final_average_accuracy'] for x in mine):.1f} "
              f"| {100 * statistics.fmean(x['forgetting'] for x in mine):.1f} |")
    atomic_write_json(args.out, {"argv": argv, "benchmark": args.benchmark, "settings": SHORT, "runs": rows})


if __name__ == "__main__":
    main()
