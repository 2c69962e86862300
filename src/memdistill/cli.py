"""The ``memdistill`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import logging
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
    device = _device(args.device)
    train = load_dataset(args.dataset, "train", root=args.root, download=args.download)
    if args.eval_split == "val":
        train, test = train_val_split(train, val_fraction=args.val_fraction, seed=args.split_seed)
    else:
        test = load_dataset(args.dataset, "test", root=args.root, download=args.download)
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
                      progress=not args.no_progress)
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
        "machine": {**machine_info(), "device": str(device)},
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
    from .config import apply_overrides, load_toml, preset_config

    cfg = preset_config(args.preset, args.dataset, args.budget_ipc)
    if args.config:
        apply_overrides(cfg, load_toml(args.config), source=str(args.config))
    flags = {
        "memory.kind": args.memory, "memory.num_bases": args.bases, "memory.downsample": args.downsample,
        "memory.learned_labels": args.learned_labels, "inner.steps": args.inner_steps,
        "outer.iterations": args.iterations, "seed": args.seed, "outer.unroll": args.unroll,
        "outer.window": args.window, "device": args.device,
    }
    apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None}, source="command line")
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. inner.lr=0.02), got {item!r}")
        key, value = item.split("=", 1)
        apply_overrides(cfg, {key.strip(): value.strip()}, source="--set")
    cfg.dataset = args.dataset
    cfg.memory.budget_ipc = float(args.budget_ipc)
    return cfg.validate()


def cmd_distill(args: argparse.Namespace) -> int:
    from .config import config_to_dict
    from .data import load_dataset
    from .distill import Distiller
    from .memory.file import save_memory

    cfg = _distill_config(args)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors (a memory file), got {out}")
    base = out.with_suffix("")
    checkpoint, metrics = Path(f"{base}.ckpt"), Path(f"{base}.metrics.jsonl")
    device = _device(cfg.device)
    train = load_dataset(cfg.dataset, "train", root=args.root, download=args.download)
    atomic_write_json(Path(f"{base}.config.json"), config_to_dict(cfg))
    distiller = Distiller(cfg, train, device=device)
    t0 = time.perf_counter()
    result = distiller.run(checkpoint=checkpoint, metrics=metrics, resume=args.resume,
                           progress=not args.no_progress)
    seconds = time.perf_counter() - t0
    metrics_final = {"iterations": result.iterations, "skipped_updates": result.skipped,
                     "rollbacks": result.rollbacks, "validation": result.last_eval,
                     "distill_seconds_this_session": seconds}
    save_memory(out, result.memory, dataset=cfg.dataset, classes=list(train.classes), mean=train.mean,
                std=train.std, zca=distiller.train.zca, config=config_to_dict(cfg), metrics=metrics_final,
                train_size=len(train))
    rep = result.memory.report(len(train))
    rows = [(cfg.dataset, cfg.memory.kind, cfg.memory.budget_ipc, result.memory.slots, rep.examples,
             rep.floats_stored, result.iterations,
             "-" if result.last_eval is None else f"{100 * result.last_eval['mean']:.2f}", f"{seconds:.0f}")]
    print(_table(["dataset", "memory", "budget ipc", "slots/class", "examples", "floats", "iterations",
                  "val acc %", "seconds"], rows))
    print(f"wrote {out} (checkpoint {checkpoint}, metrics {metrics})")
    return 0


def _load_memory_file(path: str):
    from .memory.file import load_memory

    return load_memory(path)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .evaluate import TrainConfig, TrainingSet, evaluate, select_subset
    from .models import supported_options

    mf = _load_memory_file(args.file)
    dataset = args.dataset or mf.dataset
    if dataset != mf.dataset:
        raise ConfigError(f"{args.file} holds a memory of {mf.dataset!r}, not {dataset!r}; "
                          f"evaluate it against {mf.dataset!r}")
    device = _device(args.device)
    train = load_dataset(dataset, "train", root=args.root)
    test = load_dataset(dataset, "test", root=args.root)
    if tuple(train.image_shape) != tuple(mf.image_shape) or train.num_classes != mf.num_classes:
        raise ConfigError(f"{args.file} recalls {mf.image_shape} images of {mf.num_classes} classes, but "
                          f"{dataset!r} has {train.image_shape} and {train.num_classes}")
    # recalled images live in the memory's space: whiten the real data the same way
    train, test = train.with_zca(mf.zca), test.with_zca(mf.zca)
    x, y = mf.recall()
    floats = mf.memory.floats_stored()
    c, h, w = train.image_shape
    ref_ipc = max(1, floats // (c * h * w * train.num_classes))
    ref_idx = select_subset(train, ref_ipc, "random", seed=args.seed)
    rows, record = [], {"file": str(args.file), "dataset": dataset, "floats_stored": floats,
                        "examples": int(x.shape[0]), "reference_ipc": ref_ipc, "results": {}}
    for arch in [a.strip() for a in args.arch.split(",") if a.strip()]:
        opts = supported_options(arch, width=args.width)
        tc = TrainConfig(arch=arch, arch_options=opts, epochs=args.epochs, augment=args.augment)
        mem_res = evaluate(TrainingSet(x, y, device=device), test, tc, runs=args.runs, seed=args.seed,
                           device=device, progress=not args.no_progress)
        ref_res = evaluate(train.subset(ref_idx), test, tc, runs=args.runs, seed=args.seed, device=device,
                           progress=not args.no_progress)
        record["results"][arch] = {"memory": mem_res.to_dict(), "random_real": ref_res.to_dict()}
        rows.append((arch, int(x.shape[0]), f"{100 * mem_res.mean:.2f} +- {100 * mem_res.std:.2f}",
                     ref_ipc * train.num_classes, f"{100 * ref_res.mean:.2f} +- {100 * ref_res.std:.2f}"))
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
    from .viz import render_memory

    mf = _load_memory_file(args.file)
    out = Path(args.png) if args.png else Path(args.file).with_suffix(".png")
    render_memory(mf, out, max_per_class=args.per_class)
    print(f"wrote {out}")
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
    s.add_argument("--config", help="TOML file with any option of the run (see docs/CONFIG.md)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any option, e.g. inner.lr=0.02")
    s.add_argument("--resume", action="store_true", help="continue from the checkpoint next to --out")
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
    v.add_argument("--device", default="cpu")
    v.add_argument("--out", help="JSON result (default FILE.eval.json)")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("info", help="what a memory file holds")
    i.add_argument("file")
    i.set_defaults(func=cmd_info)

    w = sub.add_parser("show", help="render the bases and recalled examples as a PNG")
    w.add_argument("file")
    w.add_argument("--png", help="output PNG (default FILE.png)")
    w.add_argument("--per-class", type=int, default=10)
    w.set_defaults(func=cmd_show)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
