"""``memdistill evaluate``: retrain fresh networks on a memory and test them, beside
networks trained on a random real subset of the same storage."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._io import atomic_write_json
from ..errors import ConfigError
from ._options import Command, collective_option, data_options, device_option, progress_option
from ._run import join, load_memory_file, rank0_first, run_header, table


def add_arguments(v: argparse.ArgumentParser) -> None:
    v.add_argument("file")
    v.add_argument("--dataset", help="check the memory against this dataset (default: the file's)")
    v.add_argument("--arch", default="convnet", help="comma-separated: convnet,mlp,lenet,alexnet,vgg11,resnet18")
    v.add_argument("--width", type=int, help="width of convnet/mlp (default: the network's own)")
    v.add_argument("--runs", type=int, default=5)
    v.add_argument("--epochs", type=int, default=300)
    v.add_argument("--augment", default="none")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", help="JSON result (default FILE.eval.json)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..evaluate import TrainConfig, TrainingSet, evaluate, select_subset
    from ..labels import label_space_of, reference_ipc
    from ..models import supported_options

    mf = load_memory_file(args.file)
    dataset = args.dataset or mf.dataset
    if dataset != mf.dataset:
        raise ConfigError(f"{args.file} holds a memory of {mf.dataset!r}, not {dataset!r}; "
                          f"evaluate it against {mf.dataset!r}")
    dist, device = join(args, args.device)
    load = lambda: (load_dataset(dataset, "train", root=args.root, download=args.download),  # noqa: E731
                    load_dataset(dataset, "test", root=args.root, download=args.download))
    train, test = rank0_first(dist, load) if args.download else load()  # a download happens once
    space = label_space_of(mf)  # a non-one-hot memory is evaluated on its original classes
    if tuple(train.image_shape) != tuple(mf.image_shape) or train.num_classes != space.num_classes:
        raise ConfigError(f"{args.file} recalls {mf.image_shape} images of {space.num_classes} classes, but "
                          f"{dataset!r} has {train.image_shape} and {train.num_classes}")
    # recalled images live in the memory's space: whiten the real data the same way
    train, test = train.with_zca(mf.zca), test.with_zca(mf.zca)
    x, y = mf.recall() if space.is_onehot else space.class_examples(mf.memory)
    floats = mf.memory.floats_stored()
    c, h, w = train.image_shape
    ref_ipc = reference_ipc(mf)  # the run's recorded budget, not a floor of the memory's floats
    ref_idx = select_subset(train, ref_ipc, "random", seed=args.seed)
    rows, record = [], {**run_header("evaluate", device=str(device), processes=dist.world_size),
                        "file": str(args.file), "dataset": dataset, "floats_stored": floats,
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
    print(table(["arch", "memory examples", "memory acc %", "random real examples", "random real acc %"], rows))
    out = Path(args.out) if args.out else Path(str(Path(args.file).with_suffix("")) + ".eval.json")
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return 0


COMMAND = Command(
    "evaluate", "retrain fresh networks on a memory and test them", add_arguments, cmd_evaluate,
    parents=lambda: [data_options(), device_option("cpu"), collective_option(), progress_option()],
)
