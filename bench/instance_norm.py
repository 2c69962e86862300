"""One inner step's vector-Jacobian product through the ConvNet, with the instance norm
of ``models/_instance_norm.py`` against ``nn.GroupNorm(C, C)`` (autograd's own double
backward), interleaved in one process, plus a profile of each (the norm's share).

The step is what the checkpointed reverse pass does per inner step: the loss on a
recalled batch, its parameter gradient with ``create_graph=True``, an SGD update, and the
vector-Jacobian product of the new parameters with respect to the old ones and the batch.

    python bench/instance_norm.py --width 128 --batch 100 --repeats 5

Prints one JSON object (seconds per step, fastest of ``--repeats``, for each norm; the
speed-up; the profile's top operators for each).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memdistill.models import create_model, functional_forward  # noqa: E402
from memdistill.models._instance_norm import InstanceNorm2d  # noqa: E402


# autograd nodes of the norm's backward and double backward (their total includes what they call)
NORM_NODES = ("NativeGroupNormBackward0", "_InstanceNormBackward", "_InstanceNormBackwardBackward")


def build(width: int, plain: bool, seed: int = 0) -> nn.Module:
    model = create_model("convnet", 1, 10, 28, width=width, generator=torch.Generator().manual_seed(seed))
    if plain:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, InstanceNorm2d):
                    swap = nn.GroupNorm(child.num_channels, child.num_channels)
                    swap.load_state_dict(child.state_dict())
                    setattr(module, name, swap)
    return model


def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().requires_grad_() for p in model.parameters()]
    x = x.detach().requires_grad_()
    loss = F.cross_entropy(functional_forward(model, dict(zip(names, params)), x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    new = [p - 0.01 * g for p, g in zip(params, grads)]
    gen = torch.Generator().manual_seed(seed)
    cot = [torch.randn(p.shape, generator=gen) for p in params]
    torch.autograd.grad(new, params + [x], grad_outputs=cot)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    from _report import machine, today

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    models = {"group_norm": build(args.width, plain=True), "instance_norm": build(args.width, plain=False)}
    times: dict[str, list[float]] = {k: [] for k in models}
    for name, model in models.items():  # warm-up
        step(model, x, y, 0)
    for r in range(args.repeats):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for name in order:
            t0 = time.perf_counter()
            step(models[name], x, y, r)
            times[name].append(time.perf_counter() - t0)
    profiles = {}
    for name, model in models.items():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(model, x, y, 0)
        rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        norm = [e for e in prof.key_averages() if e.key in NORM_NODES]
        profiles[name] = {
            "total_self_s": round(sum(e.self_cpu_time_total for e in rows) / 1e6, 4),
            "norm_nodes_total_s": {e.key: round(e.cpu_time_total / 1e6, 4) for e in norm},
            "top_self": [{"op": e.key, "calls": e.count, "self_s": round(e.self_cpu_time_total / 1e6, 4)}
                         for e in rows[:12]]}
    best = {k: min(v) for k, v in times.items()}
    out = {"date": today(), "machine": machine(), "command": "python bench/instance_norm.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "width": args.width, "batch": args.batch, "seconds": times,
           "fastest_s": best, "speedup": best["group_norm"] / best["instance_norm"], "profile": profiles}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
