"""Choose the ``shared`` strategy's layout (``ragged`` or ``dense``) on a validation split.

For each benchmark, budget mode and class order, runs ``memdistill continual
--validation`` (10 % of each class's training images held out and tested on; the test
split is never read) in the light setting of ``bench/continual_docs.sh``: ``shared`` in the
default ``ragged`` layout beside ``memories`` (per-class mode only: it cannot honour a
fixed total) and ``herding``, then ``shared --shared-layout dense``. Renders the final
average accuracy (mean ± sample sd over the orders) into docs/CONTINUAL.md.

    python bench/continual_layouts.py --seeds 0 1 2            # run every cell, then render
    python bench/continual_layouts.py --render                 # only rebuild the table

Each run's JSON (with its exact argv) goes to docs/bench/continual_layouts/; runs already
there are skipped unless ``--force``. One torch thread per run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOCS, machine, replace_block, today  # noqa: E402

OUT = DOCS / "bench" / "continual_layouts"
BENCHMARKS = ("split-mnist", "split-fashion-mnist")
MODES = {"per-class": ["--budget-ipc", "1"], "total": ["--budget-total-ipc", "1"]}
LIGHT = ["--preset", "cpu-quick", "--iterations", "10", "--set", "inner.width=16", "--width", "16", "--steps", "150",
         "--batch-size", "64", "--test-per-class", "200", "--no-progress", "--validation"]


def _stem(benchmark: str, mode: str, seed: int, layout: str) -> str:
    return f"{benchmark}_{mode}_s{seed}_{layout}"


def run_cell(benchmark: str, mode: str, seed: int, layout: str, force: bool) -> None:
    out = OUT / f"{_stem(benchmark, mode, seed, layout)}.json"
    if out.exists() and not force:
        print(f"{out.name}: already there (--force reruns it)")
        return
    if layout == "ragged":
        strategies = "shared,memories,herding" if mode == "per-class" else "shared,herding"
        extra = []
    else:
        strategies, extra = "shared", ["--shared-layout", "dense"]
    argv = [sys.executable, "-m", "memdistill", "continual", "--benchmark", benchmark, *MODES[mode], "--seed",
            str(seed), *LIGHT, "--strategy", strategies, *extra, "--out", str(out),
            "--plot", str(out.with_suffix(".png"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    subprocess.run(argv, check=True, env=env)
    out.with_suffix(".png").unlink(missing_ok=True)  # the table is the result; plots stay out of the repo


def _pm(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{mean:.1f} ± {sd:.1f}" if len(values) > 1 else f"{mean:.1f}"


def render(doc: Path) -> None:
    cells: dict[tuple[str, str], dict[str, list[float]]] = {}
    seeds: dict[tuple[str, str], set[int]] = {}
    machines, dates = set(), set()
    for path in sorted(OUT.glob("*.json")):
        d = json.loads(path.read_text())
        benchmark, mode, seed, layout = path.stem.rsplit("_", 3)
        key = (benchmark, mode)
        seeds.setdefault(key, set()).add(int(seed[1:]))
        machines.add(d["machine"]["cpu"] if isinstance(d.get("machine"), dict) else str(d.get("machine")))
        dates.add(str(d.get("date", ""))[:10])
        for r in d["results"]:
            name = r["strategy"] if layout == "ragged" or r["strategy"] != "shared" else "shared (dense)"
            name = "shared (ragged)" if name == "shared" else name
            cells.setdefault(key, {}).setdefault(name, []).append(r["final_average_accuracy"])
    cols = ["shared (ragged)", "shared (dense)", "memories", "herding"]
    lines = [
        "Validation split (`--validation`: 10 % of each class's training images held out and tested on, the test "
        "split never read), the light setting of `bench/continual_docs.sh` (cpu-quick, 10 distillation iterations "
        "per task, width-16 networks, classifier 150 steps of batch 64, 200 validation images per class), budget "
        "1 image per class (per class) or a fixed total of 1 image per final class. Final average accuracy %, "
        "mean ± sample sd (ddof 1) over the class orders. `memories` cannot honour a fixed total.",
        "",
        "| benchmark | budget mode | orders | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for (benchmark, mode), by in sorted(cells.items()):
        lines.append(f"| {benchmark} | {mode} | {', '.join(map(str, sorted(seeds[(benchmark, mode)])))} | "
                     + " | ".join(_pm(by.get(c, [])) for c in cols) + " |")
    lines += ["", f"Command: `python bench/continual_layouts.py --seeds 0 1 2` (JSON per run in "
              f"docs/bench/continual_layouts/). Machine: {', '.join(sorted(machines))}, one torch thread per run, "
              f"the other core busy; {', '.join(sorted(dates))}."]
    replace_block(doc, "continual_layouts", "\n".join(lines), "Choosing the shared layout (validation split)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--benchmarks", nargs="*", default=list(BENCHMARKS))
    p.add_argument("--force", action="store_true")
    p.add_argument("--render", action="store_true", help="only rebuild the table")
    p.add_argument("--doc", type=Path, default=DOCS / "CONTINUAL.md")
    args = p.parse_args(argv)
    if not args.render:
        OUT.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for benchmark in args.benchmarks:
                for mode in MODES:
                    for layout in ("ragged", "dense"):
                        run_cell(benchmark, mode, seed, layout, args.force)
    render(args.doc)
    print(f"rendered {args.doc} ({today()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
