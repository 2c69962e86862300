"""``memdistill continual``: class-incremental learning with memories vs. baselines."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..errors import ConfigError
from ._options import Command, data_options, device_option, progress_option
from ._run import data_load_options, resolve_device as _device, run_header


def add_arguments(cl: argparse.ArgumentParser) -> None:
    cl.add_argument("--benchmark", required=True,
                    help="split-mnist | split-fashion-mnist | split-cifar10 | split-cifar100 | "
                         "split-tiny-imagenet | many | many:mnist,fashion-mnist (partial MANY) | split-folder:PATH | "
                         "split-npz:PATH (your own data's classes; --tasks, default 2 classes per task)")
    cl.add_argument("--strategy", default="memories",
                    help="shared | memories | images | random | herding | finetune | joint, comma-separated, or all "
                         "(with a fixed total budget: all that can honour it)")
    budget = cl.add_mutually_exclusive_group()
    budget.add_argument("--budget-ipc", type=float, default=1.0,
                        help="per-class budget: stored floats per class seen, in images (default 1); storage grows "
                             "with the classes")
    budget.add_argument("--budget-total-ipc", type=float, metavar="X",
                        help="fixed total budget for the whole stream, chosen before the first task: X * C*H*W * "
                             "(the benchmark's final number of classes) floats; herding/random evict, shared "
                             "re-divides its slots (memories/images cannot honour it)")
    budget.add_argument("--budget-total", type=int, metavar="FLOATS",
                        help="fixed total budget in floats (as --budget-total-ipc, given directly)")
    cl.add_argument("--replay-weight", default="classes",
                    help="shared: weight in [0, 1] of the earlier classes' recalled examples against the current "
                         "task's real data in the outer loss, or 'classes' (default: proportional to the classes "
                         "on each side, every class alike)")
    cl.add_argument("--shared-layout", choices=["ragged", "dense"], default="ragged",
                    help="shared: ragged (default: each class addresses the bases that existed when it arrived; "
                         "earlier classes keep their recalls) or dense (every class addresses every basis, the "
                         "whole memory re-distilled with replay)")
    cl.add_argument("--fill-later", action="store_true",
                    help="shared (ragged): the classifier also trains on each earlier class's recalls with a "
                         "random later slot's coefficients on the bases added since (nothing more is stored); "
                         "mixed on Split Fashion-MNIST, much worse on Split MNIST (docs/CONTINUAL.md)")
    cl.add_argument("--subspace-views", action="store_true",
                    help="shared (ragged): the classifier also trains on each class's recalls projected onto the "
                         "fewer bases earlier classes address (nothing more is stored); on the validation split "
                         "it helped Split Fashion-MNIST and hurt Split MNIST and MANY at budget 1 "
                         "(docs/CONTINUAL.md)")
    cl.add_argument("--task-context", action="store_true",
                    help="shared (ragged): distil each task's block with the earlier classes' recalls in the inner "
                         "training set and the outer loss (the new classes learnt against the earlier ones; "
                         "nothing more is stored); better on the validation split of the Split benchmarks at "
                         "budget 1, worse on the test split of Split Fashion-MNIST and on MANY (docs/CONTINUAL.md)")
    cl.add_argument("--context-batch", choices=("seen", "task"), default="seen",
                    help="with --task-context, the inner batch: seen (the preset's recalls per class for every "
                         "class seen, growing with them) or task (its size without context, spread over them)")
    cl.add_argument("--distill-seconds", type=float,
                    help="wall-time limit of each task's distillation (memories, images, shared)")
    cl.add_argument("--save-memory", metavar="FILE.safetensors",
                    help="write the final memory of the shared strategy as a memory file (split benchmarks of one "
                         "dataset; rows in the dataset's class order; ragged: each class with its own slot and "
                         "basis counts, as the run held it): memdistill evaluate/show/derive read it")
    cl.add_argument("--preset", default="cpu-quick", help="distillation preset: cpu-quick | cpu | paper")
    cl.add_argument("--iterations", type=int, help="outer distillation iterations per task (overrides the preset)")
    cl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a distillation option")
    cl.add_argument("--bases", type=int, help="bases per task memory (memories), new bases per task (shared "
                                              "ragged), all bases (shared dense); default: automatic, at most 16")
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
    cl.add_argument("--balanced", action="store_true",
                    help="draw the classifier's batches class-balanced (each class equally often, whatever how "
                         "many examples it holds; a shared memory holds more for its earlier classes)")
    cl.add_argument("--lr", type=float, default=0.01)
    cl.add_argument("--test-per-class", type=int, help="test on this many test images per seen class (default all)")
    cl.add_argument("--tasks", type=int, help="number of tasks of a split benchmark (e.g. 5, 10, 20 for CIFAR-100)")
    cl.add_argument("--seed", type=int, default=0)
    cl.add_argument("--validation", action="store_true",
                    help="test on a validation split (10%% of each class's training images, never trained on) "
                         "instead of the test split: for choosing settings such as --replay-weight")
    cl.add_argument("--out", help="JSON results (default outputs/continual_<benchmark>_ipc<budget>.json)")
    cl.add_argument("--plot", help="PNG plot (default: --out with .png)")


def cmd_continual(args: argparse.Namespace) -> int:
    from .._machine import describe_machine
    from ..config import parse_sets
    from ..continual import (ALL_STRATEGIES, LearnerConfig, StrategyOptions, create_benchmark, format_table,
                            plot_results, run_comparison, save_results)
    from ..continual.strategies import STRATEGIES
    from ..data import is_user_dataset

    mode = "per-class" if args.budget_total_ipc is None and args.budget_total is None else "total"
    ipc = args.budget_total_ipc if args.budget_total_ipc is not None else args.budget_ipc
    if args.strategy == "all":
        names = [n for n in ALL_STRATEGIES if mode in STRATEGIES.get(n).budget_modes or not STRATEGIES.get(n).bounded]
    else:
        names = [s.strip() for s in args.strategy.split(",") if s.strip()]
    for n in names:
        STRATEGIES.get(n)
    save = Path(args.save_memory) if args.save_memory else None
    if save is not None and ("shared" not in names or save.suffix != ".safetensors"):
        raise ConfigError(f"--save-memory writes the final memory of the shared strategy to a .safetensors file; "
                          f"got {save} with strategies {','.join(names)}")
    weight = args.replay_weight if args.replay_weight == "classes" else _number(args.replay_weight, "--replay-weight")
    overrides = dict(parse_sets(args.set, example="outer.iterations=20"))
    if args.iterations is not None:
        overrides["outer.iterations"] = args.iterations
    device = str(_device(args.device))
    options = StrategyOptions(budget_ipc=ipc, budget_mode=mode, budget_total=args.budget_total,
                              replay_weight=weight, shared_layout=args.shared_layout,
                              subspace_views=args.subspace_views, fill_later=args.fill_later,
                              task_context=args.task_context, context_batch=args.context_batch,
                              distill_seconds=args.distill_seconds,
                              preset=args.preset, distill_overrides=overrides,
                              num_bases=args.bases or 0, downsample=args.downsample,
                              init_from_previous=args.init_from_previous, seed=args.seed, device=device,
                              progress=not args.no_progress)
    learner = LearnerConfig(training=args.training, arch=args.arch, width=args.width, depth=args.depth or 0,
                            steps=args.steps, batch_size=args.batch_size, lr=args.lr, balanced=args.balanced,
                            test_per_class=args.test_per_class, seed=args.seed, device=device)
    bench_opts = {"root": args.root, "seed": args.seed}
    if args.tasks is not None:
        bench_opts["num_tasks"] = args.tasks
    user = args.benchmark.lower().startswith("split-") and is_user_dataset(args.benchmark[len("split-"):])
    if user:
        bench_opts["load_options"] = data_load_options(args, args.benchmark[len("split-"):])
    bench = create_benchmark(args.benchmark, **bench_opts)
    if args.validation:
        bench = bench.validation(seed=args.seed)
    name = f"split-{Path(bench.train.source['path']).stem}" if user else bench.name  # no folders in a file name
    unit = (f"total{args.budget_total}" if args.budget_total is not None
            else f"totalipc{ipc:g}" if mode == "total" else f"ipc{ipc:g}")
    stem = re.sub(r"[^\w.+-]+", "_", f"continual_{name.replace(',', '+')}_{unit}")
    out = Path(args.out) if args.out else Path("outputs") / f"{stem}.json"
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    meta = {**run_header("continual", machine=describe_machine()),
            "benchmark": bench.name, "description": bench.description,
            "budget_ipc": ipc, "budget_mode": mode, "budget_total": args.budget_total, "preset": args.preset, "distill_overrides": overrides,
            "learner": vars(learner).copy(),
            "options": {k: v for k, v in vars(options).items() if k != "progress"}}
    results: list = []

    def keep(name, result):  # after every strategy: a long comparison keeps what it has
        results.append(result)
        save_results(out, results, **meta)

    # every strategy's budget is checked before any work starts
    if save is not None:
        from ..continual.shared import check_memory_export  # refused before the run, not after it

        check_memory_export(bench)
    run_comparison(bench, names, options, learner, progress=not args.no_progress, callback=keep)
    if save is not None:
        _save_shared(save, next(r for r in results if r.strategy == "shared"), bench,
                     {"budget_mode": mode, "budget_ipc": ipc, "budget_total": args.budget_total,
                      "shared_layout": options.shared_layout})
    title = (f"{bench.name}, budget {ipc:g} images/class" if mode == "per-class" else
             f"{bench.name}, fixed total of {options.total_floats(bench.image_shape, bench.num_classes):,} floats")
    plot_results(results, png, title=title)
    print(f"{title} (accuracy % on all classes seen after each task)")
    print(format_table(results))
    print(f"wrote {out} and {png}" + (f" and {save}" if save is not None else ""))
    return 0


def _save_shared(save: Path, shared, bench, extra: dict) -> None:
    """Write the ``shared`` result's memory to ``save`` (a ragged run's memory with its
    per-class slot counts, as the run held it)."""
    from ..continual import save_shared_memory

    if extra["shared_layout"] == "ragged":
        extra["run_slots_per_task"] = shared.task_info[-1]["slots_per_class"]
    save_shared_memory(save, shared.memory, bench, extra=extra)


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be 'classes' or a number in [0, 1], got {text!r}") from None


COMMAND = Command(
    "continual", "class-incremental learning with memories vs. baselines", add_arguments, cmd_continual,
    # the benchmarks read their datasets without downloading: --root only
    parents=lambda: [data_options(download=False), device_option("cpu"), progress_option()],
)
