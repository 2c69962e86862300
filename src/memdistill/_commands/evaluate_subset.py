"""``memdistill evaluate-subset``: train fresh networks on a real subset and test them."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._io import atomic_write_json
from ..errors import ConfigError
from ._options import Command, collective_option, data_options, device_option, progress_option
from ._run import join, load_data, rank0_first, run_header, table


def add_arguments(e: argparse.ArgumentParser) -> None:
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
    e.add_argument("--augment", default="none",
                   help="none | flip | rotate | flip_rotate | scale | crop | color | cutout | dsa")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--eval-split", choices=["test", "val"], default="test",
                   help="test on the real test split, or on a validation split carved from train "
                        "(use val to choose settings)")
    e.add_argument("--val-fraction", type=float, default=0.1)
    e.add_argument("--split-seed", type=int, default=0)
    e.add_argument("--out", help="JSON result file (default outputs/evaluate-subset_<...>.json)")


def cmd_evaluate_subset(args: argparse.Namespace) -> int:
    from ..data import train_val_split
    from ..evaluate import TrainConfig, evaluate, select_subset
    from ..models import MODELS

    MODELS.get(args.arch)  # an unknown network fails before any data is read
    if args.selection != "all" and args.ipc is None:
        raise ConfigError(f"--selection {args.selection} needs --ipc N (images per class)")
    dist, device = join(args, args.device)
    train = rank0_first(dist, lambda: load_data(args, args.dataset, "train"))
    if args.eval_split == "val":
        train, test = train_val_split(train, val_fraction=args.val_fraction, seed=args.split_seed)
    else:
        test = rank0_first(dist, lambda: load_data(args, args.dataset, "test"))
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
        result.summary(pm="+-"), f"{result.wall_seconds:.1f}",
    )]
    print(table(["dataset", "selection", "ipc", "examples", "stored floats", "arch", "runs", "tested on",
                 "accuracy % (mean +- sample std)", "wall s"], rows))
    stem = Path(train.source["path"]).stem if train.source else args.dataset  # folder:/npz: data by its folder name
    out = Path(args.out) if args.out else Path("outputs") / (
        f"evaluate-subset_{stem}_{args.selection}"
        + (f"_ipc{args.ipc}" if args.selection != "all" else "") + f"_{args.arch}.json")
    record = {
        **run_header("evaluate-subset", device=str(device), processes=dist.world_size),
        "dataset": train.name if train.source else args.dataset,
        **({"dataset_source": train.source} if train.source else {}),
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


COMMAND = Command(
    "evaluate-subset", "train fresh networks on a real subset (random, herding or all) and test them",
    add_arguments, cmd_evaluate_subset,
    parents=lambda: [data_options(), device_option("cpu"), collective_option(), progress_option()],
)
