"""How much two meta-gradients of the same memory agree: a diagnosis of outer-step noise.

From one starting memory, ``--unrolls`` independent meta-gradients (fresh inner networks,
different recalled slots and real batches: outer iterations 0, 1, 2, ...) are computed
without any outer update. Per memory tensor it prints the cosine similarity of each pair
and the fraction of elements whose sign agrees between the first two. Adam's step is close
to a sign step per element, so a sign agreement near 50% means its steps are mostly a
random walk (docs/RESULTS.md, "Budget 10: why the memory does not learn").

    python bench/gradient_agreement.py --budget-ipc 10 --set inner.steps=40
"""

from __future__ import annotations

import argparse
import itertools

import torch

from memdistill.config import parse_sets, resolve
from memdistill.data import load_dataset
from memdistill.distill import Distiller


def agreement(grads: list[list[torch.Tensor]], names: list[str]) -> dict[str, dict[str, list[float] | float]]:
    """Per tensor name: pairwise cosines of the flattened gradients and the first pair's
    fraction of elements with the same sign (among those both gradients touch)."""
    out = {}
    for k, name in enumerate(names):
        flat = [g[k].flatten().double() for g in grads]
        cos = [float(torch.nn.functional.cosine_similarity(flat[i], flat[j], dim=0))
               for i, j in itertools.combinations(range(len(flat)), 2)]
        both = (flat[0] != 0) & (flat[1] != 0)  # elements a short unroll left untouched do not count
        same = (flat[0].sign() == flat[1].sign()) & both
        out[name] = {"cosines": cos, "sign_agreement": float(same.sum() / both.sum().clamp(min=1)),
                     "norms": [float(f.norm()) for f in flat]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--budget-ipc", type=float, default=10.0)
    p.add_argument("--preset", default="cpu-quick")
    p.add_argument("--unrolls", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE over the preset")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.unrolls < 2:
        raise SystemExit("--unrolls must be >= 2 (agreement needs a pair)")
    torch.set_num_threads(args.threads)
    cfg = resolve(args.preset, args.dataset, args.budget_ipc, sets=parse_sets(args.set),
                  flags={"outer.iterations": args.unrolls, "evaluation.every": 0, "outer.pool_size": 0},
                  flags_source="bench/gradient_agreement.py")
    d = Distiller(cfg, load_dataset(args.dataset, "train"))
    memory = d.new_memory()
    grads = [d.meta_step(memory, it).grads for it in range(args.unrolls)]
    for name, r in agreement(grads, list(memory.names)).items():
        print(f"{args.dataset} budget {args.budget_ipc:g} {name}: slots/class {memory.slots}, cosines "
              f"{[round(c, 3) for c in r['cosines']]}, sign agreement {r['sign_agreement']:.3f}, "
              f"norms {[round(n, 4) for n in r['norms']]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
