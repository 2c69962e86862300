"""Does flushing denormal floats to zero speed up the CPU outer step?

``torch.set_flush_denormal(True)`` makes the CPU treat subnormal floats as zero; where a
workload produces many of them (tiny gradients late in a long reverse pass), that can
be much faster. This measures it at the ``cpu`` preset's cell (MNIST, ``bases`` memory at
budget 1, ConvNet-3 width 32, T = 80 checkpointed unroll, 5 recalled and 128 real images per
class, the preset's ``keep_freed_memory``): one process per arm, the two arms taking turns
each round, the fastest of ``--iterations`` outer steps per process.

    python bench/flush_denormal.py --threads 2 --rounds 2 --out docs/bench/flush_denormal.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _report import machine, today  # noqa: E402

from memdistill._io import atomic_write_text  # noqa: E402

WORKER = r"""
import json, sys
import torch
sys.path.insert(0, sys.argv[4])
from meta_gradient import one_cell
flush, threads, iterations = sys.argv[1] == "1", int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
if flush and not torch.set_flush_denormal(True):
    raise SystemExit("this CPU cannot flush denormals (no SSE3)")
r = one_cell("checkpointed", 80, 1, 32, iterations, n_per_class=5, real_per_class=128,
             sets={"keep_freed_memory": True})
print(json.dumps({"flush_denormal": flush, "threads": threads,
                  "seconds_per_iteration": r["seconds_per_iteration"], "all_seconds": r["all_seconds"]}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    for name in ("threads", "rounds", "iterations"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    runs = []
    for r in range(args.rounds):
        for flush in (("0", "1") if r % 2 == 0 else ("1", "0")):
            out = subprocess.run([sys.executable, "-c", WORKER, flush, str(args.threads), str(args.iterations),
                                  str(HERE)], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                return out.returncode
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    mean = {f: sum(x["seconds_per_iteration"] for x in runs if x["flush_denormal"] == f) / args.rounds
            for f in (False, True)}
    result = {"machine": machine(), "date": today(), "threads": args.threads,
              "command": "python bench/flush_denormal.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "runs": runs, "mean_seconds_per_iteration": {"off": mean[False], "on": mean[True]},
              "speedup_on_over_off": mean[False] / mean[True]}
    print(f"seconds per outer step: off {mean[False]:.3f}, on {mean[True]:.3f}; "
          f"flush on is {mean[False] / mean[True]:.3f}x")
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
