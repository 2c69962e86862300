"""``memdistill derive``: train a classifier for a new labelling from the memory alone."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._io import atomic_write_json
from ..errors import ConfigError
from ._options import Command, data_options, device_option, progress_option
from ._run import dataset_record, load_data, load_memory_file, resolve_device, run_header, table


def add_arguments(dv: argparse.ArgumentParser) -> None:
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


def cmd_derive(args: argparse.Namespace) -> int:
    # ``--no-progress`` is accepted for uniformity: run_derived_task trains without a progress display
    from ..data import check_dataset_source
    from ..derive import derive_training_set, parse_task, run_derived_task, save_derived
    from ..evaluate import TrainConfig
    from ..labels import label_space_of
    from ..models import supported_options

    mf = load_memory_file(args.file)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors (the derived training set), got {out}")
    device = resolve_device(args.device)
    space = label_space_of(mf)
    test = load_data(args, mf.dataset, "test")
    check_dataset_source(dataset_record(mf), test, what=str(args.file))
    task = parse_task(args.task, space.class_names, dataset=test)
    derived = derive_training_set(mf, task, group_queries=not args.no_group_queries)
    save_derived(out, derived, mf)
    opts = supported_options(args.arch, width=args.width)
    tc = TrainConfig(arch=args.arch, arch_options=opts, epochs=args.epochs)
    tc_real = TrainConfig(arch=args.arch, arch_options=opts, epochs=args.real_epochs, batch_size=args.real_batch_size)
    train = None if args.no_real else load_data(args, mf.dataset, "train")
    res = run_derived_task(mf, task, test, tc, train=train, all_real_config=tc_real, runs=args.runs,
                           seed=args.seed, device=device, derived=derived)
    fmt = lambda r: "-" if r is None else f"{100 * r['mean']:.2f}"  # noqa: E731
    ex = lambda r: "-" if r is None else r["examples"]  # noqa: E731
    print(f"task {task.spec}: {task.num_classes} classes ({', '.join(task.names)}); chance {100 * res.chance:.1f}%")
    print(table(["training data", "examples", "epochs", "test accuracy %"], [
        ("memory-derived", ex(res.memory), args.epochs, fmt(res.memory)),
        ("random real, equal storage", ex(res.random_real), args.epochs, fmt(res.random_real)),
        ("all real", ex(res.all_real), args.real_epochs, fmt(res.all_real)),
    ]))
    record = {**run_header("derive", device=str(device)), "file": str(args.file),
              "dataset": mf.dataset, "derived_file": str(out), **res.as_dict()}
    report = Path(args.json) if args.json else out.with_suffix(".json")
    atomic_write_json(report, record)
    print(f"wrote {out} ({len(derived.labels)} examples) and {report}")
    return 0


COMMAND = Command(
    "derive", "train a classifier for a new labelling from the memory alone", add_arguments, cmd_derive,
    parents=lambda: [data_options(), device_option("cpu"), progress_option()],
)
