"""``memdistill distill``: distill a dataset into a memory file."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .._io import atomic_write_json
from ..errors import ConfigError
from ._options import Command, collective_option, data_options, device_option, progress_option
from ._run import join, load_data, rank0_first, table


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--dataset", required=True,
                   help="a built-in dataset (see `memdistill datasets`), folder:PATH (an image folder) or npz:PATH")
    s.add_argument("--budget-ipc", type=float, required=True, help="storage budget in images per class")
    s.add_argument("--preset", default="cpu-quick", help="cpu-quick | cpu | paper (default cpu-quick)")
    s.add_argument("--memory", help="bases | images")
    s.add_argument("--bases", type=int, help="number of bases K")
    s.add_argument("--downsample", type=int, help="bases stored at H/ds x W/ds")
    s.add_argument("--learned-labels", action="store_const", const=True,
                   help="learn labels too: logits per recalled example, recalled as a softmax (rate: --set "
                        "outer.label_lr=...; they did not help on MNIST or Fashion-MNIST, docs/RESULTS.md)")
    s.add_argument("--inner-steps", type=int, help="inner training steps T")
    s.add_argument("--iterations", type=int, help="outer iterations")
    s.add_argument("--unroll", help="checkpointed | full")
    s.add_argument("--window", type=int, help="back-propagate through the last W inner steps")
    s.add_argument("--seed", type=int)
    s.add_argument("--config", help="TOML file with any option of the run (see docs/CONFIG.md)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any option, e.g. inner.lr=0.02")
    s.add_argument("--resume", action="store_true", help="continue from the checkpoint next to --out")
    s.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="stop after the iteration that passes this wall time, writing the checkpoint and the "
                        "memory so far (--resume continues)")
    s.add_argument("--out", required=True, help="memory file to write (.safetensors)")


def _distill_config(args: argparse.Namespace):
    """The run's configuration, from the one path every caller takes (:func:`config.resolve`)."""
    from ..config import parse_sets, resolve
    from ..data import canonical_dataset_name

    flags = {
        "memory.kind": args.memory, "memory.num_bases": args.bases, "memory.downsample": args.downsample,
        "memory.learned_labels": args.learned_labels, "inner.steps": args.inner_steps,
        "outer.iterations": args.iterations, "seed": args.seed, "outer.unroll": args.unroll,
        "outer.window": args.window, "device": args.device,
    }
    dataset = canonical_dataset_name(args.dataset, getattr(args, "root", None))  # folder:/npz: by absolute path
    return resolve(args.preset, dataset, args.budget_ipc, toml=args.config or None, flags=flags,
                   sets=parse_sets(args.set))


def _against_start(result) -> str:
    """One line: the validation accuracy of the starting point against the memory's, said
    plainly when distillation left the memory below where it started."""
    start, end = result.start_eval, result.last_eval
    if start is None:
        return "starting point: not evaluated (evaluation.at_start=false, or a resumed run that began without it)"
    if end is None:
        return f"starting point: {100 * start['mean']:.2f}% on the validation split (no evaluation after it)"
    delta = 100 * (end["mean"] - start["mean"])
    at = end.get("iteration", result.iterations)  # absent in checkpoints written before 2026-12-06
    line = (f"validation accuracy: starting point {100 * start['mean']:.2f}%, after {at} "
            f"iterations {100 * end['mean']:.2f}% ({delta:+.2f} points)")
    if at != result.iterations:
        line += (f"\nthat is the latest evaluation; the memory written has {result.iterations} iterations and was "
                 "not evaluated on the validation split")
    if result.below_start:
        line += ("\nthe distilled memory is BELOW its starting point: these iterations made it worse; "
                 "more iterations, a longer unroll (--inner-steps) or a lower outer lr may help")
    return line


