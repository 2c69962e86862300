"""Two meta-gradient engines side by side in one run: the engine of a landed commit
(``--baseline``, by default ``HEAD``) against the working tree's, each cell in its own
fresh process, the two taking turns, so that both see the same machine load.

Cells: issue 13's reference configuration at the field's geometry (``paper`` protocol,
ConvNet-3 of ``--width``, instance norm, 32 x 32 maps from 28 x 28 MNIST; ``bases`` K = 16,
ds = 2; 10 recalled examples per class per inner step; 640 real images), checkpointed
unroll of T inner steps, for each T of ``--steps``. Each process reports the fastest of
``--iterations`` outer steps and its peak resident memory; each engine runs ``--rounds``
processes per T, alternating which goes first. ``--candidate-set``/``--baseline-set``
add settings to one side only, e.g. the opt-in bfloat16 inner network:

    python bench/engine_compare.py --steps 10,30,150 --width 128 --rounds 2 \\
        --candidate-set inner.precision=bfloat16

``--threads N`` gives every worker N torch threads (default 1; each worker runs alone).
``--candidate-env``/``--baseline-env NAME=VALUE`` set an environment variable in one side's
worker processes only (for example a glibc ``MALLOC_*`` tunable).

The baseline's ``src/`` is exported with ``git archive`` into a temporary folder and put
first on ``PYTHONPATH``; each worker reports which ``memdistill`` it imported, and the
run stops if it is not the intended one. Writes docs/bench/engine_compare[_TAG].json and the
``engine-compare[-TAG]`` block of docs/BENCHMARKS.md (``--out``/``--doc`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def export_src(ref: str, dest: Path) -> str:
    """``ref``'s ``src/`` under ``dest``; returns the commit it resolved to."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "src"], check=True,
                         capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    return commit


def _pairs(items: list[str], what: str, form: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} must be {form}, got {item!r}")
        pairs.append((key, value))
    return pairs


def parse_sets(items: list[str]) -> dict:
    out = {}
    for key, value in _pairs(items, "a setting", "KEY=VALUE"):
        try:
            out[key] = json.loads(value)  # numbers, true/false, lists
        except json.JSONDecodeError:
            out[key] = value  # a name such as bfloat16
    return out


def parse_env(items: list[str]) -> dict[str, str]:
    return dict(_pairs(items, "an environment variable", "NAME=VALUE"))


def run_cell(src: Path, steps: int, args, sets: dict, extra_env: dict[str, str]) -> dict:
    cmd = [sys.executable, str(HERE / "meta_gradient.py"), "--cell", f"checkpointed:{steps}:1", "--width",
           str(args.width), "--iterations", str(args.iterations), "--cell-sets", json.dumps(sets)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), **extra_env,
           "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"cell T={steps} with {src} failed:\n{proc.stderr.strip()[-2000:]}")
    cell = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(cell["memdistill"]).resolve() != (src / "memdistill").resolve():
        raise SystemExit(f"the worker imported memdistill from {cell['memdistill']}, not from {src}")
    return cell


