"""Choose distillation settings on the validation split only, at an equal wall-time budget.

    python bench/tune.py --dataset mnist --budget 1 --base cpu --seconds 300           # every candidate
    python bench/tune.py --dataset mnist --budget 1 --base cpu --seconds 300 --only T10
    python bench/tune.py --render                                                      # only the doc table

Each candidate is a preset (``--base``) with a few settings changed. It distills for
``--seconds`` of wall time (``Distiller.run(time_limit=...)``), so a cheaper inner loop
gets more outer iterations, which is the trade-off a time-limited preset has to make.
The memory is then retrained ``--eval-runs`` times on the validation split that the
distiller carved out of the training set (10%, fixed seed). The test split is never
read here. Each candidate writes ``docs/bench/tuning/<tag>/<candidate>.json``; ``--render``
rebuilds the table of ``docs/RESULTS.md`` (block ``tuning``) from those files only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from _report import DOCS, machine, replace_block, today  # noqa: E402
from memdistill._io import atomic_write_json  # noqa: E402
from memdistill.config import DistillConfig, base_schedule, config_to_dict, resolve  # noqa: E402
from memdistill.data import load_dataset  # noqa: E402
from memdistill.distill import Distiller  # noqa: E402
from memdistill.errors import MemdistillError  # noqa: E402
from memdistill.evaluate import TrainConfig, TrainingSet, evaluate, format_accuracy  # noqa: E402

OUT = DOCS / "bench" / "tuning"

# name -> (what it changes, overrides of the base preset)
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("the base preset as is", {}),
    # explicit, so that they mean the same whatever the base preset says today
    "T10": ("T = 10 inner steps", {"inner.steps": 10}),
    "T20": ("T = 20 inner steps", {"inner.steps": 20}),
    "T40": ("T = 40 inner steps", {"inner.steps": 40}),
    "T80": ("T = 80 inner steps", {"inner.steps": 80}),
    "lr0.03": ("T = 20, outer lr 0.03", {"inner.steps": 20, "outer.lr": 0.03}),
    "T40-lr0.03": ("T = 40, outer lr 0.03", {"inner.steps": 40, "outer.lr": 0.03}),
    "labels": ("T = 20, learned labels", {"inner.steps": 20, "memory.learned_labels": True}),
    # at budget 10, K = 16 bases leave 470 slots per class in a 16-dimensional image space
    "K64": ("64 bases", {"memory.num_bases": 64}),
    "K160": ("160 bases (29 slots per class at budget 10, as K = 16 at budget 1)", {"memory.num_bases": 160}),
    # the starting point itself (principal directions and least-squares addressing, no
    # distillation): what the outer loop has to improve on
    "K16-init": ("16 bases, no distillation", {"outer.iterations": 0}),
    "K64-init": ("64 bases, no distillation", {"memory.num_bases": 64, "outer.iterations": 0}),
    "K160-init": ("160 bases, no distillation", {"memory.num_bases": 160, "outer.iterations": 0}),
    "K64-lr0.001": ("64 bases, outer lr 0.001", {"memory.num_bases": 64, "outer.lr": 0.001}),
    "K160-lr0.001": ("160 bases, outer lr 0.001", {"memory.num_bases": 160, "outer.lr": 0.001}),
    "K64-T40": ("64 bases, T = 40", {"memory.num_bases": 64, "inner.steps": 40}),
    "K64-T40-lr0.001": ("64 bases, T = 40, outer lr 0.001",
                        {"memory.num_bases": 64, "inner.steps": 40, "outer.lr": 0.001}),
}


def candidate_config(name: str, args) -> DistillConfig:
    """The base preset with the candidate's changes. It starts from the preset's own K, T
    and outer lr at every budget (its budget-10 settings are what tuning chooses); the
    wall-time budget decides the iterations, unless the candidate fixes them."""
    flags = {**base_schedule(args.base), "outer.iterations": 1_000_000, "evaluation.every": 0,
             **CANDIDATES[name][1]}
    return resolve(args.base, args.dataset, args.budget, flags=flags, flags_source=f"candidate {name!r}")


def run_candidate(name: str, args) -> dict[str, Any]:
    change, overrides = CANDIDATES[name]
    cfg = candidate_config(name, args)
    train = load_dataset(args.dataset, "train", root=args.root)
    distiller = Distiller(cfg, train)
    t0 = time.perf_counter()
    result = distiller.run(progress=not args.no_progress, time_limit=args.seconds)
    seconds = time.perf_counter() - t0
    x, y = result.memory.recall()
    tc = TrainConfig.from_options(dataclasses.replace(cfg.evaluation, arch="convnet", width=args.eval_width,
                                                      epochs=args.eval_epochs))
    val = evaluate(TrainingSet(x, y), distiller.val, tc, runs=args.eval_runs, seed=cfg.seed,
                   progress=not args.no_progress)
    cfg.outer.iterations = result.iterations  # what actually ran
    return {"candidate": name, "change": change, "overrides": overrides, "base": args.base,
            "dataset": args.dataset, "budget": args.budget, "machine": machine(), "date": today(),
            "threads": torch.get_num_threads(), "seconds_budget": args.seconds, "distill_seconds": seconds,
            "iterations": result.iterations, "seconds_per_iteration": seconds / max(result.iterations, 1),
            "examples": int(x.shape[0]), "floats_stored": int(result.memory.floats_stored()),
            "eval": {"width": args.eval_width, "epochs": args.eval_epochs, "runs": args.eval_runs},
            "val": {"mean": val.mean, "std": val.std, "std_ddof": 1, "accuracies": list(val.accuracies)},
            "config": config_to_dict(cfg)}


def tuning_markdown(out_dir: Path = OUT) -> str:
    """The tables of every tag under ``out_dir``, from its JSON files only."""
    lines = ["Validation-split accuracy (%) of each candidate after the same wall-time budget of "
             "distillation; the test split is not read. Spreads are sample standard deviations (ddof 1) "
             "over the evaluation runs; a candidate evaluated once shows none. Reproduce one tag with the "
             "command in its row.", ""]
    for tag_dir in sorted(p for p in out_dir.glob("*") if p.is_dir()):
        rows = [json.loads(f.read_text()) for f in sorted(tag_dir.glob("*.json"))]
        if not rows:
            continue
        r0 = rows[0]
        lines += [f"#### {r0['dataset']}, budget {r0['budget']}, base preset `{r0['base']}`", "",
                  f"Reproduce: `python bench/tune.py --dataset {r0['dataset']} --budget {r0['budget']} "
                  f"--base {r0['base']} --only {','.join(r['candidate'] for r in rows)} "
                  f"--seconds {r0['seconds_budget']:g} --eval-epochs {r0['eval']['epochs']} "
                  f"--eval-runs {r0['eval']['runs']}`. Machine: {r0['machine']}; "
                  f"{', '.join(sorted({r['date'] for r in rows}))}. Retrained on ConvNet-3 width "
                  f"{r0['eval']['width']}, {r0['eval']['epochs']} epochs, {r0['eval']['runs']} runs.", "",
                  "| candidate | K bases | T inner steps | outer lr | learned labels | iterations in the budget "
                  "| s/iteration | val acc % (mean ± sample std) |",
                  "|---|---|---|---|---|---|---|---|"]
        if any("first_pad" not in r["config"]["inner"] for r in rows):
            lines += ["> Made before the ConvNet followed the field's geometry: inner and evaluation networks "
                      "padded the first convolution of these 1-channel images by 1 (maps 28/14/7/3), not 3 "
                      "(32/16/8/4, the default now); not rerun. `inner.first_pad=1` and "
                      "`evaluation.first_pad=1` give that network back.", ""]
        best = max(rows, key=lambda r: r["val"]["mean"])
        for r in sorted(rows, key=lambda r: -r["val"]["mean"]):
            acc = format_accuracy(r["val"]["mean"], r["val"]["std"], len(r["val"]["accuracies"]))
            if r is best:
                acc = f"**{acc}**"
            c = r["config"]  # what actually ran, whatever the preset says today
            ran = r["iterations"] > 0  # 0: the starting point itself, T and lr unused
            lines.append(f"| `{r['candidate']}` | {c['memory']['num_bases']} | "
                         f"{c['inner']['steps'] if ran else '-'} | {format(c['outer']['lr'], 'g') if ran else '-'} | "
                         f"{'yes' if c['memory']['learned_labels'] else 'no'} | "
                         f"{r['iterations'] if ran else '0 (starting point)'} | "
                         f"{format(r['seconds_per_iteration'], '.2f') if ran else '-'} | {acc} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--budget", type=int, default=1)
    p.add_argument("--base", default="cpu", help="the preset the candidates change")
    p.add_argument("--seconds", type=float, default=300.0, help="wall-time budget of each distillation")
    p.add_argument("--only", help=f"comma-separated candidates; default all of {', '.join(CANDIDATES)}")
    p.add_argument("--eval-width", type=int, default=32)
    p.add_argument("--eval-epochs", type=int, default=100)
    p.add_argument("--eval-runs", type=int, default=2)
    p.add_argument("--root", default=None)
    p.add_argument("--doc", type=Path, default=DOCS / "RESULTS.md")
    p.add_argument("--out-dir", type=Path, default=OUT, help="where the candidates' JSON files go")
    p.add_argument("--render", action="store_true", help="only rebuild the doc table from the JSON")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        if not args.render:
            names = [n.strip() for n in (args.only or ",".join(CANDIDATES)).split(",") if n.strip()]
            unknown = [n for n in names if n not in CANDIDATES]
            if unknown:
                p.error(f"unknown candidate(s) {', '.join(unknown)}; valid: {', '.join(CANDIDATES)}")
            tag = f"{args.dataset}.b{args.budget}.{args.base}"
            for name in names:
                rec = run_candidate(name, args)
                atomic_write_json(args.out_dir / tag / f"{name}.json", rec)
                print(f"[{name}] {rec['iterations']} iterations, val {100 * rec['val']['mean']:.2f}%", flush=True)
        replace_block(args.doc, "tuning", tuning_markdown(args.out_dir), "How the cpu preset was chosen")
    except MemdistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
