"""The targets of the distillation issue, measured as a user would: the CLI end to end.

For each cell (preset, dataset, budget): ``memdistill distill`` with the preset, then
``memdistill evaluate FILE --width 128 --runs 5`` (the reference ConvNet-3 width; 300
epochs; the test split), which retrains the memory, its own starting point (rebuilt
from the file), a random real subset and a herding subset at the run's budget, each 5
times. The table puts the memory beside those references and the target.

    python bench/targets.py --cells cpu-quick.mnist.1 cpu-quick.fashion-mnist.1
    python bench/targets.py --render          # only rebuild the table from the JSON

Each cell writes ``docs/bench/targets/<cell>.json`` (the distillation's config and
metrics, its wall seconds, the evaluation's JSON); memory files go to
``outputs/targets/`` (not committed). Cells already there are skipped unless ``--force``.
``--threads`` sets the torch threads of both commands (the preset limits are stated for
2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOCS, machine, replace_block, today  # noqa: E402

from memdistill._io import atomic_write_json  # noqa: E402
from memdistill.memory import load_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = DOCS / "bench" / "targets"
MEMORIES = ROOT / "outputs" / "targets"
# (preset, dataset, budget) -> the target test accuracy (%)
TARGETS = {("cpu-quick", "mnist", 1): 92.0, ("cpu-quick", "fashion-mnist", 1): 75.0,
           ("cpu", "mnist", 1): 97.0, ("cpu", "fashion-mnist", 1): 85.0,
           ("cpu", "mnist", 10): 98.5, ("cpu", "fashion-mnist", 10): 87.0,
           ("cpu-quick", "mnist", 10): None, ("cpu-quick", "fashion-mnist", 10): None}
REFERENCES = ("starting_point", "random_real", "herding_real")


def parse_cell(name: str) -> tuple[str, str, float]:
    preset, rest = name.split(".", 1)
    dataset, budget = rest.rsplit(".", 1)
    if (preset, dataset, float(budget)) not in TARGETS:
        raise SystemExit(f"unknown cell {name!r}; valid: "
                         + ", ".join(f"{p}.{d}.{b:g}" for p, d, b in TARGETS))
    return preset, dataset, float(budget)


def _run(argv: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "memdistill", *argv, "--no-progress"], check=True, env=env)
    return time.perf_counter() - t0


def run_cell(name: str, args) -> dict[str, Any]:
    preset, dataset, budget = parse_cell(name)
    MEMORIES.mkdir(parents=True, exist_ok=True)
    mem, ev = MEMORIES / f"{name}.mem.safetensors", MEMORIES / f"{name}.eval.json"
    distill = ["distill", "--dataset", dataset, "--budget-ipc", f"{budget:g}", "--preset", preset,
               "--seed", str(args.seed), "--out", str(mem)]
    evaluate = ["evaluate", str(mem), "--width", "128", "--runs", str(args.runs), "--out", str(ev)]
    config_file = Path(f"{mem.with_suffix('')}.config.json")
    reused = args.reuse_memory and mem.exists() and config_file.exists()
    if reused:  # an earlier run of the same distill command (e.g. one whose evaluation was cut short)
        seed = json.loads(config_file.read_text()).get("seed")
        if seed != args.seed:
            raise SystemExit(f"{mem} was distilled with seed {seed}, not {args.seed}: drop --reuse-memory")
        distill_wall = _recorded_distill_seconds(mem)
        print(f"{name}: reusing {mem} (distilled in {distill_wall:.0f} s by its own record)", flush=True)
    else:
        distill_wall = _run(distill, args.threads)
    eval_wall = _run(evaluate, args.threads)
    config = json.loads(config_file.read_text())
    return {"reused_memory": reused, "cell": name, "preset": preset, "dataset": dataset, "budget_ipc": budget, "seed": args.seed,
            "target": TARGETS[(preset, dataset, budget)], "config": config,
            "distill_wall_seconds": distill_wall, "evaluate_wall_seconds": eval_wall,
            "evaluation": json.loads(ev.read_text()), "threads": args.threads, "machine": machine(),
            "date": today(), "commands": ["memdistill " + " ".join(distill), "memdistill " + " ".join(evaluate)]}


def _recorded_distill_seconds(mem: Path) -> float:
    """The distillation seconds a memory file records (``metrics.distill_seconds_this_session``)."""
    seconds = (load_memory(mem).meta.get("metrics") or {}).get("distill_seconds_this_session")
    if seconds is None:
        raise SystemExit(f"{mem} records no distillation seconds: rerun without --reuse-memory")
    return float(seconds)


def _acc(res: dict[str, Any]) -> str:
    if len(res.get("accuracies", [None, None])) < 2:  # one run has no spread (its std is 0 by convention, not a measurement)
        return f"{100 * res['mean']:.2f}"
    return f"{100 * res['mean']:.2f} ± {100 * res['std']:.2f}"


def row(cell: dict[str, Any]) -> str:
    res = cell["evaluation"]["results"]["convnet"]
    mem = 100 * res["memory"]["mean"]
    start = 100 * res["starting_point"]["mean"] if "starting_point" in res else float("nan")
    herd = 100 * res["herding_real"]["mean"]
    target = cell["target"]
    verdict = "-" if target is None else ("met" if mem >= target else f"not met ({mem - target:+.2f})")
    gains = (f"{mem - start:+.2f} / {mem - herd:+.2f}; "
             + ("ok" if mem - start >= 3 and mem > herd else "**fails the 3-point / herding rule**"))
    refs = " | ".join(_acc(res[r]) if r in res else "-" for r in REFERENCES)
    steps = cell.get("config", {}).get("outer", {}).get("iterations", "-")  # the preset's count when the cell ran
    return (f"| `{cell['preset']}` | {cell['dataset']} | {cell['budget_ipc']:g} | {steps} | {_acc(res['memory'])} | {refs} | "
            f"{gains} | {'-' if target is None else f'{target:g}'} | {verdict} | "
            f"{len(res['memory']['accuracies'])} | {cell['distill_wall_seconds']:.0f}"
            f"{' (reused file)' if cell.get('reused_memory') else ''} | "
            f"{cell['evaluate_wall_seconds']:.0f} | {cell['threads']} |")


def render(doc: Path) -> None:
    cells = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    if not cells:
        return
    lines = ["Test split, `memdistill evaluate FILE --width 128 --runs R` (ConvNet-3 width 128, 300 epochs, "
             "no augmentation unless the file records one); mean ± sample std (ddof 1) over the R runs of "
             "the row. Every reference is retrained by the same command with the same runs. Reproduce a "
             "row: `python bench/targets.py --cells PRESET.DATASET.BUDGET --runs R --threads N --force` "
             "(each cell's JSON in docs/bench/targets/ holds its two CLI commands).", "",
             "| preset | dataset | budget | outer steps | memory | its starting point | random real | herding real | "
             "memory - start / - herding | target | | runs R | distill s | evaluate s | threads |",
             "|" + "---|" * 15]
    lines += [row(c) for c in cells]
    if any(c.get("reused_memory") for c in cells):
        lines += ["", "(reused file): the cell evaluated the memory an earlier run of its distill command left "
                  "(`--reuse-memory`); its distill seconds are that file's own record."]
    lines += ["", "Machines and dates: " + "; ".join(sorted({f"{c['machine']}, {c['date']}" for c in cells})) + "."]
    replace_block(doc, "targets", "\n".join(lines), "Targets: the CLI end to end at width 128")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="*", default=[], help="PRESET.DATASET.BUDGET, e.g. cpu-quick.mnist.1")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--force", action="store_true")
    p.add_argument("--reuse-memory", action="store_true",
                   help="evaluate the memory file an earlier run of the cell left in outputs/targets/ instead of "
                        "distilling again (its seconds are the file's own record)")
    p.add_argument("--render", action="store_true", help="only rebuild the table")
    p.add_argument("--doc", type=Path, default=DOCS / "RESULTS.md")
    args = p.parse_args(argv)
    for name in [] if args.render else args.cells:
        parse_cell(name)
        out = OUT / f"{name}.json"
        if out.exists() and not args.force:
            print(f"{name}: already measured ({out}); --force reruns it")
            continue
        atomic_write_json(out, run_cell(name, args))
        print(f"wrote {out}", flush=True)
    render(args.doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
