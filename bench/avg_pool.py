"""2 x 2 average pooling by strided views, and ReLU fused with it, against PyTorch's
``avg_pool2d``, side by side.

    python bench/avg_pool.py --threads 2

Two measurements, both inside one process so that the two pooling paths see the same
machine load, taking turns:

* ``shapes``: one pooling's forward, its backward with the graph kept, and the backward's
  backward (what an inner step of the meta-gradient asks of it), best of ``--repeats``
  timings of ``--reps`` calls each, for the feature-map shapes of the ``cpu`` preset's inner
  network (width 32, 5 recalled examples per class of 10 classes), of the outer loss's
  real batch at width 32 (1 280 images) and of the paper protocol at width 128;
* ``outer_step``: whole outer steps (``Distiller.meta_step``) of the ``cpu`` preset on
  Fashion-MNIST at budget 1 (an unroll step: T = 80, width 32), the ConvNet's pooling
  switched before each step between three paths: ``avg_pool2d`` everywhere (``native``),
  the views with ReLU apart (``views``), and the views with each ReLU fused into the pooling
  after it (``fused``, the default), ``--steps`` steps each.

The paths compute the same bits (``tests/test_avg_pool.py``), so only the time
differs. Writes ``docs/bench/avg_pool.json`` (``--out``) and the ``avg-pool`` block of
``docs/BENCHMARKS.md`` (``--doc``); ``--steps 0`` leaves the outer steps out.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))

from _report import DOCS, machine, replace_block, today  # noqa: E402
from memdistill._io import atomic_write_json  # noqa: E402
from memdistill.models import _avg_pool  # noqa: E402

SHAPES = {
    "cpu preset, layer 1 (50 x 32 x 32 x 32)": (50, 32, 32, 32),
    "cpu preset, layer 2 (50 x 32 x 16 x 16)": (50, 32, 16, 16),
    "cpu preset, layer 3 (50 x 32 x 8 x 8; native below SMALLEST_MAP)": (50, 32, 8, 8),
    "paper protocol width 128, layer 1 (100 x 128 x 32 x 32)": (100, 128, 32, 32),
    "real batch at width 32, layer 1 (1280 x 32 x 32 x 32; native above the cap)": (1280, 32, 32, 32),
}


def native(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2, 2)


def views(x: torch.Tensor) -> torch.Tensor:
    return _avg_pool._Pool.apply(x)  # the views path whatever the size, to show the rules' reasons


def time_pool(pool: Callable, shape: tuple[int, ...], reps: int, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)  # timing only: the values do not matter, but are fixed
    x = torch.randn(shape, generator=gen).requires_grad_()
    g = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen).requires_grad_()
    v = torch.randn(shape, generator=gen)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            (gx,) = torch.autograd.grad(pool(x), x, g, create_graph=True)
            torch.autograd.grad(gx, g, v)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def relu_native(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(torch.relu(x), 2, 2)


def relu_views(x: torch.Tensor) -> torch.Tensor:
    return _avg_pool._Pool.apply(torch.relu(x))


def fused(x: torch.Tensor) -> torch.Tensor:
    return _avg_pool._ReluPool.apply(x)  # whatever the size, as ``views``


PATHS = {"native": native, "views": views, "relu_native": relu_native, "relu_views": relu_views, "fused": fused}


def shapes(reps: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, shape in SHAPES.items():
        r = max(1, reps * 50 * 32 * 32 * 32 // (shape[0] * shape[1] * shape[2] * shape[3]))
        t: dict[str, list[float]] = {k: [] for k in PATHS}
        for _ in range(2):  # taking turns
            for path, fn in PATHS.items():
                t[path].append(time_pool(fn, shape, r, repeats))
        ms = {k: 1e3 * min(v) for k, v in t.items()}
        rows.append({"shape": name, **{f"{k}_ms": v for k, v in ms.items()},
                     "speedup": ms["native"] / ms["views"], "fused_speedup": ms["relu_native"] / ms["fused"]})
        print(rows[-1], flush=True)
    return rows


def pooling_share(step: Callable[[], Any]) -> dict[str, float]:
    """Self CPU seconds of ``avg_pool2d`` and its backward in one step under ``torch.profiler``,
    and of everything (the motivation of the views path, measured with the native kernel)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    pool = {k: ops.get(k, 0.0) for k in ("aten::avg_pool2d", "aten::avg_pool2d_backward")}
    total = sum(ops.values())
    return {**pool, "total": total, "fraction": sum(pool.values()) / total}


