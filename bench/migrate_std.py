"""Convert the spreads stored in committed result JSON files to sample standard deviations.

    PYTHONPATH=src python bench/migrate_std.py            # docs/**/*.json, in place
    PYTHONPATH=src python bench/migrate_std.py --check    # exit 1 if a file still needs it

Results written before the evaluator reported the sample standard deviation (ddof 1) hold
the population one (ddof 0), which understates the spread of n runs by sqrt(n / (n - 1))
(1.41x at 2 runs, 1.12x at 5). Every JSON object with a ``std`` key and no
``"std_ddof": 1`` is converted and marked with ``"std_ddof": 1``, so running this twice
changes nothing:

- where it stores the runs' ``accuracies``, ``std`` is recomputed from them (ddof 1);
- otherwise from its run count ``n`` (its ``runs`` key or, for the ``validation`` record
  of a ``bench/results.py`` cell, the file's ``config.evaluation.runs``):
  ``std * sqrt(n / (n - 1))``;
- one run has no spread: ``std`` is 0.0 (the tables then show the mean alone).

No experiment is rerun. Afterwards re-render the tables from the JSON:
``python bench/results.py --preset cpu-quick --render`` (and ``--preset cpu``) and
``python bench/tune.py --render``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from memdistill._io import atomic_write_json
from memdistill.evaluate import sample_std

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _runs(obj: dict[str, Any], path: str, root: dict[str, Any]) -> int | None:
    if isinstance(obj.get("runs"), int):
        return obj["runs"]
    config = root.get("config")
    if path == "validation" and isinstance(config, dict):
        return (config.get("evaluation") or {}).get("runs")
    return None


def migrate_object(obj: dict[str, Any], path: str, root: dict[str, Any]) -> bool:
    """Convert one object's ``std`` in place; ``True`` if it changed. Raises
    ``ValueError`` when neither the runs' accuracies nor their number is known."""
    if obj.get("std_ddof") == 1:
        return False
    accuracies = obj.get("accuracies")
    if isinstance(accuracies, list) and accuracies:
        obj["std"] = sample_std(accuracies)
    else:
        n = _runs(obj, path, root)
        if n is None:
            raise ValueError(f"{path or '(top level)'}: a std without accuracies or a run count")
        obj["std"] = float(obj["std"]) * math.sqrt(n / (n - 1)) if n >= 2 else 0.0
    obj["std_ddof"] = 1
    return True


def migrate(tree: Any, root: dict[str, Any] | None = None, path: str = "") -> int:
    """Convert every object with a ``std`` in ``tree`` (in place); the number converted."""
    root = tree if root is None else root
    changed = 0
    if isinstance(tree, dict):
        if "std" in tree and isinstance(tree["std"], (int, float)):
            changed += migrate_object(tree, path, root)
        for key, value in tree.items():
            changed += migrate(value, root, f"{path}.{key}" if path else key)
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            changed += migrate(value, root, f"{path}[{i}]")
    return changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="JSON files or folders (default: docs/)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file needs migrating")
    args = p.parse_args(argv)
    files: list[Path] = []
    for item in [Path(x) for x in args.paths] or [DOCS]:
        files += sorted(item.rglob("*.json")) if item.is_dir() else [item]
    pending = 0
    for f in files:
        tree = json.loads(f.read_text())
        try:
            n = migrate(tree)
        except ValueError as exc:
            print(f"{f}: {exc}", file=sys.stderr)
            return 2
        if n:
            pending += 1
            print(f"{f}: {n} spread(s) {'to convert' if args.check else 'converted'}")
            if not args.check:
                atomic_write_json(f, tree)
    return 1 if args.check and pending else 0


if __name__ == "__main__":
    raise SystemExit(main())
