"""A horizon-free objective tried on the budget-10 memory: distribution matching.

docs/RESULTS.md ("Budget 10: why the memory does not learn") traces the budget-10
plateau to the horizon of the meta-gradient. Distribution matching (DM, Zhao & Bilen
2023) has no horizon at all: each step draws a random, untrained ConvNet and moves the
memory so that the mean feature of each class's recalled examples matches the mean
feature of a batch of that class's real images. This script runs that objective on the
preset's starting memory for a wall-time budget and reports the validation accuracy of
the start and of the result under the preset's evaluator (not a library feature: a
probe, kept so that the number in docs/RESULTS.md can be rerun).

    python bench/dm_probe.py --dataset mnist --budget-ipc 10 --seconds 300

One torch thread; the features are those of ConvNet-3 (``--width``, instance norm)
before its classifier; no augmentation; Adam on every memory tensor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from memdistill.config import parse_sets, resolve
from memdistill.data import load_dataset
from memdistill.distill import Distiller
from memdistill.distill.streams import stream
from memdistill.models import create_model, supported_options

DM_STREAM = 0x646D  # names the random stream of the probe's networks and real batches


def dm_loss(memory, features, real, class_index, per_class: int, g: torch.Generator) -> torch.Tensor:
    """Sum over classes of the squared distance between the mean feature of the class's
    recalled examples (differentiable in the memory) and of ``per_class`` real ones."""
    L, r = len(class_index), memory.slots
    classes = torch.arange(L).repeat_interleave(r)
    slots = torch.arange(r).repeat(L)
    x, _ = memory.recall_from(memory.tensors, classes, slots)
    fs = features(x).flatten(1).view(L, r, -1).mean(1)
    idx = torch.cat([ix[torch.randint(len(ix), (per_class,), generator=g)] for ix in class_index])
    xr, _ = real.batch(idx)
    with torch.no_grad():
        fr = features(xr).flatten(1).view(L, per_class, -1).mean(1)
    return ((fr - fs) ** 2).sum()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--budget-ipc", type=float, default=10.0)
    p.add_argument("--preset", default="cpu-quick")
    p.add_argument("--seconds", type=float, default=300.0, help="wall seconds of DM steps")
    p.add_argument("--lr", type=float, default=0.001, help="Adam learning rate")
    p.add_argument("--width", type=int, default=32, help="ConvNet-3 width of the random feature networks")
    p.add_argument("--real-per-class", type=int, default=64)
    p.add_argument("--eval-runs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE over the preset")
    p.add_argument("--root", default=None)
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.lr <= 0 or args.width < 1 or args.real_per_class < 1:
        p.error("--seconds, --lr, --width and --real-per-class must be > 0")
    torch.set_num_threads(1)
    train = load_dataset(args.dataset, "train", root=args.root)
    cfg = resolve(args.preset, args.dataset, args.budget_ipc, sets=parse_sets(args.set),
                  flags={"evaluation.every": 0, "evaluation.runs": args.eval_runs, "seed": args.seed})
    d = Distiller(cfg, train)
    memory = d.new_memory()
    start = d.evaluate_memory(memory)
    opt = torch.optim.Adam(memory.parameters(), lr=args.lr)
    g = stream(args.seed, DM_STREAM)
    options = supported_options("convnet", width=args.width, norm="instance")
    class_index = [d.train.indices_of_class(c) for c in range(d.train.num_classes)]
    steps, spent, losses = 0, 0.0, []
    while spent < args.seconds:
        t = time.perf_counter()
        net = create_model("convnet", train.in_channels, d.train.num_classes, train.image_shape[1:], generator=g,
                           **options).requires_grad_(False)
        loss = dm_loss(memory, net.features, d.train, class_index, args.real_per_class, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        steps += 1
        spent += time.perf_counter() - t
    end = d.evaluate_memory(memory)
    first, last = losses[: max(1, steps // 10)], losses[-max(1, steps // 10):]
    print(json.dumps({
        "dataset": args.dataset, "budget_ipc": args.budget_ipc, "seed": args.seed, "lr": args.lr,
        "width": args.width, "steps": steps, "seconds": round(spent, 1),
        "dm_loss_first_tenth": sum(first) / len(first), "dm_loss_last_tenth": sum(last) / len(last),
        "start_val": start["mean"], "memory_val": end["mean"], "eval_runs": args.eval_runs,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
