"""Does distillation lower its own objective while the memory gets worse? A test of short-horizon bias.

One distillation of ``--iterations`` outer steps from the starting point. Before and after
it, the same ``--unrolls`` inner unrolls (fresh networks, recalled slots and real
batches drawn by fixed iteration numbers that the run itself never uses, so the two
memories meet the same randomness) give the *outer loss*: the real-data loss of a
network after ``inner.steps`` steps on recalled examples, which is what each outer step
lowers. Beside it, the validation accuracy of the run's evaluator, which trains a network
to convergence. If the outer loss falls while the accuracy falls, the distillation is
optimising the wrong horizon (the memory teaches the first T steps faster and serves the
converged network worse); if the outer loss does not fall either, the outer steps are
noise (docs/RESULTS.md, "Budget 10: why the memory does not learn").

    python bench/horizon.py --dataset mnist --budget-ipc 10 --iterations 20

writes ``docs/bench/horizon_<dataset>_b<budget>.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOCS, machine, today  # noqa: E402
from memdistill._io import atomic_write_text  # noqa: E402
from memdistill.config import parse_sets, resolve  # noqa: E402
from memdistill.data import load_dataset  # noqa: E402
from memdistill.distill import Distiller  # noqa: E402

PROBE = 1_000_000  # iteration numbers of the probe unrolls: far past any run's own


def outer_losses(d: Distiller, memory, unrolls: int) -> list[float]:
    """The outer loss of ``memory`` for probe unrolls ``0 .. unrolls-1`` (fresh networks).
    The meta-step's gradient is computed and dropped: a few probes per run, not worth a
    second, forward-only unroll path."""
    return [float(d.meta_step(memory, PROBE + u).loss) for u in range(unrolls)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--budget-ipc", type=float, default=10.0)
    p.add_argument("--preset", default="cpu-quick")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--unrolls", type=int, default=6, help="probe unrolls for the outer loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE over the preset")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.unrolls < 2 or args.iterations < 1:
        raise SystemExit("--unrolls must be >= 2 and --iterations >= 1")
    torch.set_num_threads(args.threads)
    cfg = resolve(args.preset, args.dataset, args.budget_ipc, sets=parse_sets(args.set),
                  flags={"outer.iterations": args.iterations, "evaluation.every": 0, "evaluation.at_start": False,
                         "seed": args.seed}, flags_source="bench/horizon.py")
    d = Distiller(cfg, load_dataset(args.dataset, "train", root=args.root))
    start = d.new_memory()
    before = outer_losses(d, start, args.unrolls)
    acc_before = d.evaluate_memory(start)["mean"]
    t0 = time.perf_counter()
    res = d.run()
    seconds = time.perf_counter() - t0
    after = outer_losses(d, res.memory, args.unrolls)
    acc_after = d.evaluate_memory(res.memory)["mean"]
    diffs = [a - b for a, b in zip(after, before)]
    result = {
        "dataset": args.dataset, "budget_ipc": args.budget_ipc, "preset": args.preset, "seed": args.seed,
        "iterations": args.iterations, "inner_steps": cfg.inner.steps, "outer_lr": cfg.outer.lr,
        "pool_size": cfg.outer.pool_size, "extra_sets": args.set, "distill_seconds": seconds,
        "outer_loss_before": before, "outer_loss_after": after,
        "outer_loss_change_mean": statistics.fmean(diffs),
        "outer_loss_lower_in": sum(x < 0 for x in diffs),
        "val_accuracy_before": acc_before, "val_accuracy_after": acc_after,
        "machine": machine(), "date": today(), "torch_threads": torch.get_num_threads(),
        "command": "python bench/horizon.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(f"{args.dataset} budget {args.budget_ipc:g}: outer loss (T = {cfg.inner.steps}, {args.unrolls} paired "
          f"unrolls) {statistics.fmean(before):.4f} -> {statistics.fmean(after):.4f} "
          f"(lower in {result['outer_loss_lower_in']} of {args.unrolls}); validation accuracy "
          f"{100 * acc_before:.2f}% -> {100 * acc_after:.2f}% after {args.iterations} outer steps ({seconds:.0f} s)")
    out = args.out or DOCS / "bench" / f"horizon_{args.dataset}_b{args.budget_ipc:g}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
