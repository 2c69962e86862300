"""The ``memdistill`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from . import __version__
from ._io import atomic_write_json
from ._machine import machine_info
from .errors import ConfigError, MemdistillError

log = logging.getLogger("memdistill")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def _join(args: argparse.Namespace, device_name: str):
    """This process's rank and device: joins the process group when launched by
    torchrun (``RANK``/``WORLD_SIZE`` set), else a single process."""
    from .distributed import init_distributed

    dist, device = init_distributed(os.environ, device_name, timeout_s=args.collective_timeout)
    args._dist = dist
    if not dist.is_main:  # only rank 0 logs progress
        logging.getLogger("memdistill").setLevel(logging.WARNING)
    return dist, device


def _rank0_first(dist, load):
    """``load()`` on every rank, rank 0 first (so a download happens once), then the rest."""
    if dist.is_main:
        out = load()
        dist.barrier()
        return out
    dist.barrier()
    return load()


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: cpu, cuda, cuda:N, auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA device is available; use --device cpu")
    return dev


# ---------------------------------------------------------------- datasets
def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import dataset_info, list_datasets, locate_dataset

    rows = []
    for name in list_datasets():
        st = locate_dataset(name, root=args.root)
        info = dataset_info(name)
        shape = "x".join(str(s) for s in info.image_shape)
        if st.found:
            rows.append((name, f"{info.num_classes}", shape, "found", str(st.path)))
        else:
            where = ", ".join(str(p) for p in st.searched) or "-"
            rows.append((name, f"{info.num_classes}", shape, "missing", f"{st.problem} (searched: {where})"))
    print(_table(["dataset", "classes", "shape", "status", "where / why"], rows))
    return 0


# --------------------------------------------------------- evaluate-subset
def cmd_evaluate_subset(args: argparse.Namespace) -> int:
    from .data import load_dataset, train_val_split
    from .evaluate import TrainConfig, evaluate, select_subset
    from .models import MODELS

    MODELS.get(args.arch)  # an unknown network fails before any data is read
    if args.selection != "all" and args.ipc is None:
        raise ConfigError(f"--selection {args.selection} needs --ipc N (images per class)")
    dist, device = _join(args, args.device)
    train = _rank0_first(dist, lambda: load_dataset(args.dataset, "train", root=args.root, download=args.download))
    if args.eval_split == "val":
        train, test = train_val_split(train, val_fraction=args.val_fraction, seed=args.split_seed)
    else:
        test = _rank0_first(dist, lambda: load_dataset(args.dataset, "test", root=args.root,
                                                       download=args.download))
    idx = select_subset(train, args.ipc, args.selection, seed=args.seed)
    subset = train.subset(idx)
    arch_options = {}
    if args.width is not None:
        arch_options["width"] = args.width
    if args.depth is not None:
        arch_options["depth"] = args.depth
    config = TrainConfig(
        arch=args.arch, arch_options=arch_options, epochs=args.epochs, lr=args.lr,
        momentum=args.momentum, batch_size=args.batch_size, augment=args.augment,
    )
    result = evaluate(subset, test, config, runs=args.runs, seed=args.seed, device=device,
                      progress=not args.no_progress and dist.is_main, dist=dist)
    if not dist.is_main:  # runs were spread over the ranks; rank 0 reports
        return 0
    c, h, w = train.image_shape
    stored_floats = len(idx) * c * h * w
    rows = [(
        args.dataset, args.selection, args.ipc if args.selection != "all" else "-", len(idx),
        stored_floats, args.arch, args.runs, args.eval_split,
        f"{100 * result.mean:.2f} +- {100 * result.std:.2f}", f"{result.wall_seconds:.1f}",
    )]
    print(_table(["dataset", "selection", "ipc", "examples", "stored floats", "arch", "runs", "tested on",
                  "accuracy %", "wall s"], rows))
    out = Path(args.out) if args.out else Path("outputs") / (
        f"evaluate-subset_{args.dataset}_{args.selection}"
        + (f"_ipc{args.ipc}" if args.selection != "all" else "") + f"_{args.arch}.json")
    record = {
        "command": "evaluate-subset",
        "argv": sys.argv[1:],
        "version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine_info(), "device": str(device), "processes": dist.world_size},
        "dataset": args.dataset,
        "selection": args.selection,
        "ipc": args.ipc,
        "examples": len(idx),
        "stored_floats": stored_floats,
        "tested_on": args.eval_split,
        "classes": list(test.classes),
        "result": result.to_dict(),
    }
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------- distill
def _distill_config(args: argparse.Namespace):
    from .config import parse_sets, resolve

    flags = {
        "memory.kind": args.memory, "memory.num_bases": args.bases, "memory.downsample": args.downsample,
        "memory.learned_labels": args.learned_labels, "inner.steps": args.inner_steps,
        "outer.iterations": args.iterations, "seed": args.seed, "outer.unroll": args.unroll,
        "outer.window": args.window, "device": args.device,
    }
    return resolve(args.preset, args.dataset, args.budget_ipc, toml=args.config or None, flags=flags,
                   sets=parse_sets(args.set))


def cmd_distill(args: argparse.Namespace) -> int:
    from .config import config_to_dict
    from .data import load_dataset
    from .distill import Distiller
    from .memory.file import save_memory

    cfg = _distill_config(args)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors (a memory file), got {out}")
    if args.time_limit is not None and args.time_limit <= 0:
        raise ConfigError(f"--time-limit must be a positive number of seconds, got {args.time_limit}")
    base = out.with_suffix("")
    checkpoint, metrics = Path(f"{base}.ckpt"), Path(f"{base}.metrics.jsonl")
    dist, device = _join(args, cfg.device)
    if cfg.tf32 and device.type == "cuda":  # this process is ours: set the backend flags here
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    train = _rank0_first(dist, lambda: load_dataset(cfg.dataset, "train", root=args.root, download=args.download))
    if dist.is_main:
        atomic_write_json(Path(f"{base}.config.json"), config_to_dict(cfg))
    distiller = Distiller(cfg, train, device=device, dist=dist)
    t0 = time.perf_counter()
    result = distiller.run(checkpoint=checkpoint, metrics=metrics, resume=args.resume,
                           progress=not args.no_progress, time_limit=args.time_limit)
    seconds = time.perf_counter() - t0
    if not dist.is_main:  # rank 0 writes the memory and reports
        return 0
    metrics_final = {"iterations": result.iterations, "skipped_updates": result.skipped,
                     "rollbacks": result.rollbacks, "validation": result.last_eval,
                     "distill_seconds_this_session": seconds}
    space = distiller.label_space  # None: one-hot classes; else the coordinates are the label space's
    save_memory(out, result.memory, dataset=cfg.dataset,
                classes=list(train.classes) if space is None else list(space.coordinates), mean=train.mean,
                std=train.std, zca=distiller.train.zca, config=config_to_dict(cfg), metrics=metrics_final,
                train_size=len(train), extra=None if space is None else {"label_space": space.to_record()})
    rep = result.memory.report(len(train))
    rows = [(cfg.dataset, cfg.memory.kind, cfg.memory.budget_ipc, result.memory.slots, rep.examples,
             rep.floats_stored, result.iterations,
             "-" if result.last_eval is None else f"{100 * result.last_eval['mean']:.2f}", f"{seconds:.0f}")]
    print(_table(["dataset", "memory", "budget ipc", "slots/class", "examples", "floats", "iterations",
                  "val acc %", "seconds"], rows))
    print(f"wrote {out} (checkpoint {checkpoint}, metrics {metrics})")
    if result.iterations < cfg.outer.iterations:
        print(f"stopped at the time limit after {result.iterations} of {cfg.outer.iterations} iterations; "
              f"add --resume to continue")
    return 0


def _load_memory_file(path: str):
    from .memory.file import load_memory

    return load_memory(path)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .labels import label_space_of
    from .evaluate import TrainConfig, TrainingSet, evaluate, select_subset
    from .models import supported_options

    mf = _load_memory_file(args.file)
    dataset = args.dataset or mf.dataset
    if dataset != mf.dataset:
        raise ConfigError(f"{args.file} holds a memory of {mf.dataset!r}, not {dataset!r}; "
                          f"evaluate it against {mf.dataset!r}")
    dist, device = _join(args, args.device)
    train = load_dataset(dataset, "train", root=args.root)
    test = load_dataset(dataset, "test", root=args.root)
    space = label_space_of(mf)  # a non-one-hot memory is evaluated on its original classes
    if tuple(train.image_shape) != tuple(mf.image_shape) or train.num_classes != space.num_classes:
        raise ConfigError(f"{args.file} recalls {mf.image_shape} images of {space.num_classes} classes, but "
                          f"{dataset!r} has {train.image_shape} and {train.num_classes}")
    # recalled images live in the memory's space: whiten the real data the same way
    train, test = train.with_zca(mf.zca), test.with_zca(mf.zca)
    x, y = mf.recall() if space.is_onehot else space.class_examples(mf.memory)
    floats = mf.memory.floats_stored()
    c, h, w = train.image_shape
    ref_ipc = max(1, floats // (c * h * w * train.num_classes))
    ref_idx = select_subset(train, ref_ipc, "random", seed=args.seed)
    rows, record = [], {"file": str(args.file), "dataset": dataset, "floats_stored": floats,
                        "examples": int(x.shape[0]), "reference_ipc": ref_ipc, "results": {}}
    for arch in [a.strip() for a in args.arch.split(",") if a.strip()]:
        opts = supported_options(arch, width=args.width)
        tc = TrainConfig(arch=arch, arch_options=opts, epochs=args.epochs, augment=args.augment)
        show = not args.no_progress and dist.is_main
        mem_res = evaluate(TrainingSet(x, y, device=device), test, tc, runs=args.runs, seed=args.seed,
                           device=device, progress=show, dist=dist)
        ref_res = evaluate(train.subset(ref_idx), test, tc, runs=args.runs, seed=args.seed, device=device,
                           progress=show, dist=dist)
        record["results"][arch] = {"memory": mem_res.to_dict(), "random_real": ref_res.to_dict()}
        rows.append((arch, int(x.shape[0]), f"{100 * mem_res.mean:.2f} +- {100 * mem_res.std:.2f}",
                     ref_ipc * train.num_classes, f"{100 * ref_res.mean:.2f} +- {100 * ref_res.std:.2f}"))
    if not dist.is_main:  # runs were spread over the ranks; rank 0 reports
        return 0
    print(_table(["arch", "memory examples", "memory acc %", "random real examples", "random real acc %"], rows))
    out = Path(args.out) if args.out else Path(str(Path(args.file).with_suffix("")) + ".eval.json")
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    mf = _load_memory_file(args.file)
    rep = mf.report()
    width = max(len(k) for k in rep)
    for k, v in rep.items():
        print(f"{k.ljust(width)}  {v}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .queries import render_interpolation, render_queries
    from .viz import render_memory

    mf = _load_memory_file(args.file)
    out = Path(args.png) if args.png else Path(args.file).with_suffix(".png")
    if args.query and args.interpolate:
        raise ConfigError("give either --query or --interpolate A B, not both")
    if args.query:
        render_queries(mf, args.query, out, per_query=args.per_class)
    elif args.interpolate:
        render_interpolation(mf, args.interpolate[0], args.interpolate[1], args.steps, out, rows=args.rows)
    else:
        render_memory(mf, out, max_per_class=args.per_class)
    print(f"wrote {out}")
    return 0


def cmd_derive(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .derive import derive_training_set, parse_task, run_derived_task, save_derived
    from .evaluate import TrainConfig
    from .labels import label_space_of
    from .models import supported_options

    mf = _load_memory_file(args.file)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors (the derived training set), got {out}")
    device = _device(args.device)
    space = label_space_of(mf)
    test = load_dataset(mf.dataset, "test", root=args.root)
    task = parse_task(args.task, space.class_names, dataset=test)
    derived = derive_training_set(mf, task, group_queries=not args.no_group_queries)
    save_derived(out, derived, mf)
    opts = supported_options(args.arch, width=args.width)
    tc = TrainConfig(arch=args.arch, arch_options=opts, epochs=args.epochs)
    tc_real = TrainConfig(arch=args.arch, arch_options=opts, epochs=args.real_epochs, batch_size=args.real_batch_size)
    train = None if args.no_real else load_dataset(mf.dataset, "train", root=args.root)
    res = run_derived_task(mf, task, test, tc, train=train, all_real_config=tc_real, runs=args.runs,
                           seed=args.seed, device=device, derived=derived)
    fmt = lambda r: "-" if r is None else f"{100 * r['mean']:.2f}"  # noqa: E731
    ex = lambda r: "-" if r is None else r["examples"]  # noqa: E731
    print(f"task {task.spec}: {task.num_classes} classes ({', '.join(task.names)}); chance {100 * res.chance:.1f}%")
    print(_table(["training data", "examples", "epochs", "test accuracy %"], [
        ("memory-derived", ex(res.memory), args.epochs, fmt(res.memory)),
        ("random real, equal storage", ex(res.random_real), args.epochs, fmt(res.random_real)),
        ("all real", ex(res.all_real), args.real_epochs, fmt(res.all_real)),
    ]))
    record = {"command": "derive", "argv": sys.argv[1:], "version": __version__,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {**machine_info(), "device": str(device)}, "file": str(args.file),
              "dataset": mf.dataset, "derived_file": str(out), **res.as_dict()}
    report = Path(args.json) if args.json else out.with_suffix(".json")
    atomic_write_json(report, record)
    print(f"wrote {out} ({len(derived.labels)} examples) and {report}")
    return 0


def cmd_continual(args: argparse.Namespace) -> int:
    from ._machine import describe_machine
    from .config import parse_sets
    from .continual import (ALL_STRATEGIES, LearnerConfig, StrategyOptions, create_benchmark, format_table,
                            plot_results, run_continual, save_results)
    from .continual.strategies import STRATEGIES

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
    bench = create_benchmark(args.benchmark, **bench_opts)
    stem = f"continual_{bench.name.replace(':', '_').replace(',', '+')}_ipc{args.budget_ipc:g}"
    out = Path(args.out) if args.out else Path("outputs") / f"{stem}.json"
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    meta = {"command": "continual", "argv": sys.argv[1:], "version": __version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": describe_machine(), "benchmark": bench.name, "description": bench.description,
            "budget_ipc": args.budget_ipc, "preset": args.preset, "distill_overrides": overrides,
            "learner": vars(learner).copy(),
            "options": {k: v for k, v in vars(options).items() if k != "progress"}}
    results = []
    for n in names:
        results.append(run_continual(bench, n, options, learner, progress=not args.no_progress))
        save_results(out, results, **meta)  # after every strategy: a long comparison keeps what it has
    title = f"{bench.name}, budget {args.budget_ipc:g} images/class"
    plot_results(results, png, title=title)
    print(f"{title} (accuracy % on all classes seen after each task)")
    print(format_table(results))
    print(f"wrote {out} and {png}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memdistill",
        description="Distill image datasets into addressable memories, and evaluate them.",
    )
    p.add_argument("--version", action="version", version=f"memdistill {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("datasets", help="list datasets: found where, or missing and why")
    d.add_argument("--root", help="data folder (default: $MEMDISTILL_DATA, then ./data)")
    d.set_defaults(func=cmd_datasets)

    e = sub.add_parser(
        "evaluate-subset",
        help="train fresh networks on a real subset (random, herding or all) and test them",
    )
    e.add_argument("--dataset", required=True, help="dataset name (see `memdistill datasets`)")
    e.add_argument("--ipc", type=int, help="images per class to select")
    e.add_argument("--selection", default="random", help="random | herding | all (default random)")
    e.add_argument("--arch", default="convnet", help="network (convnet, mlp, lenet, alexnet, vgg11, resnet18)")
    e.add_argument("--width", type=int, help="network width (default: the network's own)")
    e.add_argument("--depth", type=int, help="network depth (default: the network's own)")
    e.add_argument("--runs", type=int, default=5, help="fresh networks to train (default 5)")
    e.add_argument("--epochs", type=int, default=300, help="training epochs (default 300)")
    e.add_argument("--lr", type=float, default=0.01)
    e.add_argument("--momentum", type=float, default=0.9)
    e.add_argument("--batch-size", type=int, default=640)
    e.add_argument("--augment", default="none", help="none | flip | rotate | flip_rotate | scale | crop | color | cutout | dsa")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--eval-split", choices=["test", "val"], default="test",
                   help="test on the real test split, or on a validation split carved from train "
                        "(use val to choose settings)")
    e.add_argument("--val-fraction", type=float, default=0.1)
    e.add_argument("--split-seed", type=int, default=0)
    e.add_argument("--root", help="data folder (default: $MEMDISTILL_DATA, then ./data)")
    e.add_argument("--download", action="store_true", help="fetch missing files from official mirrors")
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    e.add_argument("--collective-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before failing (default 1800)")
    e.add_argument("--out", help="JSON result file (default outputs/evaluate-subset_<...>.json)")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    e.set_defaults(func=cmd_evaluate_subset)

    s = sub.add_parser("distill", help="distill a dataset into a memory file")
    s.add_argument("--dataset", required=True)
    s.add_argument("--budget-ipc", type=float, required=True, help="storage budget in images per class")
    s.add_argument("--preset", default="cpu-quick", help="cpu-quick | cpu | paper (default cpu-quick)")
    s.add_argument("--memory", help="bases | images")
    s.add_argument("--bases", type=int, help="number of bases K")
    s.add_argument("--downsample", type=int, help="bases stored at H/ds x W/ds")
    s.add_argument("--learned-labels", action="store_const", const=True, help="learn soft labels too")
    s.add_argument("--inner-steps", type=int, help="inner training steps T")
    s.add_argument("--iterations", type=int, help="outer iterations")
    s.add_argument("--unroll", help="checkpointed | full")
    s.add_argument("--window", type=int, help="back-propagate through the last W inner steps")
    s.add_argument("--seed", type=int)
    s.add_argument("--device", help="cpu | cuda | cuda:N | auto")
    s.add_argument("--collective-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before failing (default 1800)")
    s.add_argument("--config", help="TOML file with any option of the run (see docs/CONFIG.md)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any option, e.g. inner.lr=0.02")
    s.add_argument("--resume", action="store_true", help="continue from the checkpoint next to --out")
    s.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop after the iteration that passes this wall time, writing the checkpoint and the "
                        "memory so far (--resume continues)")
    s.add_argument("--root", help="data folder (default: $MEMDISTILL_DATA, then ./data)")
    s.add_argument("--download", action="store_true")
    s.add_argument("--out", required=True, help="memory file to write (.safetensors)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_distill)

    v = sub.add_parser("evaluate", help="retrain fresh networks on a memory and test them")
    v.add_argument("file")
    v.add_argument("--dataset", help="check the memory against this dataset (default: the file's)")
    v.add_argument("--arch", default="convnet", help="comma-separated: convnet,mlp,lenet,alexnet,vgg11,resnet18")
    v.add_argument("--width", type=int, help="width of convnet/mlp (default: the network's own)")
    v.add_argument("--runs", type=int, default=5)
    v.add_argument("--epochs", type=int, default=300)
    v.add_argument("--augment", default="none")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--root")
    v.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    v.add_argument("--collective-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before failing (default 1800)")
    v.add_argument("--out", help="JSON result (default FILE.eval.json)")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("info", help="what a memory file holds")
    i.add_argument("file")
    i.set_defaults(func=cmd_info)

    w = sub.add_parser("show", help="render the bases and recalled examples as a PNG")
    w.add_argument("file")
    w.add_argument("--png", help="output PNG (default FILE.png)")
    w.add_argument("--per-class", type=int, default=10, help="examples per class / per query")
    w.add_argument("--query", action="append", metavar="Q",
                   help="render the recall of a query instead: a class (3, Trouser), a coordinate (even), "
                        "a mixture (3:0.5,8:0.5) or group:0,2,4; repeat for more rows")
    w.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="render the path between classes A and B")
    w.add_argument("--steps", type=int, default=9, help="points on the --interpolate path (default 9)")
    w.add_argument("--rows", type=int, default=4, help="slots shown along --interpolate (default 4)")
    w.set_defaults(func=cmd_show)

    dv = sub.add_parser("derive", help="train a classifier for a new labelling from the memory alone")
    dv.add_argument("file")
    dv.add_argument("--task", required=True,
                    help="odd-even | lt5 | tops-bottoms-footwear-bags | coarse | groups:0,2,4/1,3,5 | subset:0,1,2")
    dv.add_argument("--out", required=True, help="derived training set to write (.safetensors: images + labels)")
    dv.add_argument("--json", help="result record (default: --out with .json)")
    dv.add_argument("--no-group-queries", action="store_true",
                    help="use only the member classes' recalled examples, not the group queries")
    dv.add_argument("--arch", default="convnet")
    dv.add_argument("--width", type=int, default=32)
    dv.add_argument("--epochs", type=int, default=100, help="epochs on the memory-derived / random real sets")
    dv.add_argument("--real-epochs", type=int, default=1, help="epochs on all real data (default 1, for CPUs)")
    dv.add_argument("--real-batch-size", type=int, default=256)
    dv.add_argument("--no-real", action="store_true", help="skip the two real-data references")
    dv.add_argument("--runs", type=int, default=1)
    dv.add_argument("--seed", type=int, default=0)
    dv.add_argument("--root", help="data folder (default: $MEMDISTILL_DATA, then ./data)")
    dv.add_argument("--device", default="cpu")
    dv.set_defaults(func=cmd_derive)

    cl = sub.add_parser("continual", help="class-incremental learning with memories vs. baselines")
    cl.add_argument("--benchmark", required=True,
                    help="split-mnist | split-fashion-mnist | split-cifar10 | split-cifar100 | "
                         "split-tiny-imagenet | many | many:mnist,fashion-mnist (partial MANY)")
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
    cl.add_argument("--root", help="data folder (default: $MEMDISTILL_DATA, then ./data)")
    cl.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    cl.add_argument("--out", help="JSON results (default outputs/continual_<benchmark>_ipc<budget>.json)")
    cl.add_argument("--plot", help="PNG plot (default: --out with .png)")
    cl.add_argument("--no-progress", action="store_true")
    cl.set_defaults(func=cmd_continual)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except MemdistillError as exc:
        print(f"memdistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"memdistill {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        dist = getattr(args, "_dist", None)
        if dist is not None:
            dist.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