def _warn_unused_steps(args: argparse.Namespace, cfg) -> None:
    """Say so on stderr when ``--inner-steps`` is given while a model pool is on: the pool
    unrolls ``outer.pool_unroll`` steps per outer step and never reads ``inner.steps``."""
    if args.inner_steps is not None and cfg.outer.pool_size > 0:
        print(f"warning: --inner-steps {args.inner_steps} is not used: the model pool is on "
              f"(outer.pool_size={cfg.outer.pool_size}), so each outer step unrolls outer.pool_unroll="
              f"{cfg.outer.pool_unroll} steps of networks that live up to outer.pool_max_steps="
              f"{cfg.outer.pool_max_steps} steps; set those (--set outer.pool_unroll=N), or switch the pool "
              "off with --set outer.pool_size=0 for fresh unrolls of --inner-steps steps", file=sys.stderr)


def _refuse_bad_resume(dist, checkpoint: Path, cfg) -> None:
    """Refuse ``--resume`` from a checkpoint of another configuration before any file is
    written (rank 0 reads the checkpoint; every rank refuses together)."""
    from ..distill import check_resume
    from ..errors import MemdistillError

    problem = None
    if dist.is_main:
        try:
            check_resume(checkpoint, cfg)
        except MemdistillError as exc:
            problem = exc
    problem = dist.broadcast_object(problem)
    if problem is not None:
        raise problem


def cmd_distill(args: argparse.Namespace) -> int:
    from .._allocator import keep_freed_memory
    from ..config import config_to_dict
    from ..distill import Distiller
    from ..memory.file import save_memory

    cfg = _distill_config(args)
    _warn_unused_steps(args, cfg)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors (a memory file), got {out}")
    if args.time_limit is not None and args.time_limit <= 0:
        raise ConfigError(f"--time-limit must be a positive number of seconds, got {args.time_limit}")
    base = out.with_suffix("")
    checkpoint, metrics = Path(f"{base}.ckpt"), Path(f"{base}.metrics.jsonl")
    dist, device = join(args, cfg.device)
    if cfg.keep_freed_memory:  # this process is ours: its allocator too
        keep_freed_memory()
    if cfg.tf32 and device.type == "cuda":  # this process is ours: set the backend flags here
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.resume:
        _refuse_bad_resume(dist, checkpoint, cfg)  # a refused command writes nothing
    train = rank0_first(dist, lambda: load_data(args, cfg.dataset, "train"))
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
                     "validation_start": result.start_eval, "distill_seconds_this_session": seconds}
    space = distiller.label_space  # one-hot: the class names; else the label space's coordinates
    extra = {**(space.file_extra() or {}), **({"dataset": train.source} if train.source is not None else {})}
    def save(path: Path, memory, metrics: dict) -> None:
        save_memory(path, memory, dataset=cfg.dataset, classes=list(space.coordinates), mean=train.mean,
                    std=train.std, zca=distiller.train.zca, config=config_to_dict(cfg), metrics=metrics,
                    train_size=len(train), extra=extra or None)

    save(out, result.memory, metrics_final)
    last = Path(f"{base}.last.safetensors")
    if result.last_iterate is not None:  # outer.average: the file holds the average, this the last update
        save(last, result.last_iterate, {**metrics_final, "validation": None, "memory": "last iterate"})
    rep = result.memory.report(len(train))
    rows = [(cfg.dataset, cfg.memory.kind, cfg.memory.budget_ipc, result.memory.slots, rep.examples,
             rep.floats_stored, result.iterations,
             "-" if result.last_eval is None else f"{100 * result.last_eval['mean']:.2f}", f"{seconds:.0f}")]
    print(table(["dataset", "memory", "budget ipc", "slots/class", "examples", "floats", "iterations",
                 "val acc %", "seconds"], rows))
    print(_against_start(result))
    averaged = result.last_iterate is not None
    print(f"wrote {out} (checkpoint {checkpoint}, metrics {metrics})"
          + (f"; the moving average (outer.average); the last iterate in {last}" if averaged else ""))
    if result.iterations < cfg.outer.iterations:
        print(f"stopped at the time limit after {result.iterations} of {cfg.outer.iterations} iterations; "
              f"add --resume to continue")
    return 0


COMMAND = Command(
    "distill", "distill a dataset into a memory file", add_arguments, cmd_distill,
    parents=lambda: [data_options(), device_option(None), collective_option(), progress_option()],
)
