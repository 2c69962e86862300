"""Time-to-quality curves: validation accuracy against distillation wall seconds.

One run per dataset and budget compares ways of distilling the same starting point:

- ``fresh``: fresh-network unrolls of ``inner.steps`` steps, as the preset had them
  before the model pool (:data:`FRESH`);
- ``pool``: a model pool (``outer.pool_*``, see :mod:`memdistill.distill.pool`; :data:`POOL`);
- ``labels``: learned labels (``memory.learned_labels``);
- ``pool+labels``: both.

The methods run interleaved, one time slice each in turn (each slice resumes the
method's checkpoint, bit-identically), so a busy machine slows them alike. Time is the
sum of the outer steps' own seconds (evaluations excluded). After every slice each
memory is evaluated on the validation split (carved from the training set: the test
split is never read), with the run's evaluator; the starting point is evaluated once per
distinct memory and evaluator setting (once in all when no method changes ``memory.*`` or
``evaluation.*``) and drawn as its own line, and each method is read against its own.
A method with ``outer.average`` delivers the moving average of its memory; its last
iterate (the path the same method takes without averaging) is evaluated beside it as the
curve ``NAME/last``.

    python bench/curves.py --dataset mnist --budget-ipc 1 --seconds 600 --slices 5

writes ``docs/bench/curves_<dataset>_b<budget>.json`` (``..._<preset>.json`` for a preset
other than ``cpu-quick``), a PNG plot in ``docs/img/`` and
the table in ``docs/RESULTS.md`` (``--render`` rebuilds plots and tables from the JSON).

To use both cores, run one method per process (``--only '' --method NAME:...``, each
pinned to its own core, ``--no-herding`` on all but one), keep the JSONs under
``docs/bench/curves_parts/``, and join them with ``--merge PART.json ... --tag TAG``: one
JSON, plot and table, each method read against its own starting point.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOCS, machine, replace_block, today  # noqa: E402

from memdistill._io import atomic_write_text  # noqa: E402
from memdistill.config import resolve  # noqa: E402
from memdistill.data import load_dataset  # noqa: E402
from memdistill.distill import Distiller  # noqa: E402
from memdistill.evaluate import TrainingSet, evaluate  # noqa: E402
from memdistill.evaluate.selection import select_subset  # noqa: E402

OUT = DOCS / "bench"
IMG = DOCS / "img"
LABELS = {"memory.learned_labels": True}
# fresh-network unrolls as the presets had them before the pool (``inner.steps``, outer lr;
# at budget >= 10 the budget settings before the long horizon; for ``cpu`` at budget 1 the 32
# real images per class of its outer loss before 128): the preset's pool switched off
_FRESH10 = {"outer.pool_size": 0, "inner.steps": 40, "outer.lr": 0.001, "outer.window": 0,
            "outer.random_truncation": False}
FRESH = {("cpu-quick", 1): {"outer.pool_size": 0, "inner.steps": 10, "outer.lr": 0.01},
         ("cpu-quick", 10): _FRESH10,
         ("cpu", 1): {"outer.pool_size": 0, "inner.steps": 80, "outer.lr": 0.01, "outer.real_per_class": 32},
         ("cpu", 10): _FRESH10}
POOL = {"outer.pool_size": 4, "outer.pool_unroll": 20, "outer.pool_max_steps": 200, "outer.lr": 0.003}
METHOD_NAMES = ("fresh", "pool", "labels", "pool+labels")


def methods_of(preset: str, budget: float) -> dict[str, dict[str, Any]]:
    """Each method's settings over the preset: ``fresh`` as the preset was before the
    pool, ``pool`` the preset's pool (set here, so that the curves do not depend on what
    the preset's default is), learned labels on either."""
    fresh = FRESH[(preset, 10 if budget >= 10 else 1)]
    return {"fresh": fresh, "pool": POOL, "labels": {**fresh, **LABELS}, "pool+labels": {**POOL, **LABELS}}


def method_config(args, sets: dict[str, Any]):
    """The run's configuration: the preset at this dataset and budget, with the
    method's settings, evaluating only when asked (never by the loop itself)."""
    flags = {"outer.iterations": 10**7, "evaluation.every": 0, "evaluation.at_start": False,
             "evaluation.runs": args.eval_runs, "checkpoint_every": 1, "seed": args.seed}
    extra = [tuple(s.split("=", 1)) for s in args.set or []]
    return resolve(args.preset, args.dataset, args.budget_ipc, flags={**flags, **sets}, sets=extra,
                   flags_source="bench/curves.py")


