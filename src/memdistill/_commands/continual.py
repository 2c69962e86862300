"""``memdistill continual``: class-incremental learning with memories vs. baselines."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ._options import Command, data_options, device_option, progress_option
from ._run import data_load_options, resolve_device as _device, run_header


def add_arguments(cl: argparse.ArgumentParser) -> None:
    cl.add_argument("--benchmark", required=True,
                    help="split-mnist | split-fashion-mnist | split-cifar10 | split-cifar100 | "
                         "split-tiny-imagenet | many | many:mnist,fashion-mnist (partial MANY) | split-folder:PATH | "
                         "split-npz:PATH (your own data's classes; --tasks, default 2 classes per task)")
    cl.add_argument("--strategy", default="memories",
                    help="memories | images | random | herding | finetune | joint, comma-separated, or all")
    cl.add_argument("--budget-ipc", type=float, default=1.0, help="stored floats per class, in images (default 1)")
    cl.add_argument("--preset", default="cpu-quick", help="distillation preset: cpu-quick | cpu | paper")
    cl.add_argument("--iterations", type=int, help="outer distillation iterations per task (overrides the preset)")
    cl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a distillation option")
    cl.add_argument("--bases", type=int, help="bases per task memory (default: automatic, at most 16)")
    cl.add_argument("--downsample", type=int, default=2, help="bases stored at H/ds x W/ds (default 2)")
    cl.add_argument("--init-from-previous", action="store_true",
                    help="start each task's bases from the previous task's")
    cl.add_argument("--training", choices=["scratch", "continue"], default="scratch",
                    help="after each task train a new classifier (scratch, GDumb-style) or continue the last")
    cl.add_argument("--arch", default="convnet")
    cl.add_argument("--width", type=int, default=32)
    cl.add_argument("--depth", type=int, help="classifier depth (default: the network's own; 4 for 64-pixel images)")
    cl.add_argument("--steps", type=int, default=300, help="classifier SGD steps after each task (default 300)")
    cl.add_argument("--batch-size", type=int, default=128)
    cl.add_argument("--lr", type=float, default=0.01)
    cl.add_argument("--test-per-class", type=int, help="test on this many test images per seen class (default all)")
    cl.add_argument("--tasks", type=int, help="number of tasks of a split benchmark (e.g. 5, 10, 20 for CIFAR-100)")
    cl.add_argument("--seed", type=int, default=0)
    cl.add_argument("--out", help="JSON results (default outputs/continual_<benchmark>_ipc<budget>.json)")
    cl.add_argument("--plot", help="PNG plot (default: --out with .png)")


def cmd_continual(args: argparse.Namespace) -> int:
    from .._machine import describe_machine
    from ..config import parse_sets
    from ..continual import (ALL_STRATEGIES, LearnerConfig, StrategyOptions, create_benchmark, format_table,
                            plot_results, run_comparison, save_results)
    from ..continual.strategies import STRATEGIES
    from ..data import is_user_dataset

    names = list(ALL_STRATEGIES) if args.strategy == "all" else [s.strip() for s in args.strategy.split(",") if s.strip()]
    for n in names:
        STRATEGIES.get(n)
    overrides = dict(parse_sets(args.set, example="outer.iterations=20"))
    if args.iterations is not None:
        overrides["outer.iterations"] = args.iterations
    device = str(_device(args.device))
    options = StrategyOptions(budget_ipc=args.budget_ipc, preset=args.preset, distill_overrides=overrides,
                              num_bases=args.bases or 0, downsample=args.downsample,
                              init_from_previous=args.init_from_previous, seed=args.seed, device=device,
                              progress=not args.no_progress)
    learner = LearnerConfig(training=args.training, arch=args.arch, width=args.width, depth=args.depth or 0,
                            steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, test_per_class=args.test_per_class,
                            seed=args.seed, device=device)
    bench_opts = {"root": args.root, "seed": args.seed}
    if args.tasks is not None:
        bench_opts["num_tasks"] = args.tasks
    user = args.benchmark.lower().startswith("split-") and is_user_dataset(args.benchmark[len("split-"):])
    if user:
        bench_opts["load_options"] = data_load_options(args, args.benchmark[len("split-"):])
    bench = create_benchmark(args.benchmark, **bench_opts)
    name = f"split-{Path(bench.train.source['path']).stem}" if user else bench.name  # no folders in a file name
    stem = re.sub(r"[^\w.+-]+", "_", f"continual_{name.replace(',', '+')}_ipc{args.budget_ipc:g}")
    out = Path(args.out) if args.out else Path("outputs") / f"{stem}.json"
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    meta = {**run_header("continual", machine=describe_machine()),
            "benchmark": bench.name, "description": bench.description,
            "budget_ipc": args.budget_ipc, "preset": args.preset, "distill_overrides": overrides,
            "learner": vars(learner).copy(),
            "options": {k: v for k, v in vars(options).items() if k != "progress"}}
    results: list = []

    def keep(name, result):  # after every strategy: a long comparison keeps what it has
        results.append(result)
        save_results(out, results, **meta)

    # every strategy's budget is checked before any work starts
    run_comparison(bench, names, options, learner, progress=not args.no_progress, callback=keep)
    title = f"{bench.name}, budget {args.budget_ipc:g} images/class"
    plot_results(results, png, title=title)
    print(f"{title} (accuracy % on all classes seen after each task)")
    print(format_table(results))
    print(f"wrote {out} and {png}")
    return 0


COMMAND = Command(
    "continual", "class-incremental learning with memories vs. baselines", add_arguments, cmd_continual,
    # the benchmarks read their datasets without downloading: --root only
    parents=lambda: [data_options(download=False), device_option("cpu"), progress_option()],
)
