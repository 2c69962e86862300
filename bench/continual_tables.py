"""Print the Markdown sections of docs/CONTINUAL.md from the JSON files the runs wrote,
and draw each section's plot of stored floats against classes seen.

    PYTHONPATH=src python bench/continual_tables.py [--img docs/img] docs/bench/continual_*.json

Runs of the same benchmark, budget mode and budget with different seeds (class orders)
form one section: the mean (and spread, the sample standard deviation over seeds) of the
final average accuracy and forgetting per strategy, the accuracy on seen classes after
each task (mean over seeds), each strategy's accuracy matrix ``acc[t][j]`` (mean over
seeds), and the storage plot (the first seed's run; storage does not depend on the order).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
from collections import defaultdict
from pathlib import Path

from memdistill.continual import ContinualResult, plot_storage

FIELDS = ("benchmark", "strategy", "budget_ipc", "training", "seen_accuracy", "per_task_accuracy", "floats_stored",
          "budget_floats", "task_seconds", "task_info", "budget_mode", "classes_seen")


def load(path: Path) -> tuple[dict, list[ContinualResult]]:
    """The run record and its results (files from before issue 17 lack the budget mode,
    per class then, and the classes seen, which the storage plot needs)."""
    d = json.loads(path.read_text())
    results = [ContinualResult(**{k: r[k] for k in FIELDS if k in r}) for r in d["results"]]
    if is_start_run(d):  # the memories' starting points: their own rows beside the distilled ones
        results = [dataclasses.replace(r, strategy=f"{r.strategy} (start)") for r in results]
    return d, results


def _flag(d: dict, name: str) -> str | None:
    """The value of the last ``name`` in the run's command line (None: not given)."""
    argv = d.get("argv") or []
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    return values[-1] if values else None


def is_start_run(d: dict) -> bool:
    """A run with ``--iterations 0``: each task's memory is its starting point (principal
    directions and least-squares addressing), never distilled."""
    return _flag(d, "--iterations") == "0"


def _mean_sd(values: list[float]) -> str:
    m = 100 * statistics.fmean(values)
    return f"{m:.1f}" if len(values) < 2 else f"{m:.1f} ± {100 * statistics.stdev(values):.1f}"


