"""Evaluator throughput against a plain hand-written PyTorch loop, side by side.

Both train the same network (same initial weights) on the same real MNIST images with
the same batch order, and test on the same split. Repeats are interleaved (ours, plain,
ours, plain, ...) so machine noise hits both alike; the medians are compared as a ratio.

    python bench/evaluator_throughput.py [--images 3200] [--epochs 2] [--repeats 3]

Writes docs/bench/evaluator_throughput.json and the matching block of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from _report import DOCS, machine, replace_block, today
from memdistill._io import atomic_write_json
from memdistill.data import load_dataset
from memdistill.evaluate import TrainConfig, TrainingSet, test_network, train_network
from memdistill.models import create_model


def plain_train(x, y, config, generator, num_classes):
    """The loop a researcher would write by hand: pre-normalised floats, no extras."""
    model = create_model(config.arch, x.shape[1], num_classes, x.shape[2], generator=generator,
                         **config.arch_options)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    model.train()
    n = x.shape[0]
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for s in range(0, n, config.batch_size):
            idx = order[s:s + config.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def plain_test(model, x, y, batch_size):
    correct = 0
    for s in range(0, x.shape[0], batch_size):
        correct += int((model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).sum())
    return correct / x.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3200, help="training images (real MNIST)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--no-doc", action="store_true", help="print only; do not rewrite docs/")
    args = ap.parse_args()

    train = load_dataset("mnist", "train")
    test = load_dataset("mnist", "test")
    train = train.subset(torch.arange(args.images))
    test = test.subset(torch.arange(args.test_images))
    config = TrainConfig(arch_options={"width": args.width}, epochs=args.epochs)
    ours_data = TrainingSet(train)
    x, y = train.batch()  # the plain loop gets pre-normalised floats (its best case)
    tx, ty = test.batch()
    steps = args.epochs * -(-args.images // config.batch_size)

    t_ours, t_plain, e_ours, e_plain = [], [], [], []
    for rep in range(args.repeats):
        g = lambda: torch.Generator().manual_seed(rep)  # noqa: E731
        t0 = time.perf_counter(); m1 = train_network(ours_data, 10, config, g()); t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); m2 = plain_train(x, y, config, g(), 10); t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); a1, _ = test_network(m1, test, config.test_batch_size); e_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); a2 = plain_test(m2, tx, ty, config.test_batch_size); e_plain.append(time.perf_counter() - t0)
        if abs(a1 - a2) > 1e-3:
            raise SystemExit(f"the two loops disagree: accuracy {a1} vs {a2}; the comparison is void")

    med = statistics.median
    imgs = args.images * args.epochs
    res = {
        "date": today(), "machine": machine(),
        "command": "python bench/evaluator_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "no_doc"),
        "network": f"convnet width {args.width}", "train_images": args.images, "epochs": args.epochs,
        "steps_per_run": steps, "repeats": args.repeats,
        "train_seconds": {"ours": t_ours, "plain": t_plain},
        "test_seconds": {"ours": e_ours, "plain": e_plain},
        "train_images_per_s": {"ours": imgs / med(t_ours), "plain": imgs / med(t_plain)},
        "test_images_per_s": {"ours": args.test_images / med(e_ours), "plain": args.test_images / med(e_plain)},
        "train_overhead": med(t_ours) / med(t_plain) - 1.0,
        "test_overhead": med(e_ours) / med(e_plain) - 1.0,
    }
    print(json.dumps(res, indent=2))
    if args.no_doc:
        return
    atomic_write_json(DOCS / "bench" / "evaluator_throughput.json", res)
    ok = lambda v: "met" if v <= 0.10 else "NOT met"  # noqa: E731
    body = "\n".join([
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']}  ",
        f"Date: {res['date']}; {res['network']}, {args.images} real MNIST images, {args.epochs} epochs "
        f"({steps} steps of batch {config.batch_size}), median of {args.repeats} interleaved repeats.",
        "",
        "| loop | train images/s | test images/s |",
        "|---|---|---|",
        f"| memdistill evaluator | {res['train_images_per_s']['ours']:.0f} | {res['test_images_per_s']['ours']:.0f} |",
        f"| plain PyTorch loop | {res['train_images_per_s']['plain']:.0f} | {res['test_images_per_s']['plain']:.0f} |",
        "",
        f"Overhead of the evaluator over the plain loop: training {100 * res['train_overhead']:+.1f}% "
        f"(target <= 10%: {ok(res['train_overhead'])}), testing {100 * res['test_overhead']:+.1f}% "
        f"(target <= 10%: {ok(res['test_overhead'])}). Raw numbers: `docs/bench/evaluator_throughput.json`.",
    ])
    replace_block(DOCS / "BENCHMARKS.md", "evaluator-throughput", body, "Evaluator throughput")


if __name__ == "__main__":
    main()