def outer_steps(root: str, steps: int) -> dict[str, Any]:
    from memdistill.config import resolve
    from memdistill.data import load_dataset
    from memdistill.distill import Distiller

    train = load_dataset("fashion-mnist", "train", root=root)
    cfg = resolve("cpu", "fashion-mnist", 1, flags={"outer": {"regression_steps": 0}}, flags_source="bench")
    distiller = Distiller(cfg, train, device=torch.device("cpu"))
    mem = distiller.new_memory()
    distiller.meta_step(mem, 0)  # warm-up
    cap, fuse = _avg_pool.NATIVE_ABOVE, _avg_pool.FUSE_RELU
    settings = {"native": (-1, False), "views": (cap, False), "fused": (cap, True)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    try:
        for i in range(steps):
            order = list(settings)[i % 3:] + list(settings)[:i % 3]  # each path first in turn
            for path in order:
                _avg_pool.NATIVE_ABOVE, _avg_pool.FUSE_RELU = settings[path]
                t0 = time.perf_counter()
                distiller.meta_step(mem, 1)  # the same step each time: same inputs, same bits
                times[path].append(time.perf_counter() - t0)
        _avg_pool.NATIVE_ABOVE, _avg_pool.FUSE_RELU = settings["native"]
        share = pooling_share(lambda: distiller.meta_step(mem, 1))
    finally:
        _avg_pool.NATIVE_ABOVE, _avg_pool.FUSE_RELU = cap, fuse
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    pairs = {k: [a / b for a, b in zip(times["native"], times[k])] for k in ("views", "fused")}
    pairs["fused_vs_views"] = [a / b for a, b in zip(times["views"], times["fused"])]
    out = {"config": "cpu preset, fashion-mnist, budget 1, unroll step (T = 80, width 32)",
           "seconds": times, "median_seconds": med,
           "speedup_of_medians": {k: med["native"] / med[k] for k in ("views", "fused")},
           "fused_vs_views": med["views"] / med["fused"],
           "paired_ratios": pairs, "pairs_faster": {k: sum(p > 1 for p in v) for k, v in pairs.items()},
           "native_profile": share}
    print(out, flush=True)
    return out


def _pairs_text(pairs: list[float]) -> str:
    return (f"faster in {sum(p > 1 for p in pairs)} of {len(pairs)} pairs, ratios {min(pairs):.3f} to "
            f"{max(pairs):.3f}, median {sorted(pairs)[len(pairs) // 2]:.3f}")


def render(res: dict[str, Any], out: str) -> str:
    """The doc block: the command, machine, the shapes table and the outer steps' lines."""
    rows = ["| shape | avg_pool2d ms | views ms | speed-up | ReLU, avg_pool2d ms | ReLU, views ms | fused ms "
            "| fused speed-up |", "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {r['shape']} | {r['native_ms']:.2f} | {r['views_ms']:.2f} | {r['speedup']:.2f}x "
             f"| {r['relu_native_ms']:.2f} | {r['relu_views_ms']:.2f} | {r['fused_ms']:.2f} | {r['fused_speedup']:.2f}x |"
             for r in res["shapes"]]
    lines = [f"Command: `{res['command']}`  ", f"Machine: {res['machine']}  ",
             f"Date: {res['date']}. One pooling's forward, backward (graph kept) and the backward's backward, "
             "best time, the paths taking turns in one process; the views (and the fused ReLU + pooling) forced "
             "at every shape. The fused speed-up divides ReLU then `avg_pool2d` by the fused function.",
             "", *rows, ""]
    o = res.get("outer_step")
    if o:
        med, sp, pairs = o["median_seconds"], o["speedup_of_medians"], o["paired_ratios"]
        lines.append(f"Outer steps ({o['config']}), {len(pairs['views'])} per path, taking turns: median "
                     f"{med['native']:.2f} s with `avg_pool2d` everywhere, {med['views']:.2f} s with the views "
                     f"(ReLU apart), {med['fused']:.2f} s with the views and ReLU fused (the default): "
                     f"**{sp['fused']:.3f}x** over `avg_pool2d` ({_pairs_text(pairs['fused'])}), "
                     f"{sp['views']:.3f}x for the views alone ({_pairs_text(pairs['views'])}); fusing ReLU "
                     f"{o['fused_vs_views']:.3f}x over the views alone ({_pairs_text(pairs['fused_vs_views'])}).")
        pr = o["native_profile"]
        lines.append("")
        lines.append(f"One such step with `avg_pool2d` everywhere, under `torch.profiler`: `avg_pool2d` "
                     f"{pr['aten::avg_pool2d']:.2f} s and its backward {pr['aten::avg_pool2d_backward']:.2f} s "
                     f"of {pr['total']:.2f} s self CPU time (**{100 * pr['fraction']:.0f}%**; the profiler "
                     "slows the step).")
        lines.append("")
    lines.append(f"Raw numbers: `{out}`.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=20, help="calls per timing at the smallest shape")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=6, help="outer steps per path")
    p.add_argument("--root", default=os.environ.get("MEMDISTILL_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--out", default=str(DOCS / "bench" / "avg_pool.json"))
    p.add_argument("--doc", default=str(DOCS / "BENCHMARKS.md"), help="markdown file for the block")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"command": "python bench/avg_pool.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "date": today(),
              "native_above": _avg_pool.NATIVE_ABOVE, "smallest_map": _avg_pool.SMALLEST_MAP,
              "shapes": shapes(args.reps, args.repeats),
              "outer_step": outer_steps(args.root, args.steps) if args.steps > 0 else None}
    out = Path(args.out)
    atomic_write_json(out, result)
    shown = out.relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
    replace_block(Path(args.doc), "avg-pool", render(result, str(shown)), "Pooling as strided views")
    print(f"wrote {args.out} and the avg-pool block of {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
