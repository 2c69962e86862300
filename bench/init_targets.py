"""Which real images should a `bases` memory's starting addressing be fitted to?
(docs/RESULTS.md, "The starting point's targets at budget 10").

The starting point fits each slot's addressing, by least squares, to a *random* real
image of its class. This probe keeps the starting point's bases and refits the addressing
to other targets chosen per class by k-means (k = the slots per class) on the class's
images projected onto the bases (the part of an image the memory can represent):

- ``random``: the starting point as it is;
- ``centroids``: the k-means centroids themselves (the mean projection of each cluster);
- ``nearest``: the real image nearest each centroid (one real image per cluster).

and prints the validation accuracy of each under the preset's evaluator (one JSON line).

    python bench/init_targets.py --dataset mnist --budget-ipc 10 --mode nearest

One torch thread; the seed of the memory and of the evaluator is the run's (``--seed``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from memdistill.config import parse_sets, resolve
from memdistill.data import load_dataset
from memdistill.distill import Distiller
from memdistill.memory import solve_addressing


def kmeans(x: torch.Tensor, k: int, g: torch.Generator, iters: int = 30) -> torch.Tensor:
    """Cluster of each row of ``x`` after ``iters`` Lloyd steps from a k-means++ start."""
    n = x.shape[0]
    centres = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        centres.append(x[torch.multinomial(d2 / d2.sum(), 1, generator=g)].squeeze(0))
        d2 = torch.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        total = torch.zeros_like(c).index_add_(0, assign, x)
        count = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = count > 0
        c[filled] = total[filled] / count[filled, None]
    return torch.cdist(x, c).argmin(1)


def refit(d: Distiller, memory, mode: str, g: torch.Generator) -> None:
    """Refit ``memory``'s addressing in place to ``mode``'s targets (see the module)."""
    bases = memory.tensors["bases"].detach().double()
    slots = memory.tensors["addressing"].shape[0]
    up = F.interpolate(bases, size=d.train.image_shape[1:], mode="bilinear", align_corners=False).flatten(1)
    new = torch.zeros(memory.tensors["addressing"].shape, dtype=torch.float64)
    for c in range(d.train.num_classes):
        images = d.train.batch(d.train.indices_of_class(c))[0]
        coeff = solve_addressing(bases, images[None])[:, 0]  # (n, K)
        proj = coeff @ up
        assign = kmeans(proj, slots, g)
        count = torch.bincount(assign, minlength=slots).double().clamp(min=1)
        centroids = torch.zeros(slots, coeff.shape[1], dtype=torch.float64).index_add_(0, assign, coeff)
        centroids /= count[:, None]
        if mode == "nearest":
            centroids = coeff[torch.cdist(centroids @ up, proj).argmin(1)]
        new[:, c] = centroids
    with torch.no_grad():
        memory.tensors["addressing"].copy_(new.to(memory.tensors["addressing"].dtype))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--budget-ipc", type=float, default=10.0)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--mode", choices=("random", "centroids", "nearest"), default="random")
    p.add_argument("--runs", type=int, default=2, help="evaluation runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = resolve(args.preset, args.dataset, args.budget_ipc,
                  sets=parse_sets(args.set + [f"evaluation.runs={args.runs}"]),
                  flags={"outer.iterations": 0, "evaluation.every": 0, "seed": args.seed})
    d = Distiller(cfg, load_dataset(args.dataset, "train"))
    memory = d.new_memory()
    started = time.perf_counter()
    if args.mode != "random":
        refit(d, memory, args.mode, torch.Generator().manual_seed(args.seed + 1))
    fit_seconds = time.perf_counter() - started
    val = d.evaluate_memory(memory)
    print(json.dumps({"dataset": args.dataset, "budget_ipc": args.budget_ipc, "preset": args.preset,
                      "mode": args.mode, "seed": args.seed, "sets": args.set, "val": val,
                      "fit_seconds": fit_seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
