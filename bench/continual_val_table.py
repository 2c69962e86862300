"""One table from a folder of ``memdistill continual`` runs, one column per class order:
final average accuracy of ``shared`` (and herding, where a run holds it) per setting.

A run's file is ``<setting>_s<order>.json``; each row is a setting, with the mean over
the orders and the difference to the mean of herding over the same orders (herding does
not depend on the distillation settings, so one run per order of it is enough).

    python bench/continual_val_table.py docs/bench/continual_val_fashion
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def load(folder: Path) -> dict[str, dict[int, dict[str, float]]]:
    """``{setting: {order: {strategy: final average accuracy %}}}``."""
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted(folder.glob("*_s*.json")):
        m = re.fullmatch(r"(.+)_s(\d+)", path.stem)
        if m is None:
            continue
        record = json.loads(path.read_text())
        scores = {r["strategy"]: 100 * r["final_average_accuracy"] for r in record["results"]}
        runs.setdefault(m.group(1), {})[int(m.group(2))] = scores
    if not runs:
        raise SystemExit(f"no <setting>_s<order>.json files in {folder}")
    return runs


def table(runs: dict[str, dict[int, dict[str, float]]]) -> str:
    orders = sorted({o for per in runs.values() for o in per})
    herding = {o: s["herding"] for per in runs.values() for o, s in per.items() if "herding" in s}
    if set(herding) != set(orders):
        raise SystemExit(f"herding is needed for every order {orders}; found it for {sorted(herding)}")
    head = ["setting", *[f"order {o}" for o in orders], "mean", "vs herding"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    h_mean = statistics.mean(herding[o] for o in orders)
    lines.append("| herding | " + " | ".join(f"{herding[o]:.1f}" for o in orders) + f" | {h_mean:.1f} | |")
    for setting, per in runs.items():
        if set(per) != set(orders):
            raise SystemExit(f"setting {setting!r} has orders {sorted(per)}, the table needs {orders}")
        vals = [per[o]["shared"] for o in orders]
        mean = statistics.mean(vals)
        cells = " | ".join(f"{v:.1f}" for v in vals)
        lines.append(f"| {setting} | {cells} | {mean:.1f} | {mean - h_mean:+.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    print(table(load(ap.parse_args().folder)))


if __name__ == "__main__":
    main()
