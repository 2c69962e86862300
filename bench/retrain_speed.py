"""How fast a memory retrains a network, against whole-data training to the same accuracy.

    memdistill distill --dataset mnist --budget-ipc 1 --preset cpu-quick --out /tmp/m.mem.safetensors
    PYTHONPATH=src python bench/retrain_speed.py /tmp/m.mem.safetensors          # JSON + docs block
    PYTHONPATH=src python bench/retrain_speed.py --render                         # docs block only

One network (seed 0, ConvNet-3 of ``--width``) is trained on what the memory recalls with
each schedule of the evaluator: ``fixed`` (``--epochs`` epochs, the reference protocol)
and ``converge`` (stops once the training loss fits or plateaus, at most ``--epochs``).
The fixed run is tested every ``--check-every`` epochs (tests are not timed), which gives
the time it takes to first reach its own final accuracy. Then one network is trained on
the whole training set with the same optimiser and batch size, tested every
``--whole-check-every`` steps (not timed) until it reaches the better of the two memory
accuracies or ``--whole-epochs`` end; the curve gives its time to each memory accuracy.
Times are wall seconds of training on this machine, one run each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOCS, machine, replace_block, today  # noqa: E402

from memdistill._io import atomic_write_json  # noqa: E402
from memdistill.data import load_dataset  # noqa: E402
from memdistill.evaluate import TrainConfig, TrainingSet, fit_network, test_network  # noqa: E402
from memdistill.memory.file import load_memory  # noqa: E402

OUT = DOCS / "bench" / "retrain_speed.json"


class Clock:
    """Training time with the test checks taken out."""

    def __init__(self) -> None:
        self.start, self.paused = time.perf_counter(), 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def test(self, net: torch.nn.Module, test) -> float:
        t0 = time.perf_counter()
        net.eval()
        acc, _ = test_network(net, test)
        net.train()
        self.paused += time.perf_counter() - t0
        return acc


def memory_runs(x, y, test, tc: TrainConfig, check_every: int) -> dict[str, Any]:
    data, out = TrainingSet(x, y), {}
    steps_per_epoch = -(-len(data) // tc.batch_size)
    clock, curve = Clock(), []

    def on_step(step: int, net: torch.nn.Module) -> bool:
        if step % (check_every * steps_per_epoch) == 0:
            curve.append([step // steps_per_epoch, clock.seconds(), clock.test(net, test)])
        return False

    model, losses = fit_network(data, test.num_classes, tc, torch.Generator().manual_seed(0), on_step=on_step)
    seconds = clock.seconds()
    final, _ = test_network(model, test)
    reach = next(c for c in curve + [[len(losses), seconds, final]] if c[2] >= final)
    out["fixed"] = {"epochs_run": len(losses), "accuracy": final, "train_seconds": seconds,
                    "epochs_to_own_final": reach[0], "seconds_to_own_final": reach[1], "curve": curve,
                    "final_loss": losses[-1]}
    conv = dataclasses.replace(tc, schedule="converge")
    t0 = time.perf_counter()
    model, losses = fit_network(data, test.num_classes, conv, torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - t0
    acc, _ = test_network(model, test)
    out["converge"] = {"epochs_run": len(losses), "accuracy": acc, "train_seconds": seconds,
                       "final_loss": losses[-1]}
    return out


def whole_run(train, test, tc: TrainConfig, target: float, epochs: int, every: int) -> dict[str, Any]:
    clock, curve = Clock(), []

    def on_step(step: int, net: torch.nn.Module) -> bool:
        if step % every:
            return False
        curve.append([step, clock.seconds(), clock.test(net, test)])
        return curve[-1][2] >= target

    fit_network(TrainingSet(train), train.num_classes, dataclasses.replace(tc, epochs=epochs),
                torch.Generator().manual_seed(0), on_step=on_step)
    return {"examples": len(train), "max_epochs": epochs, "check_every_steps": every, "curve": curve}


def seconds_to(curve: list[list[float]], accuracy: float) -> float | None:
    return next((c[1] for c in curve if c[2] >= accuracy), None)


def markdown(d: dict[str, Any]) -> str:
    whole = d["whole"]["curve"]
    rows = []
    for name in ("fixed", "converge"):
        r = d["memory"][name]
        reach = seconds_to(whole, r["accuracy"])
        own = r.get("seconds_to_own_final", r["train_seconds"])
        rows.append(f"| `{name}` | {r['epochs_run']} | {100 * r['accuracy']:.2f} | {r['train_seconds']:.1f} | "
                    f"{own:.1f} | " + (f"{reach:.1f} | {reach / own:.2f}" if reach is not None else
                                      f"not reached in {d['whole']['max_epochs']} epochs | -") + " |")
    return "\n".join([
        f"Command: `{d['command']}`. Machine: {d['machine']}. Date: {d['date']}. Memory: {d['memory_file']} "
        f"({d['examples']} recalled examples); ConvNet-3 width {d['width']}, SGD lr 0.01, momentum 0.9, batch "
        f"640, one run (seed 0); whole data: {d['whole']['examples']} images, tested every "
        f"{d['whole']['check_every_steps']} steps. Tests are not timed. Raw numbers: `docs/bench/retrain_speed.json`.",
        "",
        "| memory schedule | epochs run | memory test acc % | memory train s | memory s to reach its final acc "
        "| whole data s to reach that acc | whole / memory |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("memory", nargs="?")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--check-every", type=int, default=10, help="epochs between tests of the fixed run")
    p.add_argument("--whole-epochs", type=int, default=2)
    p.add_argument("--whole-check-every", type=int, default=10, help="steps between tests of the whole-data run")
    p.add_argument("--root")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--doc", default=str(DOCS / "RESULTS.md"))
    p.add_argument("--render", action="store_true", help="only rebuild the docs block from --out")
    args = p.parse_args(argv)
    if not args.render:
        if not args.memory:
            p.error("give a memory file (or --render)")
        mf = load_memory(args.memory)
        x, y = mf.recall()
        train = load_dataset(mf.dataset, "train", root=args.root).with_zca(mf.zca)
        test = load_dataset(mf.dataset, "test", root=args.root).with_zca(mf.zca)
        tc = TrainConfig(arch="convnet", arch_options={"width": args.width}, epochs=args.epochs)
        memory = memory_runs(x, y, test, tc, args.check_every)
        target = max(memory["fixed"]["accuracy"], memory["converge"]["accuracy"])
        whole = whole_run(train, test, tc, target, args.whole_epochs, args.whole_check_every)
        record = {"command": "python bench/retrain_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": machine(), "date": today(), "memory_file": Path(args.memory).name,
                  "dataset": mf.dataset, "examples": int(x.shape[0]), "width": args.width, "memory": memory,
                  "whole": whole}
        atomic_write_json(args.out, record)
    record = json.loads(Path(args.out).read_text())
    replace_block(Path(args.doc), "retrain-speed", markdown(record), "Retrain speed by schedule")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