def _slice(d: Distiller, ckpt: Path, seconds: float):
    """Run ``d`` from its checkpoint for about ``seconds``: (outer-step seconds, iterations
    done, the memory, its last iterate: ``None`` unless the method averages)."""
    res = d.run(checkpoint=ckpt, resume=ckpt.exists(), time_limit=max(seconds, 1e-9))
    return sum(r["seconds"] for r in res.history), res.iterations, res.memory, res.last_iterate


def herding_reference(d: Distiller, budget_ipc: float) -> dict[str, Any]:
    """Herding at equal storage, judged like the memories: ``budget_ipc`` real images per
    class herded from the distiller's own training part (the validation part is never a
    candidate), retrained by the run's evaluator and scored on the same validation split."""
    ec = d.config.evaluation
    ipc = max(1, int(budget_ipc))
    idx = select_subset(d.train, ipc, "herding")
    res = evaluate(TrainingSet(d.train.subset(idx), device=d.device), d.val, ec, runs=ec.runs,
                   seed=d.config.seed, device=d.device)
    return {"mean": res.mean, "std": res.std, "std_ddof": 1, "images_per_class": ipc}


def _value(text: str) -> Any:
    """A ``--method`` value as JSON reads it (numbers, true/false), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_methods(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``--method NAME:KEY=VALUE,KEY=VALUE`` arguments as ``{NAME: {KEY: VALUE}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or ():
        name, sep, body = item.partition(":")
        name = name.strip()
        pairs = [kv.split("=", 1) for kv in body.split(",") if kv.strip()] if sep else []
        if not name or not sep or any(len(kv) != 2 for kv in pairs):
            raise SystemExit(f"--method expects NAME:KEY=VALUE[,KEY=VALUE...] "
                             f"(e.g. fresh-mb4:outer.pool_size=0,outer.meta_batch=4), got {item!r}")
        if name in METHOD_NAMES:
            raise SystemExit(f"--method name {name!r} is a built-in method ({', '.join(METHOD_NAMES)}); pick another")
        out[name] = {k.strip(): _value(v.strip()) for k, v in pairs}
    return out


def run_curves(args) -> dict[str, Any]:
    train = load_dataset(args.dataset, "train", root=args.root)
    custom = parse_methods(args.method)
    settings = {**methods_of(args.preset, args.budget_ipc), **custom}
    methods = [m for m in (args.only.split(",") if args.only is not None else METHOD_NAMES) if m] + list(custom)
    unknown = [m for m in methods if m not in settings]
    if unknown:
        raise SystemExit(f"--only: unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHOD_NAMES)}")
    distillers = {m: Distiller(method_config(args, settings[m]), train) for m in methods}
    first = distillers[methods[0]]
    starts = starting_points(distillers)
    herding = None if args.no_herding else herding_reference(first, args.budget_ipc)
    # a method with outer.average delivers the moving average; its last iterate (the memory
    # the same run would deliver without averaging: averaging never changes the path) is
    # evaluated beside it as the curve "<method>/last"
    averaged = [m for m in methods if distillers[m].config.outer.average]
    curves: dict[str, list[dict[str, Any]]] = {}
    for m in methods:
        curves[m] = []
        if m in averaged:
            curves[f"{m}/last"] = []
    spent = {m: 0.0 for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(1, args.slices + 1):
            target = args.seconds * k / args.slices
            for m, d in distillers.items():
                ckpt = Path(tmp) / f"{m.replace('+', '_')}.ckpt"
                done, iterations, memory, last = _slice(d, ckpt, target - spent[m])
                spent[m] += done
                for name, mem in ((m, memory), (f"{m}/last", last)):
                    if name not in curves:
                        continue
                    ev = d.evaluate_memory(mem)
                    curves[name].append({"seconds": spent[m], "iterations": iterations, "mean": ev["mean"],
                                         "std": ev["std"], "std_ddof": 1})
                    print(f"{name:12s} slice {k}: {spent[m]:7.1f} s, {iterations:4d} its, "
                          f"val {100 * ev['mean']:.2f}%", flush=True)
    result = {"dataset": args.dataset, "budget_ipc": args.budget_ipc, "preset": args.preset, "seed": args.seed,
              "seconds": args.seconds, "slices": args.slices, "eval_runs": args.eval_runs,
              "split": starts[methods[0]]["split"], "methods": {**{m: settings[m] for m in methods},
                                                                 **{f"{m}/last": {**settings[m], "last_iterate": True}
                                                                    for m in averaged}},
              "extra_sets": args.set or [], "start": starts[methods[0]],
              "starts": {**starts, **{f"{m}/last": starts[m] for m in averaged}}, "curves": curves,
              "machine": machine(), "date": today(),
              "torch_threads": torch.get_num_threads(), "command": "python bench/curves.py " + shlex.join(sys.argv[1:])}
    if herding is not None:
        result["herding"] = herding
    return result


def starting_points(distillers: dict[str, Distiller]) -> dict[str, dict[str, Any]]:
    """Each method's starting point judged by its evaluator, evaluated once per distinct
    ``memory`` and ``evaluation`` configuration (methods that change neither share one)."""
    done: dict[str, dict[str, Any]] = {}
    out: dict[str, dict[str, Any]] = {}
    for m, d in distillers.items():
        key = json.dumps([dataclasses.asdict(d.config.memory), dataclasses.asdict(d.config.evaluation)],
                         sort_keys=True, default=str)
        if key not in done:
            ev = d.evaluate_memory(d.new_memory())
            done[key] = {"split": ev["split"], "mean": ev["mean"], "std": ev["std"], "std_ddof": 1}
        out[m] = done[key]
    return out


def _start_entry(result: dict[str, Any], method: str) -> dict[str, Any]:
    """``method``'s starting point: its own where the JSON records one per method (JSONs
    written before that share ``start``)."""
    return result.get("starts", {}).get(method, result["start"])


def start_of(result: dict[str, Any], method: str) -> float:
    """``method``'s starting accuracy in %."""
    return 100 * _start_entry(result, method)["mean"]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    own = len({start_of(result, m) for m in result["curves"]}) > 1
    for m, points in result["curves"].items():
        start = start_of(result, m)
        xs = [0.0] + [p["seconds"] for p in points]
        ys = [start] + [100 * p["mean"] for p in points]
        (line,) = ax.plot(xs, ys, marker="o", label=m)
        if own:
            ax.axhline(start, color=line.get_color(), linestyle="--", label=f"{m}: starting point")
    if not own:
        ax.axhline(start_of(result, next(iter(result["curves"]))), color="grey", linestyle="--",
                   label="starting point")
    if "herding" in result:
        ax.axhline(100 * result["herding"]["mean"], color="black", linestyle=":", label="herding (equal storage)")
    ax.set_xlabel("distillation wall seconds (outer steps only)")
    ax.set_ylabel(f"{result['split']} accuracy (%)")
    ax.set_title(f"{result['dataset']}, budget {result['budget_ipc']:g}, preset {result['preset']}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _herding_text(result: dict[str, Any]) -> str:
    if "herding" not in result:
        return ""
    h = result["herding"]
    return f", herding at equal storage ({h['images_per_class']} real images per class) **{100 * h['mean']:.2f}%**"


def _command_text(result: dict[str, Any]) -> str:
    if "commands" not in result:
        return f"Command: `{result['command']}`."
    runs = "; ".join(f"`{c}`" for c in result["commands"])
    return f"Commands (one process per method; merged by `{result['merge_command']}`): {runs}."


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of the same protocol that each ran other methods (one process
    per method, so that they can run side by side on separate cores): their curves, each
    method's own starting point, and herding where one of them measured it."""
    same = ("dataset", "budget_ipc", "preset", "seed", "seconds", "slices", "eval_runs", "split", "extra_sets",
            "torch_threads")
    first = results[0]
    for key in same:
        values = {json.dumps(r.get(key), sort_keys=True) for r in results}
        if len(values) > 1:
            raise SystemExit(f"--merge: the runs differ in {key!r} ({', '.join(sorted(values))}); "
                             f"only runs of the same protocol can be merged")
    names = [m for r in results for m in r["curves"]]
    if len(names) != len(set(names)):
        raise SystemExit(f"--merge: a method name appears in more than one run ({', '.join(names)}); "
                         f"give them other names (--method NAME:...)")
    herding = [r["herding"] for r in results if "herding" in r]
    if len({json.dumps(h, sort_keys=True) for h in herding}) > 1:
        raise SystemExit("--merge: the runs measured different herding references")
    out = {k: first[k] for k in same}
    out["methods"] = {m: s for r in results for m, s in r["methods"].items()}
    out["curves"] = {m: c for r in results for m, c in r["curves"].items()}
    out["starts"] = {m: _start_entry(r, m) for r in results for m in r["curves"]}
    out["start"] = out["starts"][names[0]]
    if herding:
        out["herding"] = herding[0]
    out["machine"] = " / ".join(dict.fromkeys(r["machine"] for r in results))
    out["date"] = " / ".join(dict.fromkeys(r["date"] for r in results))
    out["commands"] = [r["command"] for r in results]
    return out


def markdown(result: dict[str, Any], image: str) -> str:
    starts = {m: start_of(result, m) for m in result["curves"]}
    if len(set(starts.values())) > 1:
        start_text = "starting points " + ", ".join(f"{m} **{v:.2f}%**" for m, v in starts.items())
    else:
        start_text = f"starting point **{next(iter(starts.values())):.2f}%**"
    lines = [f"{result['dataset']}, budget {result['budget_ipc']:g}, preset `{result['preset']}`, seed "
             f"{result['seed']}; {result['split']} split; {start_text}{_herding_text(result)}. "
             f"Machine: {result['machine']}; {result['date']}. {_command_text(result)}", "",
             "| method | settings | seconds | outer steps | accuracy | vs starting point |", "|---|---|---|---|---|---|"]
    for m, points in result["curves"].items():
        settings = ", ".join(f"{k}={v}" for k, v in result["methods"][m].items()) or "preset"
        for p in points:
            lines.append(f"| {m} | {settings} | {p['seconds']:.0f} | {p['iterations']} | {100 * p['mean']:.2f} | "
                         f"{100 * p['mean'] - starts[m]:+.2f} |")
    lines += ["", f"![curves]({image})"]
    return "\n".join(lines)


def render(json_path: Path, doc: Path) -> None:
    result = json.loads(json_path.read_text())
    name = json_path.stem
    png = IMG / f"{name}.png"
    plot(result, png)
    replace_block(doc, name, markdown(result, f"img/{png.name}"),
                  f"Time to quality: {result['dataset']}, budget {result['budget_ipc']:g}, preset {result['preset']}")


def parser() -> argparse.ArgumentParser:
    """The command line (also read back by the tests from a merged file's ``merge_command``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--budget-ipc", type=float, default=1.0)
    p.add_argument("--preset", default="cpu-quick")
    p.add_argument("--seconds", type=float, default=600.0, help="distillation seconds per method")
    p.add_argument("--slices", type=int, default=5, help="evaluations per method (one per time slice)")
    p.add_argument("--eval-runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help=f"comma-separated methods; default all of {', '.join(METHOD_NAMES)}")
    p.add_argument("--set", action="append", help="KEY=VALUE for every method (e.g. outer.lr=0.001)")
    p.add_argument("--method", action="append",
                   help="an extra method NAME:KEY=VALUE[,KEY=VALUE...] over the preset, run after the --only ones "
                        "(e.g. fresh-mb4:outer.pool_size=0,inner.steps=40,outer.lr=0.001,outer.meta_batch=4)")
    p.add_argument("--no-herding", action="store_true",
                   help="skip the herding reference (e.g. when another run of the same evaluator has it)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--root", default=None)
    p.add_argument("--tag", default="", help="a separate JSON, plot and doc block (curves_..._TAG)")
    p.add_argument("--doc", type=Path, default=DOCS / "RESULTS.md")
    p.add_argument("--render", type=Path, help="only re-plot and re-table this JSON")
    p.add_argument("--merge", type=Path, nargs="+",
                   help="merge these JSONs (runs of the same protocol, other methods each) into one, "
                        "named by --dataset, --budget-ipc, --preset and --tag, and render it")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.render:
        render(args.render, args.doc)
        return 0
    suffix = ("" if args.preset == "cpu-quick" else f"_{args.preset}") + (f"_{args.tag}" if args.tag else "")
    out = OUT / f"curves_{args.dataset}_b{args.budget_ipc:g}{suffix}.json"
    if args.merge:
        result = merge([json.loads(f.read_text()) for f in args.merge])
        if (result["dataset"], result["budget_ipc"], result["preset"]) != (args.dataset, args.budget_ipc, args.preset):
            raise SystemExit(f"--merge: the runs are {result['dataset']}, budget {result['budget_ipc']:g}, preset "
                             f"{result['preset']}; pass the same --dataset, --budget-ipc and --preset")
        result["merge_command"] = "python bench/curves.py " + shlex.join(sys.argv[1:])
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=1))
        render(out, args.doc)
        print(f"wrote {out}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_curves(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1))
    render(out, args.doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
