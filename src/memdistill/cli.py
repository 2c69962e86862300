"""The ``memdistill`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch

from . import __version__
from ._io import atomic_write_json
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


def _machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


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
        "machine": {**_machine(), "device": str(device)},
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
    e.add_argument("--augment", default="none", help="none | flip | rotate | flip_rotate")
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