def summary_table(runs: list[tuple[dict, list[ContinualResult]]]) -> str:
    """Per strategy: seen accuracy after each task (mean over seeds), final average
    accuracy and forgetting (mean ± sd), final floats (budget)."""
    by = defaultdict(list)
    for _, results in runs:
        for r in results:
            by[r.strategy].append(r)
    T = max(len(r.seen_accuracy) for rs in by.values() for r in rs)
    head = ["strategy"] + [f"task {t + 1}" for t in range(T)] + ["final avg", "forgetting", "floats (budget)", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rs in by.items():
        seen = [f"{100 * statistics.fmean(r.seen_accuracy[t] for r in rs):.1f}" for t in range(T)]
        last = rs[0]
        budget = "unbounded" if last.budget_floats[-1] is None else f"{last.budget_floats[-1]:,}"
        lines.append("| " + " | ".join([name, *seen, _mean_sd([r.final_average_accuracy for r in rs]),
                                        _mean_sd([r.forgetting for r in rs]),
                                        f"{max(r.floats_stored[-1] for r in rs):,} ({budget})", str(len(rs))]) + " |")
    return "\n".join(lines)


def matrices(runs: list[tuple[dict, list[ContinualResult]]]) -> str:
    """Each strategy's accuracy matrix (rows: after task t; columns: task j), mean over seeds."""
    by = defaultdict(list)
    for _, results in runs:
        for r in results:
            by[r.strategy].append(r.per_task_accuracy)
    out = []
    for name, mats in by.items():
        T = len(mats[0])
        head = ["after task"] + [f"task {j + 1}" for j in range(T)]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for t in range(T):
            cells = [f"{100 * statistics.fmean(m[t][j] for m in mats):.1f}" if j <= t else "" for j in range(T)]
            rows.append("| " + " | ".join([str(t + 1), *cells]) + " |")
        out += [f"<details><summary>{name}: accuracy matrix (%)</summary>", "", *rows, "", "</details>", ""]
    return "\n".join(out)


def section(key: tuple[str, str, float], runs: list[tuple[dict, list[ContinualResult]]], paths: list[Path],
            img: Path) -> str:
    bench, mode, budget = key
    what = (f"budget {budget:g} image(s) per class" if mode == "per-class"
            else f"fixed total of {budget:g} image(s) per final class")
    stem = paths[0].stem.rsplit("_s", 1)[0]
    png = None
    if all(r.classes_seen for r in runs[0][1]):  # older files cannot be plotted against classes
        png = plot_storage(runs[0][1], img / f"{stem}_floats.png", title=f"{bench}, {what}")
    minutes = sum(sum(r.task_seconds) for _, rs in runs for r in rs) / 60
    cmds = "\n".join("memdistill " + " ".join(shlex.quote(a) for a in d["argv"]) for d, _ in runs)
    return "\n".join([
        f"### {bench}, {what}", "", "```bash", cmds, "```", "",
        f"Machine: {runs[0][0]['machine']}. Dates: {', '.join(d['date'] for d, _ in runs)}. "
        f"Wall time of all runs: {minutes:.1f} min.",
        f"Data: {', '.join(f'`{p}`' for p in paths)}.", "",
        summary_table(runs), "", matrices(runs),
        f"![{bench} {what}: accuracy]({Path('img') / (paths[0].stem + '.png')})",
        "" if png is None else f"![{bench} {what}: stored floats]({Path('img') / png.name})", "",
    ])


STRATEGY_ORDER = ("shared", "shared (start)", "memories", "memories (start)", "images", "herding", "random",
                  "finetune", "joint")
# issue 17's targets: (budget mode, budget) -> how far above herding `shared` must end (points)
TARGETS = {("per-class", 1.0): 5.0, ("per-class", 10.0): 0.0, ("total", 1.0): 8.0}


def overview(groups: dict) -> str:
    """One row per benchmark and budget: each strategy's final average accuracy (mean ±
    sd over the class orders), ``shared`` minus herding, and issue 17's target for it."""
    present = {r.strategy for items in groups.values() for _, (_, results) in items for r in results}
    order = [n for n in STRATEGY_ORDER if "(start)" not in n or n in present]
    head = ["benchmark", "budget", "orders", *order, "shared - herding", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (bench, mode, budget), items in sorted(groups.items()):
        by = defaultdict(list)
        for _, (_, results) in items:
            for r in results:
                by[r.strategy].append(r.final_average_accuracy)
        what = f"{budget:g} per class" if mode == "per-class" else f"total {budget:g}"
        cells = [_mean_sd(by[n]) if by.get(n) else "-" for n in order]
        gap, target = "-", TARGETS.get((mode, budget))
        if by.get("shared") and by.get("herding"):
            d = 100 * (statistics.fmean(by["shared"]) - statistics.fmean(by["herding"]))
            gap = f"{d:+.1f}"
            if target is not None:
                ok = d >= target
                text = f">= {target:+g}"
                if (mode, budget) == ("per-class", 1.0) and by.get("memories"):  # and above `memories`
                    ok = ok and statistics.fmean(by["shared"]) > statistics.fmean(by["memories"])
                    text += ", above memories"
                target = f"{text}: {'met' if ok else 'not met'}"
        orders = len({_flag(d, "--seed") for _, (d, _) in items})  # class orders (a start run shares its order)
        lines.append("| " + " | ".join([bench, what, str(orders), *cells, gap, str(target or "-")]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img", default="docs/img", help="where the storage plots go (default docs/img)")
    ap.add_argument("--overview-only", action="store_true",
                    help="print the overview table only, not each section (no plots drawn)")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    groups: dict = defaultdict(list)
    for p in sorted(Path(f) for f in args.files):
        d, results = load(p)
        key = (d["benchmark"], d.get("budget_mode", "per-class"), float(d["budget_ipc"]))
        groups[key].append((p, (d, results)))
    print(overview(groups) + "\n")
    if args.overview_only:
        return
    for key, items in groups.items():
        print(section(key, [run for _, run in items], [p for p, _ in items], Path(args.img)))


if __name__ == "__main__":
    main()
