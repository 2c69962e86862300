"""One table from a folder of ``memdistill continual`` runs, one column per class order:
final average accuracy of ``shared`` (and herding, where a run holds it) per setting.

A run's file is ``<setting>_s<order>.json``; each row is a setting, with the mean over
the orders and the difference to the mean of herding over the same orders (herding does
not depend on the distillation settings, so one run per order of it is enough).

    python bench/continual_val_table.py docs/bench/continual_val_fashion

``--also SETTING=PATTERN`` adds a setting from runs kept elsewhere, ``{order}`` standing
for the class order (e.g. the committed runs of the stronger protocol:
``--also base=docs/bench/continual_strong_split-fashion-mnist_ipc10_s{order}.json``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def _scores(path: Path) -> dict[str, float]:
    record = json.loads(path.read_text())
    return {r["strategy"]: 100 * r["final_average_accuracy"] for r in record["results"]}


def load(folder: Path, also: dict[str, str] | None = None) -> dict[str, dict[int, dict[str, float]]]:
    """``{setting: {order: {strategy: final average accuracy %}}}``; ``also`` maps further
    settings to a path pattern with ``{order}`` (read for the orders the folder holds)."""
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for path in sorted(folder.glob("*_s*.json")):
        m = re.fullmatch(r"(.+)_s(\d+)", path.stem)
        if m is None:
            continue
        runs.setdefault(m.group(1), {})[int(m.group(2))] = _scores(path)
    if not runs:
        raise SystemExit(f"no <setting>_s<order>.json files in {folder}")
    orders = sorted({o for per in runs.values() for o in per})
    for setting, pattern in (also or {}).items():
        if "{order}" not in pattern:
            raise SystemExit(f"--also {setting}={pattern}: the pattern needs {{order}} where the class order goes")
        paths = {o: Path(pattern.format(order=o)) for o in orders}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise SystemExit(f"--also {setting}: missing {', '.join(missing)}")
        runs[setting] = {o: _scores(p) for o, p in paths.items()}
    return runs


def table(runs: dict[str, dict[int, dict[str, float]]]) -> str:
    orders = sorted({o for per in runs.values() for o in per})
    herding: dict[int, float] = {}
    for per in runs.values():
        for o, s in per.items():
            if "herding" in s and herding.setdefault(o, s["herding"]) != s["herding"]:
                raise SystemExit(f"two runs of order {o} disagree on herding ({herding[o]:.2f} and "
                                 f"{s['herding']:.2f}): keep herding in one setting's runs")
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
    ap.add_argument("--also", action="append", default=[], metavar="SETTING=PATTERN",
                    help="a setting from runs elsewhere, {order} standing for the class order")
    args = ap.parse_args()
    also = {}
    for item in args.also:
        setting, sep, pattern = item.partition("=")
        if not sep or not setting:
            raise SystemExit(f"--also {item!r}: expected SETTING=PATTERN")
        also[setting] = pattern
    print(table(load(args.folder, also)))


if __name__ == "__main__":
    main()
