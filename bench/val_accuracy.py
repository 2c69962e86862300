"""Validation accuracy of memory files under the evaluator of the run that wrote each one.

    python bench/val_accuracy.py A.mem.safetensors B.mem.safetensors --runs 3 --out docs/bench/x.json

Each file's own configuration (its ``config`` record) gives the dataset, the validation
split (``evaluation.val_fraction`` of the training split, drawn from its seed) and the
evaluator (``evaluation.*``: network, width, epochs, augmentation); ``--runs`` retrains
that many networks. This is the number ``memdistill distill`` prints at its end, for any
file afterwards: e.g. a moving average (``outer.average``) beside its last iterate
(``.last.safetensors``), compared under one evaluator. The test split is not read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from memdistill._io import atomic_write_json  # noqa: E402
from memdistill._machine import machine_info  # noqa: E402
from memdistill.config import from_record  # noqa: E402
from memdistill.data import load_dataset  # noqa: E402
from memdistill.distill import Distiller  # noqa: E402
from memdistill.memory.file import load_memory  # noqa: E402


def validation_accuracy(path: str | Path, runs: int, root: str | None = None) -> dict[str, Any]:
    mf = load_memory(path)
    cfg = from_record(mf.meta["config"])
    cfg.evaluation.runs = runs
    distiller = Distiller(cfg, load_dataset(cfg.dataset, "train", root=root))
    return {**distiller.evaluate_memory(mf.memory), "runs": runs, "std_ddof": 1, "evaluation": vars(cfg.evaluation)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--runs", type=int, default=3, help="networks retrained per file (default 3)")
    ap.add_argument("--root", help="data folder (default: $MEMDISTILL_DATA, else ./data)")
    ap.add_argument("--out", help="JSON of every file's result")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"command": "python bench/val_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
                           "machine": machine_info(), "results": {}}
    for f in args.files:
        res = validation_accuracy(f, args.runs, args.root)
        out["results"][Path(f).name] = res
        print(f"{f}: {100 * res['mean']:.2f} ± {100 * res['std']:.2f}% ({args.runs} runs, {res['split']} split)",
              flush=True)
    if args.out:
        atomic_write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
