"""Where an outer step's time goes on a device, and which backend settings change it.

    python bench/gpu_profile.py --device cuda                  # a CUDA machine, about 2 minutes
    python bench/gpu_profile.py --device cpu --quick --out /tmp/p.json   # the same path in CI

The ``paper`` preset on MNIST (T = 150, width 128), as ``bench/gpu_check.py`` times it:

* ``settings``: seconds per outer step (``Distiller.meta_step``) under each of
  ``VARIANTS`` (TF32 products, cuDNN autotuning, channels-last inputs, the bfloat16
  inner network), measured in interleaved rounds (each round times every variant once,
  after one untimed warm-up step each) so that the ratios to ``default`` compare like
  with like; best and all times, and the ratio of each best to ``default``'s.
* ``profile``: one outer step of ``default`` under :mod:`torch.profiler`: wall seconds,
  the device's busy time (the sum of its kernels' times), the number of kernels
  launched, and the ops with the most self device time (on a CPU: self CPU time). A
  device busy for much less than the wall time means the step is bound by the host
  (kernel launches and Python), not by the device's arithmetic.

The JSON (``docs/bench/gpu_profile_<device>[_quick].json``) is rewritten atomically after
each section; a section that raises is recorded with its error and the script exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

import gpu_check as gc  # noqa: E402  (device checks, data, the distiller of the paper preset)
from memdistill._io import atomic_write_json  # noqa: E402

# name -> (config flags, backend flags); the backend flags are set only while the variant runs
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, bool]]] = {
    "default": ({}, {}),
    "tf32": ({}, {"matmul_tf32": True, "cudnn_tf32": True}),
    "cudnn_benchmark": ({}, {"cudnn_benchmark": True}),
    "channels_last": ({"channels_last": True}, {}),
    "bfloat16": ({"inner.precision": "bfloat16"}, {}),
}


def _backend(flags: dict[str, bool]) -> dict[str, bool]:
    """Set the backend flags, returning the previous values."""
    before = {"matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
              "cudnn_benchmark": torch.backends.cudnn.benchmark}
    torch.backends.cuda.matmul.allow_tf32 = flags.get("matmul_tf32", before["matmul_tf32"])
    torch.backends.cudnn.allow_tf32 = flags.get("cudnn_tf32", before["cudnn_tf32"])
    torch.backends.cudnn.benchmark = flags.get("cudnn_benchmark", before["cudnn_benchmark"])
    return before


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    gc.sync(device)
    t0 = time.perf_counter()
    fn()
    gc.sync(device)
    return time.perf_counter() - t0


def settings(device: torch.device, train, quick: bool, rounds: int, names: list[str],
             sizes: dict[str, Any]) -> dict[str, Any]:
    from memdistill.engine.precision import bfloat16_support

    steps = sizes.get("inner.steps") or (3 if quick else 150)
    cells: dict[str, Any] = {}
    for name in ["default", *[n for n in names if n != "default"]]:
        cfg_flags, backend = VARIANTS[name]
        if name == "bfloat16" and not bfloat16_support(device)[0]:
            cells[name] = {"skipped": bfloat16_support(device)[1]}
            continue
        d = gc.distiller_for("mnist", train, device, quick, steps, {**sizes, **cfg_flags})
        cells[name] = {"distiller": d, "memory": d.new_memory(), "backend": backend, "times": []}
    live = {k: v for k, v in cells.items() if "distiller" in v}
    for name, c in live.items():  # warm-up (cuDNN autotuning happens here)
        before = _backend(c["backend"])
        c["warmup_seconds"] = _timed(lambda: c["distiller"].meta_step(c["memory"], 0), device)
        _backend(before)
    for r in range(1, rounds + 1):
        for name, c in live.items():
            before = _backend(c["backend"])
            c["times"].append(_timed(lambda: c["distiller"].meta_step(c["memory"], r), device))
            _backend(before)
    out: dict[str, Any] = {"T": steps, "rounds": rounds, "sizes": sizes}
    base = min(live["default"]["times"])
    for name, c in cells.items():
        if "distiller" not in c:
            out[name] = c
            continue
        best = min(c["times"])
        out[name] = {"config": VARIANTS[name][0], "backend": c["backend"], "best_seconds": best,
                     "all_seconds": c["times"], "warmup_seconds": c["warmup_seconds"],
                     "seconds_per_inner_step": best / steps, "speedup_over_default": base / best}
    return out


def profile(device: torch.device, train, quick: bool, top: int = 15) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps = 3 if quick else 150
    d = gc.distiller_for("mnist", train, device, quick, steps)
    mem = d.new_memory()
    d.meta_step(mem, 0)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    gc.sync(device)
    t0 = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        d.meta_step(mem, 1)
        gc.sync(device)
    wall = time.perf_counter() - t0
    events = prof.key_averages()
    on_device = device.type == "cuda"

    def self_us(e) -> float:
        return float(e.self_device_time_total if on_device else e.self_cpu_time_total)

    ranked = sorted(events, key=self_us, reverse=True)[:top]
    kernels = [e for e in prof.events() if on_device and e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e6 if on_device else None
    return {"T": steps, "wall_seconds_profiled": wall, "device_busy_seconds": busy,
            "device_busy_fraction": None if busy is None else busy / wall,
            "kernels_launched": len(kernels) if on_device else None,
            "kernels_per_inner_step": len(kernels) / steps if on_device else None,
            "measure": "self device time" if on_device else "self CPU time",
            "top_ops": [{"op": e.key, "calls": e.count, "self_seconds": self_us(e) / 1e6} for e in ranked]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the CI smoke run)")
    ap.add_argument("--data", help="folder holding MNIST/ (default: $MEMDISTILL_DATA, else ../shared/data)")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds over the variants (default 2)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"which of {', '.join(VARIANTS)} (default all)")
    ap.add_argument("--inner-steps", type=int, help="T of every variant (default: the preset's 150; quick 3)")
    ap.add_argument("--width", type=int, help="the inner network's width (default: the preset's 128)")
    ap.add_argument("--skip-profile", action="store_true", help="time the variants only")
    ap.add_argument("--out", help="the JSON (default docs/bench/gpu_profile_<device>[_quick].json)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    sizes = {k: v for k, v in (("inner.steps", args.inner_steps), ("inner.width", args.width)) if v is not None}
    device = gc.check_device(args.device)
    root = gc.data_root(args.data)
    out_path = Path(args.out) if args.out else (
        ROOT / "docs" / "bench" / f"gpu_profile_{gc.device_slug(device)}{'_quick' if args.quick else ''}.json")
    from memdistill.data import load_dataset

    train = load_dataset("mnist", "train", root=root)
    if args.quick:
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:2000])
    result: dict[str, Any] = {
        "script": "bench/gpu_profile.py",
        "command": "python bench/gpu_profile.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git": gc.git_state(),
        "machine": gc.machine(device), "quick": args.quick, "errors": {}, "complete": False}
    sections = [("settings", lambda: settings(device, train, args.quick, args.rounds, names, sizes))]
    if not args.skip_profile:
        sections.append(("profile", lambda: profile(device, train, args.quick)))
    for name, run in sections:
        print(f"gpu_profile: {name} ...", flush=True)
        try:
            result[name] = run()
        except Exception as exc:  # noqa: BLE001 (recorded, then exit 1)
            result["errors"][name] = gc.error_text(exc)
            print(f"gpu_profile: {name} failed:\n{result['errors'][name]}", file=sys.stderr, flush=True)
        atomic_write_json(out_path, result)
    result["complete"] = True
    atomic_write_json(out_path, result)
    print(f"gpu_profile: wrote {out_path}", flush=True)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
