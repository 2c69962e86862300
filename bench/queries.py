"""Derived tasks and generalised queries on MNIST and Fashion-MNIST (docs/QUERIES.md).

For each dataset: a budget-1 ``bases`` memory (``cpu-quick`` preset, distilled here
unless it already exists under ``--memories``), then for each derived task the test
accuracy of the same classifier trained on (a) the memory-derived set, (b) a random
real subset of equal storage, (c) all real data of the task (fewer epochs, CPU); and
interpolation pictures. ``--parity`` adds MNIST distilled with the digit+parity label
space and what its coarse ("even"/"odd") queries recall.

Results go to ``docs/bench/queries.json`` (one entry per part, kept across runs) and
the tables of ``docs/QUERIES.md`` are regenerated from that file.

    MEMDISTILL_DATA=/work/shared/data PYTHONPATH=src nice -n 10 python bench/queries.py \
        --datasets mnist fashion-mnist --parity
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOCS, machine, replace_block, today  # noqa: E402

from memdistill import TrainConfig, load_dataset, load_memory  # noqa: E402
from memdistill._io import atomic_write_json  # noqa: E402
from memdistill.derive import parse_task, relabel_dataset, run_derived_task  # noqa: E402
from memdistill.evaluate import TrainingSet, evaluate  # noqa: E402
from memdistill.evaluate._train import train_network  # noqa: E402
from memdistill.labels import label_space_of  # noqa: E402
from memdistill.queries import render_interpolation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
JSON = DOCS / "bench" / "queries.json"
DOC = DOCS / "QUERIES.md"
IMG = DOCS / "img"
TASKS = {
    "mnist": ["odd-even", "lt5", "subset:0,1,2"],
    "fashion-mnist": ["tops-bottoms-footwear-bags", "subset:T-shirt/top,Trouser,Pullover"],
}
PAIRS = {"mnist": [("3", "8"), ("1", "7"), ("4", "9")],
         "fashion-mnist": [("Sneaker", "Ankle boot"), ("T-shirt/top", "Dress")]}
WIDTH, EPOCHS, REAL_EPOCHS, REAL_BATCH = 32, 100, 1, 256
JUDGE_IMAGES, JUDGE_EPOCHS = 10_000, 2


def _distill(dataset: str, out: Path, iterations: int | None, extra: list[str]) -> list[str]:
    shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    cmd = ["memdistill", "distill", "--dataset", dataset, "--budget-ipc", "1", "--preset", "cpu-quick",
           *(["--iterations", str(iterations)] if iterations else []), *extra, "--out", str(shown), "--no-progress"]
    if not out.exists():
        subprocess.run([sys.executable, "-m", "memdistill", *cmd[1:-3], "--out", str(out), "--no-progress"],
                       check=True, cwd=ROOT)
    return cmd


def _configs():
    tc = TrainConfig(arch_options={"width": WIDTH}, epochs=EPOCHS)
    real = TrainConfig(arch_options={"width": WIDTH}, epochs=REAL_EPOCHS, batch_size=REAL_BATCH)
    return tc, real


def run_dataset(dataset: str, memories: Path, iterations: int | None, argv: list[str]) -> dict:
    mem_path = memories / f"{dataset}.safetensors"
    cmd = _distill(dataset, mem_path, iterations, [])
    mf = load_memory(mem_path)
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    tc, real = _configs()
    tasks = []
    for spec in TASKS[dataset]:
        task = parse_task(spec, mf.classes)
        t0 = time.perf_counter()
        res = run_derived_task(mf, task, test, tc, train=train, all_real_config=real, runs=1, seed=0)
        tasks.append({**res.as_dict(), "seconds": time.perf_counter() - t0})
        print(f"{dataset} {spec}: memory {res.memory['mean']:.4f} random {res.random_real['mean']:.4f} "
              f"all {res.all_real['mean']:.4f}", flush=True)
    pictures = []
    for a, b in PAIRS[dataset]:
        name = f"queries-{dataset}-{_safe(a)}-{_safe(b)}.png"
        render_interpolation(mf, a, b, 9, IMG / name, rows=3)
        pictures.append({"a": a, "b": b, "file": f"img/{name}"})
    return {"dataset": dataset, "memory": str(mem_path.relative_to(ROOT)), "distill_command": " ".join(cmd),
            "memory_iterations": mf.meta["metrics"]["iterations"], "floats_stored": mf.memory.floats_stored(),
            "slots": mf.slots, "tasks": tasks, "pictures": pictures, "machine": machine(), "date": today(),
            "command": "PYTHONPATH=src nice -n 10 python bench/queries.py " + " ".join(argv)}


def run_parity(memories: Path, iterations: int | None, argv: list[str]) -> dict:
    """MNIST with the digit+parity label space: accuracy on the digits, and what the
    coarse ``even`` / ``odd`` queries recall."""
    path = memories / "mnist-parity.safetensors"
    cmd = _distill("mnist", path, iterations, ["--set", "memory.label_space=parity"])
    mf, onehot = load_memory(path), load_memory(memories / "mnist.safetensors")
    space = label_space_of(mf)
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    tc, _ = _configs()
    x, y = space.class_examples(mf.memory)
    digits = evaluate(TrainingSet(x, y), test, tc, runs=1, seed=0)
    xo, yo = onehot.recall()
    digits_onehot = evaluate(TrainingSet(xo, yo), test, tc, runs=1, seed=0)
    # a parity classifier trained on real data (the first JUDGE_IMAGES training images,
    # JUDGE_EPOCHS epochs: CPU time), applied to the coarse queries' recall
    task = parse_task("odd-even", space.class_names)
    judge_cfg = TrainConfig(arch_options={"width": WIDTH}, epochs=JUDGE_EPOCHS, batch_size=REAL_BATCH)
    judge = train_network(TrainingSet(relabel_dataset(train.subset(torch.arange(JUDGE_IMAGES)), task)), 2,
                          judge_cfg, torch.Generator().manual_seed(0))
    judged = {}
    with torch.no_grad():
        for j, coord in enumerate(["even", "odd"]):
            xq, _ = mf.recall(query=torch.eye(space.width)[space.coordinates.index(coord)])
            judged[coord] = float((judge(xq).argmax(1) == j).float().mean())
        real_test = relabel_dataset(test, task)
        xt, yt = real_test.batch()
        judge_acc = float((judge(xt).argmax(1) == yt).float().mean())
    # odd/even classifiers from the parity memory: coarse queries only, and the derived task
    coarse_x, _ = mf.recall(query=torch.eye(space.width)[10:])
    coarse_y = torch.arange(2).repeat_interleave(mf.slots)
    coarse_only = evaluate(TrainingSet(coarse_x, coarse_y), real_test, tc, runs=1, seed=0)
    derived = run_derived_task(mf, task, test, tc, runs=1, seed=0)
    return {"memory": str(path.relative_to(ROOT)), "distill_command": " ".join(cmd), "slots": mf.slots,
            "floats_stored": mf.memory.floats_stored(), "onehot_floats_stored": onehot.memory.floats_stored(),
            "memory_iterations": mf.meta["metrics"]["iterations"],
            "digits_accuracy": digits.mean, "digits_accuracy_onehot_memory": digits_onehot.mean,
            "coarse_recall_judged": judged, "judge_test_accuracy": judge_acc,
            "odd_even_from_coarse_queries_only": coarse_only.mean, "odd_even_derived": derived.memory["mean"],
            "machine": machine(), "date": today(),
            "command": "PYTHONPATH=src nice -n 10 python bench/queries.py " + " ".join(argv)}


def _rel(text: str) -> str:
    return text.replace(str(ROOT) + "/", "")


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-").lower()


# ------------------------------------------------------------------- the doc
def render(results: dict) -> None:
    for dataset, entry in results.get("datasets", {}).items():
        rows = ["| task | new classes | chance % | memory-derived % (examples) | random real, equal storage % (examples) "
                "| all real % (examples, epochs) |", "|---|---|---|---|---|---|"]
        for t in entry["tasks"]:
            m, r, a = t["memory"], t["random_real"], t["all_real"]
            rows.append(f"| `{t['task']['spec']}` | {', '.join(t['task']['names'])} | {100 * t['chance']:.1f} "
                        f"| {100 * m['mean']:.2f} ({m['examples']}) | {100 * r['mean']:.2f} ({r['examples']}) "
                        f"| {100 * a['mean']:.2f} ({a['examples']}, {a['epochs']}) |")
        pics = "\n".join(f"![{p['a']} to {p['b']}]({p['file']})" for p in entry["pictures"])
        body = (f"Memory: `{_rel(entry['distill_command'])}` ({entry['memory_iterations']} outer iterations, "
                f"{entry['floats_stored']} floats, {entry['slots']} slots per class).\n"
                f"Classifier: ConvNet-3 width {WIDTH}, SGD lr 0.01 momentum 0.9, batch 640, {EPOCHS} epochs, "
                f"1 run, seed 0; all real data: {REAL_EPOCHS} epoch at batch {REAL_BATCH} (CPU).\n"
                f"Command: `{entry['command']}`. Machine: {entry['machine']}. Date: {entry['date']}.\n\n"
                + "\n".join(rows) + "\n\nInterpolation (columns: t = 0 ... 1 in 9 steps; rows: the first 3 slots):\n\n"
                + pics)
        replace_block(DOC, f"queries-{dataset}", body, f"{dataset}")
    p = results.get("parity")
    if p:
        body = (f"Memory: `{_rel(p['distill_command'])}` ({p['memory_iterations']} outer iterations, {p['floats_stored']} "
                f"floats, {p['slots']} slots per row; the one-hot memory it is compared with stores "
                f"{p['onehot_floats_stored']}).\n"
                f"Command: `{p['command']}`. Machine: {p['machine']}. Date: {p['date']}.\n\n"
                "| measurement | value % |\n|---|---|\n"
                f"| digits (10 classes), classifier trained on the class queries' recall | "
                f"{100 * p['digits_accuracy']:.2f} |\n"
                f"| same, one-hot memory of the same budget | {100 * p['digits_accuracy_onehot_memory']:.2f} |\n"
                f"| recall of the `even` coordinate judged even by a real-data parity classifier | "
                f"{100 * p['coarse_recall_judged']['even']:.1f} |\n"
                f"| recall of the `odd` coordinate judged odd by that classifier | "
                f"{100 * p['coarse_recall_judged']['odd']:.1f} |\n"
                f"| (that classifier, trained on the first {JUDGE_IMAGES} real training images for {JUDGE_EPOCHS} "
                f"epochs, on the real test split) | {100 * p['judge_test_accuracy']:.2f} |\n"
                f"| odd/even classifier trained on the two coarse queries' recall only | "
                f"{100 * p['odd_even_from_coarse_queries_only']:.2f} |\n"
                f"| odd/even classifier from `derive --task odd-even` on this memory | {100 * p['odd_even_derived']:.2f} |\n")
        replace_block(DOC, "queries-parity", body, "MNIST with digit + parity targets")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="*", default=[], choices=sorted(TASKS))
    ap.add_argument("--parity", action="store_true", help="also the digit+parity label-space memory")
    ap.add_argument("--memories", default="outputs/queries", help="where the memories are (or get distilled)")
    ap.add_argument("--iterations", type=int, help="outer iterations of memories distilled here (preset: 40)")
    ap.add_argument("--render-only", action="store_true", help="only regenerate docs/QUERIES.md from the JSON")
    args = ap.parse_args()
    argv = sys.argv[1:]
    memories = ROOT / args.memories
    if not args.render_only:
        for ds in args.datasets:
            _store("datasets", ds, run_dataset(ds, memories, args.iterations, argv))
        if args.parity:
            _store("parity", None, run_parity(memories, args.iterations, argv))
    render(_load())
    return 0


def _load() -> dict:
    """The results: ``queries.json`` updated with every part file ``queries.<part>.json``
    (each part is also written on its own, so runs of different parts can overlap)."""
    results = json.loads(JSON.read_text()) if JSON.exists() else {}
    for part in sorted(JSON.parent.glob("queries.*.json")):
        entry = json.loads(part.read_text())
        key = part.name[len("queries."):-len(".json")]
        if key == "parity":
            results["parity"] = entry
        else:
            results.setdefault("datasets", {})[key] = entry
    return results


def _store(section: str, key: str | None, entry: dict) -> None:
    atomic_write_json(JSON.parent / f"queries.{key or section}.json", entry)
    results = _load()
    atomic_write_json(JSON, results)


if __name__ == "__main__":
    sys.exit(main())