def summary(cells: list[dict], name: str) -> dict:
    secs = [c["seconds_per_iteration"] for c in cells]
    return {f"{name}_seconds": secs, f"{name}_median_seconds": statistics.median(secs),
            f"{name}_peak_rss_gb": max(c["peak_rss_gb"] for c in cells),
            f"{name}_threads": sorted({c["threads"] for c in cells})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default="HEAD", help="a git commit, branch or tag (default HEAD)")
    p.add_argument("--steps", default="10,30,150")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2, help="processes per engine and T")
    p.add_argument("--iterations", type=int, default=1, help="outer steps per process (the fastest counts)")
    p.add_argument("--candidate-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--baseline-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--candidate-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable of the candidate's worker processes only (e.g. a glibc "
                        "MALLOC_* tunable)")
    p.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each worker process (default 1)")
    p.add_argument("--tag", default="", help="a separate JSON and doc block (engine_compare_TAG)")
    p.add_argument("--out", default=None)
    p.add_argument("--doc", default=None)
    args = p.parse_args(argv)
    from _report import DOCS, machine, replace_block, today
    from meta_gradient import conv_rate, flops_per_iteration

    sets = {"baseline": parse_sets(args.baseline_set), "candidate": parse_sets(args.candidate_set)}
    envs = {"baseline": parse_env(args.baseline_env), "candidate": parse_env(args.candidate_env)}
    dirty = bool(git("status", "--porcelain", "--", "src"))
    with tempfile.TemporaryDirectory(prefix="memdistill-baseline-") as tmp:
        commit = export_src(args.baseline, Path(tmp))
        srcs = {"baseline": Path(tmp) / "src", "candidate": ROOT / "src"}
        rows = []
        for T in (int(s) for s in args.steps.split(",")):
            cells: dict[str, list[dict]] = {"baseline": [], "candidate": []}
            for r in range(args.rounds):
                for name in (("baseline", "candidate") if r % 2 == 0 else ("candidate", "baseline")):
                    cells[name].append(run_cell(srcs[name], T, args, sets[name], envs[name]))
            row = {"steps": T, **summary(cells["baseline"], "baseline"), **summary(cells["candidate"], "candidate")}
            row["speedup"] = row["baseline_median_seconds"] / row["candidate_median_seconds"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    torch.set_num_threads(args.threads)
    rate = conv_rate(args.threads)
    const, per_step = flops_per_iteration(args.width)
    command = "python bench/engine_compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    res = {"date": today(), "machine": machine(), "command": command, "threads": args.threads, "baseline_commit": commit,
           "candidate_commit": git("rev-parse", "HEAD"), "candidate_src_uncommitted_changes": dirty,
           "sets": sets, "env": envs, "conv_gflops": rate, "gflop_per_inner_step": per_step / 1e9, "rows": rows}
    suffix = f"_{args.tag}" if args.tag else ""
    out = Path(args.out) if args.out else DOCS / "bench" / f"engine_compare{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    table = ["| T | baseline s / outer step | candidate s / outer step | speed-up | peak RSS GB (baseline / candidate) "
             "| fraction of the conv rate (baseline / candidate) |", "|---|---|---|---|---|---|"]
    for r in rows:
        gflop = (const + r["steps"] * per_step) / 1e9
        frac = [gflop / r[f"{n}_median_seconds"] / rate for n in ("baseline", "candidate")]
        table.append(f"| {r['steps']} | {r['baseline_median_seconds']:.2f} | {r['candidate_median_seconds']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['baseline_peak_rss_gb']:.2f} / {r['candidate_peak_rss_gb']:.2f} | "
                     f"{frac[0]:.0%} / {frac[1]:.0%} |")
    desc = lambda name: ", ".join([f"{k}={v}" for k, v in sets[name].items()]  # noqa: E731
                                  + [f"environment {k}={v}" for k, v in envs[name].items()]) or "default settings"
    body = "\n".join([
        f"Command: `{command}`  ", f"Machine: {res['machine']}  ",
        f"Date: {res['date']}. Baseline: commit `{commit[:10]}`, {desc('baseline')}. Candidate: the working tree "
        f"at `{res['candidate_commit'][:10]}`{' with uncommitted changes in src/' if dirty else ''}, "
        f"{desc('candidate')}. Median over {args.rounds} processes per engine and T (fastest of {args.iterations} "
        f"outer step(s) each), the engines taking turns; ConvNet-3 width {args.width}, 32 x 32 maps. Conv rate: "
        f"{rate:.0f} GFLOP/s measured in the same run; {per_step / 1e9:.1f} GFLOP per inner step.",
        "", *table, "", f"Raw numbers: `{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}`."])
    replace_block(Path(args.doc) if args.doc else DOCS / "BENCHMARKS.md", "engine-compare" + suffix.replace("_", "-"),
                  body, "Meta-gradient engines side by side: a landed commit against the working tree"
                  + (f" ({args.tag})" if args.tag else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
