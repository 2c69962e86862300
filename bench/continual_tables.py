"""Print the Markdown tables of docs/CONTINUAL.md from the JSON files the runs wrote.

    PYTHONPATH=src python bench/continual_tables.py docs/bench/continual_*.json
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from memdistill.continual import ContinualResult, format_table


def section(path: Path) -> str:
    d = json.loads(path.read_text())
    results = []
    for r in d["results"]:
        fields = {k: r[k] for k in ("benchmark", "strategy", "budget_ipc", "training", "seen_accuracy",
                                    "per_task_accuracy", "floats_stored", "budget_floats", "task_seconds",
                                    "task_info")}
        results.append(ContinualResult(**fields))
    minutes = sum(sum(r.task_seconds) for r in results) / 60
    cmd = "memdistill " + " ".join(shlex.quote(a) for a in d["argv"])
    return "\n".join([
        f"### {d['benchmark']}, budget {d['budget_ipc']:g} image(s) per class",
        "",
        f"`{cmd}`",
        "",
        f"Machine: {d['machine']}. Date: {d['date']}. Wall time of all strategies: {minutes:.1f} min.",
        f"Data: `{path}`; plot: `docs/img/{path.stem}.png`.",
        "",
        format_table(results),
        "",
        f"![{d['benchmark']} budget {d['budget_ipc']:g}](img/{path.stem}.png)",
        "",
    ])


if __name__ == "__main__":
    print("\n".join(section(Path(p)) for p in sys.argv[1:]))
