"""``memdistill evaluate``: retrain fresh networks on a memory and test them, beside
networks trained on a random real subset of the same storage."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._io import atomic_write_json
from ..errors import ConfigError, MemdistillError
from ._options import Command, collective_option, data_options, device_option, progress_option
from ._run import (check_memory_dataset, dataset_record, join, load_data, load_memory_file, rank0_first, run_header,
                   table)


def add_arguments(v: argparse.ArgumentParser) -> None:
    v.add_argument("file")
    v.add_argument("--dataset", help="check the memory against this dataset (default: the file's)")
    v.add_argument("--arch", default="convnet", help="comma-separated: convnet,mlp,lenet,alexnet,vgg11,resnet18")
    v.add_argument("--width", type=int, help="width of convnet/mlp (default: the network's own)")
    v.add_argument("--runs", type=int, default=5)
    v.add_argument("--epochs", type=int, default=300,
                   help="epochs per network (with --schedule converge: the most it may train)")
    v.add_argument("--schedule", choices=("fixed", "converge"), default="fixed",
                   help="fixed: train --epochs epochs (the reference protocol); converge: stop once the training "
                        "loss on the examples plateaus (mean of the last 10 epochs < 1%% below the 10 before, or "
                        "under 0.1 nats above the labels' entropy), at most --epochs epochs")
    v.add_argument("--lr-schedule", choices=("constant", "step", "cosine"),
                   help="learning rate over the epochs: constant; step (divided by 10 from half the epochs on, "
                        "as DC/DSA/MTT evaluate); cosine (decayed to 0). Default: the evaluation schedule the file "
                        "records, else constant")
    v.add_argument("--lr", type=float, help="SGD learning rate of every network (default: the evaluation lr the "
                                           "file records, else 0.01)")
    v.add_argument("--batch-size", type=int, help="examples per SGD step (default: the evaluation batch size the "
                                                  "file records, else 640: one full batch for a few hundred "
                                                  "recalled examples)")
    v.add_argument("--first-pad", type=int,
                   help="padding of convnet's first convolution (default: 3 for 1-channel images as in DC/DSA/MTT, "
                        "else 1; 1 gives the compact geometry of earlier versions)")
    v.add_argument("--augment", help="augmentation while training on the memory (default: the evaluation "
                                     "augmentation the file records, so test follows validation; else none)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--no-starting-point", action="store_true",
                   help="skip the memory's own starting point (rebuilt from the seed and configuration the file "
                        "records) as a reference")
    v.add_argument("--references", default="start,random,herding",
                   help="comma-separated references retrained beside the memory: start (its own starting "
                        "point), random and herding (real subsets at the run's budget); 'none' for the memory "
                        "alone (default: all three). Each costs as much as the memory's own runs")
    v.add_argument("--out", help="JSON result (default FILE.eval.json)")


def _starting_point(mf, train, device, skip: str | None):
    """``((x, y), None)``: what the memory's own starting point recalls, rebuilt from the
    seed and configuration the file records; ``(None, why)`` when it cannot be."""
    from ..config import from_record
    from ..distill import starting_point

    if skip:  # the option that said so
        return None, f"skipped ({skip})"
    if not mf.meta.get("config"):
        return None, "the file records no configuration to rebuild it from"
    try:
        return starting_point(from_record(mf.meta["config"]), train, device=device), None
    except MemdistillError as exc:  # e.g. a file from a version with other options
        return None, f"cannot be rebuilt: {exc}"


def _acc(res) -> str:
    return "-" if res is None else res.summary(pm="+-")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..data import check_dataset_source
    from ..evaluate import TrainConfig, TrainingSet, evaluate, select_subset
    from ..labels import label_space_of, reference_ipc
    from ..models import supported_options

    wanted = _references(args.references)
    mf = load_memory_file(args.file)
    dataset = check_memory_dataset(mf, args.dataset, args.file)
    dist, device = join(args, args.device)
    load = lambda: (load_data(args, dataset, "train"), load_data(args, dataset, "test"))  # noqa: E731
    train, test = rank0_first(dist, load) if args.download else load()  # a download happens once
    check_dataset_source(dataset_record(mf), train, what=str(args.file))
    space = label_space_of(mf)  # a non-one-hot memory is evaluated on its original classes
    if tuple(train.image_shape) != tuple(mf.image_shape) or train.num_classes != space.num_classes:
        raise ConfigError(f"{args.file} recalls {mf.image_shape} images of {space.num_classes} classes, but "
                          f"{dataset!r} has {train.image_shape} and {train.num_classes}")
    skip = "--no-starting-point" if args.no_starting_point else None if "start" in wanted else "--references"
    start, why_not = _starting_point(mf, train, device, skip)
    # recalled images live in the memory's space: whiten the real data the same way
    train, test = train.with_zca(mf.zca), test.with_zca(mf.zca)
    x, y = space.class_examples(mf.memory)
    ref_ipc = reference_ipc(mf)  # the run's recorded budget, not a floor of the memory's floats
    refs = {m: train.subset(select_subset(train, ref_ipc, m, seed=args.seed)) for m in ("random", "herding")
            if m in wanted}
    rows, record = [], {**run_header("evaluate", device=str(device), processes=dist.world_size),
                        "file": str(args.file), "dataset": dataset, "floats_stored": mf.memory.floats_stored(),
                        "examples": int(x.shape[0]), "reference_ipc": ref_ipc, "starting_point": why_not or "rebuilt",
                        "results": {}}
    show = not args.no_progress and dist.is_main
    recorded = (mf.meta.get("config") or {}).get("evaluation") or {}
    augment = args.augment or recorded.get("augment", "none")
    lr_schedule = args.lr_schedule or recorded.get("lr_schedule", "constant")
    lr = args.lr if args.lr is not None else recorded.get("lr", TrainConfig.lr)
    batch_size = args.batch_size if args.batch_size is not None else recorded.get("batch_size", TrainConfig.batch_size)
    record["augment"], record["schedule"], record["lr_schedule"] = augment, args.schedule, lr_schedule
    record["lr"], record["batch_size"] = lr, batch_size
    for arch in [a.strip() for a in args.arch.split(",") if a.strip()]:
        tc = TrainConfig(arch=arch, arch_options=supported_options(arch, width=args.width, first_pad=args.first_pad),
                         epochs=args.epochs, augment=augment, schedule=args.schedule, lr_schedule=lr_schedule,
                         lr=lr, batch_size=batch_size)
        run = lambda data: evaluate(data, test, tc, runs=args.runs, seed=args.seed, device=device,  # noqa: E731
                                    progress=show, dist=dist)
        mem_res = run(TrainingSet(x, y, device=device))
        ref_res, herd_res = (run(refs[m]) if m in refs else None for m in ("random", "herding"))
        start_res = None if start is None else run(TrainingSet(*start, device=device))
        found = {"random_real": ref_res, "herding_real": herd_res, "starting_point": start_res}
        record["results"][arch] = {"memory": mem_res.to_dict(),
                                   **{k: r.to_dict() for k, r in found.items() if r is not None}}
        rows.append((arch, int(x.shape[0]), _acc(mem_res), _epochs(mem_res), _acc(start_res),
                     ref_ipc * train.num_classes, _acc(ref_res), _acc(herd_res)))
    if not dist.is_main:  # runs were spread over the ranks; rank 0 reports
        return 0
    print(table(["arch", "memory examples", "memory acc %", "memory epochs", "starting point acc %",
                 "real examples", "random real acc %", "herding real acc %"], rows))
    print(_spread_note(args.runs))
    _say_against_start(record["results"], why_not)
    out = Path(args.out) if args.out else Path(str(Path(args.file).with_suffix("")) + ".eval.json")
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return 0


def _references(text: str) -> set[str]:
    """The references ``--references`` names (``none``: no reference)."""
    names = {t.strip() for t in text.split(",") if t.strip()}
    valid = {"start", "random", "herding"}
    if names == {"none"}:
        return set()
    if not names or names - valid:
        raise ConfigError(f"--references {text!r}: name one or more of start, random, herding (comma-separated), "
                          "or 'none' for the memory alone")
    return names


def _epochs(res) -> str:
    """Epochs the memory's networks trained: one number, or the range over the runs."""
    low, high = min(res.epochs_run), max(res.epochs_run)
    return str(low) if low == high else f"{low}-{high}"


def _spread_note(runs: int) -> str:
    if runs < 2:
        return "accuracy: one run, so no spread"
    return f"accuracy: mean +- sample standard deviation (ddof 1) over {runs} runs"


def _say_against_start(results: dict, why_not: str | None) -> None:
    """Whether distillation helped, in words: the memory against its starting point."""
    if why_not is not None:
        print(f"starting point: {why_not}")
        return
    for arch, res in results.items():
        gain = 100 * (res["memory"]["mean"] - res["starting_point"]["mean"])
        if gain < 0:
            print(f"{arch}: the distilled memory is BELOW its own starting point by {-gain:.2f} points: "
                  "distillation made it worse for this network")
        else:
            print(f"{arch}: distillation added {gain:.2f} points to the memory's starting point")


COMMAND = Command(
    "evaluate", "retrain fresh networks on a memory and test them", add_arguments, cmd_evaluate,
    parents=lambda: [data_options(), device_option("cpu"), collective_option(), progress_option()],
)
