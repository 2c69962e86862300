"""Every results table of docs/RESULTS.md, from scratch, one JSON per cell.

    python bench/results.py --preset cpu-quick                 # every cell, then the doc
    python bench/results.py --preset cpu-quick --only main.mnist.b1.bases
    python bench/results.py --preset cpu-quick --tables main --datasets mnist --budgets 1
    python bench/results.py --preset cpu-quick --list          # the cell names
    python bench/results.py --preset cpu-quick --render        # only rebuild the doc

A cell is one number-producing job (a distillation and its evaluation, a real subset, a
whole-dataset run, ...). Its JSON goes to ``docs/bench/results/<preset>/<cell>.json``;
cells already there are skipped unless ``--force``. Memory files go to ``outputs/`` (not
committed). After the cells, the tables are rebuilt *only* from those JSON files:
``summary.json`` holds every row exactly as printed and ``docs/RESULTS.md`` shows them.

Hyperparameters come from the presets (``memdistill.config.PRESETS``); during
distillation only the validation split carved out of the training set is evaluated.
The test split is read once per final cell (the retrain-speed cell also reads it at
checkpoints of one run, to time when an accuracy is reached; no choice depends on it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOCS, machine, replace_block, today  # noqa: E402

from memdistill._io import atomic_write_json, atomic_write_text  # noqa: E402
from memdistill.config import DistillConfig, config_to_dict, parse_sets, resolve  # noqa: E402
from memdistill.data import load_dataset  # noqa: E402
from memdistill.distill import Distiller  # noqa: E402
from memdistill.errors import ConfigError, MemdistillError  # noqa: E402
from memdistill.evaluate import (TrainConfig, TrainingSet, evaluate, format_accuracy, select_subset,  # noqa: E402
                                 test_network)
from memdistill.evaluate._train import train_network  # noqa: E402
from memdistill.memory.file import load_memory, save_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("mnist", "fashion-mnist")
BUDGETS = (1, 10)
METHODS = ("bases", "images", "random", "herding")
ARCHS = ("mlp", "lenet", "alexnet", "vgg11", "resnet18")
TABLES = ("main", "xarch", "speed", "ablation")
# What a cell records of the ConvNet it ran; cells without it came before the field's geometry
GEOMETRY = "convnet first_pad 3 on 1-channel inputs (DC/DSA/MTT: 28 px -> 32/16/8/4 maps)"
OLD_GEOMETRY_NOTE = (
    "> **Network geometry of these tables.** The cells marked by no `geometry` field in their JSON ({n} of "
    "{total} here) were computed before the ConvNet followed the field's geometry: on these 1-channel "
    "images its first convolution was padded by 1 (feature maps 28/14/7/3, a 1152-wide classifier at "
    "width 128), not by 3 as in DC, DSA, MTT and the paper's code (maps 32/16/8/4, 2048 wide), which is "
    "now the default, for the distillation's inner networks and the evaluation networks alike. They have "
    "not been rerun; `inner.first_pad=1` and `evaluation.first_pad=1` give their network back. Spreads "
    "(±) are sample standard deviations (ddof 1) over the runs, converted from the population ones these "
    "files first stored by `bench/migrate_std.py`.")

# name -> (what it changes, overrides of the preset's configuration); budget 1, MNIST
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "K4": ("4 bases", {"memory.num_bases": 4}),
    # at budget 1 on MNIST, 64 bases at 14x14 (12 544 floats) do not fit in 7 840: 32 leave 4 slots
    "K32": ("32 bases", {"memory.num_bases": 32}),
    # 16 full-resolution bases (12 544 floats) do not fit either: 8 of them leave 19 slots
    "ds1": ("bases at full resolution (ds 1), 8 bases", {"memory.downsample": 1, "memory.num_bases": 8}),
    "ds4": ("bases at 1/4 resolution (ds 4)", {"memory.downsample": 4}),
    "T5": ("T = 5 inner steps", {"inner.steps": 5}),
    "T20": ("T = 20 inner steps", {"inner.steps": 20}),
    "full": ("full-graph back-propagation", {"outer.unroll": "full"}),
    # truncation shortens fresh-network unrolls: these ablations switch a preset's model pool off
    "truncated": ("truncated: last T/2 steps only", {"outer.window": -1, "outer.pool_size": 0}),
    "rat": ("random truncation (RaT-BPTT, window T/2)", {"outer.window": -1, "outer.random_truncation": True,
                                                         "outer.pool_size": 0}),
    "labels": ("learned labels", {"memory.learned_labels": True}),
    "augment": ("flip_rotate augmentation in the inner loop", {"inner.augment": "flip_rotate"}),
}


@dataclass(frozen=True)
class Protocol:
    """How the cells of a preset are evaluated (distillation settings are the preset's)."""

    eval_width: int
    eval_epochs: int
    runs: int
    whole_epochs: int
    whole_runs: int
    xarch_epochs: int
    xarch_runs: int
    speed_check_every: int  # optimiser steps between accuracy checks of the whole-data run


PROTOCOLS = {
    # the reference protocol of METHOD.md (a GPU job)
    "paper": Protocol(eval_width=128, eval_epochs=300, runs=10, whole_epochs=300, whole_runs=10, xarch_epochs=300,
                      xarch_runs=10, speed_check_every=20),
    # 2-core CPU: narrower evaluation network; whole-dataset training shortened
    "cpu": Protocol(eval_width=32, eval_epochs=300, runs=5, whole_epochs=5, whole_runs=2, xarch_epochs=300, xarch_runs=5,
                    speed_check_every=10),
    "cpu-quick": Protocol(eval_width=32, eval_epochs=100, runs=5, whole_epochs=2, whole_runs=2, xarch_epochs=50,
                          xarch_runs=3, speed_check_every=10),
}


# ------------------------------------------------------------------------------ cells
def cell_names(tables=TABLES, datasets=DATASETS, budgets=BUDGETS) -> list[str]:
    names: list[str] = []
    for ds in datasets:
        if "main" in tables:
            names += [f"main.{ds}.b{b}.{m}" for b in budgets for m in METHODS] + [f"main.{ds}.whole"]
        if "xarch" in tables:
            names += [f"xarch.{ds}.b{b}.{a}" for b in budgets for a in ARCHS]
        if "speed" in tables:
            names += [f"speed.{ds}.b{b}" for b in budgets]
    if "ablation" in tables and "mnist" in datasets:
        names += [f"ablation.mnist.b1.{a}" for a in ABLATIONS]
    return names


def parse_cell(name: str) -> dict[str, Any]:
    parts = name.split(".")
    table = parts[0]
    if table == "main" and len(parts) == 3 and parts[2] == "whole":
        return {"table": table, "dataset": parts[1], "budget": None, "what": "whole"}
    if table in TABLES and len(parts) in (3, 4) and re.fullmatch(r"b\d+", parts[2]):
        what = parts[3] if len(parts) == 4 else None
        valid = {"main": METHODS, "xarch": ARCHS, "ablation": tuple(ABLATIONS), "speed": (None,)}[table]
        if what in valid and parts[1] in DATASETS:
            return {"table": table, "dataset": parts[1], "budget": int(parts[2][1:]), "what": what}
    raise ConfigError(
        f"unknown cell {name!r}; cells look like main.mnist.b1.bases, main.mnist.whole, "
        f"xarch.mnist.b10.lenet, speed.mnist.b10, ablation.mnist.b1.K4 (see --list)"
    )


class Runner:
    """Runs cells of one preset; ``overrides`` shrink everything for smoke tests."""

    def __init__(self, preset: str, out_dir: Path, mem_dir: Path, root: str | None = None,
                 device: str = "cpu", overrides: dict[str, Any] | None = None, force: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print):
        if preset not in PROTOCOLS:
            raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(PROTOCOLS)}")
        self.preset, self.out_dir, self.mem_dir = preset, Path(out_dir), Path(mem_dir)
        self.root, self.device, self.force, self.progress, self.log = root, device, force, progress, log
        self.overrides = dict(overrides or {})
        proto = PROTOCOLS[preset]
        for key in Protocol.__dataclass_fields__:
            if key in self.overrides:
                proto = type(proto)(**{**proto.__dict__, key: int(self.overrides.pop(key))})
        unknown = [k for k in self.overrides if "." not in k]
        if unknown:
            raise ConfigError(f"unknown override(s) {', '.join(unknown)}; use a configuration key such as "
                              f"outer.iterations or a protocol field: {', '.join(Protocol.__dataclass_fields__)}")
        self.protocol = proto
        self._data: dict[tuple[str, str], Any] = {}

    # -------------------------------------------------------------- helpers
    def data(self, ds: str, split: str):
        if (ds, split) not in self._data:
            self._data[(ds, split)] = load_dataset(ds, split, root=self.root)
        return self._data[(ds, split)]

    def path(self, cell: str) -> Path:
        return self.out_dir / f"{cell}.json"

    def train_config(self, ds: str, arch: str = "convnet", epochs: int | None = None) -> TrainConfig:
        """The evaluation protocol: the preset's evaluation options (augmentation, lr, batch
        size) with the protocol's width and epochs, for every row."""
        options = dataclasses.replace(resolve(self.preset, ds).evaluation, arch=arch,
                                      width=self.protocol.eval_width, epochs=epochs or self.protocol.eval_epochs)
        return TrainConfig.from_options(options)

    def distill_config(self, ds: str, budget: int, kind: str, extra: dict[str, Any] | None = None) -> DistillConfig:
        """The preset's configuration of a ``kind`` memory, the ablation's changes as flags
        and this runner's configuration overrides as ``--set``."""
        extra = dict(extra or {})
        if extra.get("outer.window") == -1:  # half of the (preset's) unroll
            extra["outer.window"] = max(1, resolve(self.preset, ds, budget, kind=kind).inner.steps // 2)
        sets = [(k, v) for k, v in self.overrides.items() if "." in k]
        return resolve(self.preset, ds, budget, kind=kind, flags=extra, flags_source="ablation", sets=sets)

    def common(self, cell: str) -> dict[str, Any]:
        return {"cell": cell, "preset": self.preset, "machine": machine(), "date": today(),
                "protocol": self.protocol.__dict__, "device": str(self.device), "geometry": GEOMETRY}

    # -------------------------------------------------------------- running
    def run(self, cell: str) -> dict[str, Any]:
        """The JSON record of ``cell`` (computed, or read when already there)."""
        path = self.path(cell)
        if path.exists() and not self.force:
            return json.loads(path.read_text())
        spec = parse_cell(cell)
        self.log(f"[{cell}] running")
        t0 = time.perf_counter()
        fn = {"main": self._main, "xarch": self._xarch, "speed": self._speed, "ablation": self._ablation}
        record = {**self.common(cell), **fn[spec["table"]](cell, spec)}
        record["cell_seconds"] = time.perf_counter() - t0
        record["load_average_end"] = list(os.getloadavg())  # other work sharing the machine
        atomic_write_json(path, record)
        self.log(f"[{cell}] done in {record['cell_seconds']:.0f} s")
        return record

    def memory_file(self, cell: str) -> Path:
        """The memory file a distillation cell wrote (running that cell when missing)."""
        mem = self.mem_dir / f"{cell}.mem.safetensors"
        if not mem.exists() or not self.path(cell).exists():
            saved, self.force = self.force, True
            try:
                self.run(cell)
            finally:
                self.force = saved
        return mem

    def _distill(self, cell: str, ds: str, budget: int, kind: str, extra=None) -> dict[str, Any]:
        cfg = self.distill_config(ds, budget, kind, extra)
        train = self.data(ds, "train")
        distiller = Distiller(cfg, train, device=self.device)
        t0 = time.perf_counter()
        result = distiller.run(progress=self.progress)
        seconds = time.perf_counter() - t0
        mem = self.mem_dir / f"{cell}.mem.safetensors"
        save_memory(mem, result.memory, dataset=ds, classes=list(train.classes), mean=train.mean, std=train.std,
                    zca=distiller.train.zca, config=config_to_dict(cfg),
                    metrics={"iterations": result.iterations, "validation": result.last_eval},
                    train_size=len(train))
        mf = load_memory(mem)  # count what the saved file holds
        x, y = mf.recall()
        test = self.data(ds, "test").with_zca(mf.zca)
        res = evaluate(TrainingSet(x, y, device=self.device), test, self.train_config(ds),
                       runs=self.protocol.runs, seed=cfg.seed, device=self.device, progress=self.progress)
        return {"config": config_to_dict(cfg), "distill_seconds": seconds, "iterations": result.iterations,
                "validation": result.last_eval, "examples": int(x.shape[0]),
                "floats_stored": int(mf.memory.floats_stored()), "memory_file": str(mem), "test": res.to_dict()}

    def _main(self, cell: str, spec: dict[str, Any]) -> dict[str, Any]:
        ds, budget, what = spec["dataset"], spec["budget"], spec["what"]
        if what in ("bases", "images"):
            return self._distill(cell, ds, budget, what)
        train, test = self.data(ds, "train"), self.data(ds, "test")
        c, h, w = train.image_shape
        if what == "whole":
            res = evaluate(train, test, self.train_config(ds, epochs=self.protocol.whole_epochs),
                           runs=self.protocol.whole_runs, seed=0, device=self.device, progress=self.progress)
            return {"examples": len(train), "floats_stored": len(train) * c * h * w, "test": res.to_dict()}
        idx = select_subset(train, budget, what, seed=0)
        res = evaluate(train.subset(idx), test, self.train_config(ds), runs=self.protocol.runs, seed=0,
                       device=self.device, progress=self.progress)
        return {"examples": int(idx.numel()), "floats_stored": int(idx.numel()) * c * h * w, "test": res.to_dict()}

    def _xarch(self, cell: str, spec: dict[str, Any]) -> dict[str, Any]:
        ds, budget, arch = spec["dataset"], spec["budget"], spec["what"]
        mf = load_memory(self.memory_file(f"main.{ds}.b{budget}.bases"))
        x, y = mf.recall()
        test = self.data(ds, "test").with_zca(mf.zca)
        tc = self.train_config(ds, arch, epochs=self.protocol.xarch_epochs)
        res = evaluate(TrainingSet(x, y, device=self.device), test, tc, runs=self.protocol.xarch_runs, seed=0,
                       device=self.device, progress=self.progress)
        return {"arch": arch, "examples": int(x.shape[0]), "test": res.to_dict()}

    def _ablation(self, cell: str, spec: dict[str, Any]) -> dict[str, Any]:
        label, extra = ABLATIONS[spec["what"]]
        return {"change": label, **self._distill(cell, spec["dataset"], spec["budget"], "bases", extra)}

    def _speed(self, cell: str, spec: dict[str, Any]) -> dict[str, Any]:
        """One network on the memory (timed), then one on the whole dataset, timed until
        it first reaches the memory's accuracy (checks every few steps, not timed)."""
        ds, budget = spec["dataset"], spec["budget"]
        mf = load_memory(self.memory_file(f"main.{ds}.b{budget}.bases"))
        train, test = self.data(ds, "train").with_zca(mf.zca), self.data(ds, "test").with_zca(mf.zca)
        x, y = mf.recall()
        tc = self.train_config(ds)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        model = train_network(TrainingSet(x, y, device=self.device), train.num_classes, tc, g)
        memory_seconds = time.perf_counter() - t0
        memory_acc, _ = test_network(model, test, device=self.device)

        whole = TrainingSet(train, device=self.device)
        steps_per_epoch = math.ceil(len(train) / tc.batch_size)
        state = {"checking": 0.0, "reached_step": None, "acc": None, "curve": []}
        every = self.protocol.speed_check_every

        def on_step(step: int, net: torch.nn.Module) -> bool:
            if step % every and step != steps_per_epoch * self.protocol.whole_epochs:
                return False
            c0 = time.perf_counter()
            net.eval()
            acc, _ = test_network(net, test, device=self.device)
            net.train()
            state["checking"] += time.perf_counter() - c0
            state["curve"].append([step, acc, time.perf_counter() - t1 - state["checking"]])
            if acc >= memory_acc:
                state["reached_step"], state["acc"] = step, acc
                return True
            return False

        g = torch.Generator().manual_seed(0)
        t1 = time.perf_counter()
        train_network(whole, train.num_classes, self.train_config(ds, epochs=self.protocol.whole_epochs), g,
                      on_step=on_step)
        whole_seconds = time.perf_counter() - t1 - state["checking"]
        reached = state["reached_step"] is not None
        per_step = whole_seconds / max(state["curve"][-1][0], 1)
        return {
            "examples": int(x.shape[0]), "memory_train_seconds": memory_seconds, "memory_accuracy": memory_acc,
            "memory_epochs": tc.epochs, "whole_reached": reached,
            "whole_seconds_to_reach": whole_seconds if reached else None,
            "whole_steps_to_reach": state["reached_step"], "whole_seconds_run": whole_seconds,
            "whole_max_epochs": self.protocol.whole_epochs, "whole_curve": state["curve"],
            # the full reference protocol on the whole dataset, from the measured time per step
            "whole_protocol_epochs": 300, "whole_protocol_seconds_estimate": per_step * steps_per_epoch * 300,
        }


# ------------------------------------------------------------------------- rendering
def pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def acc(res: dict[str, Any] | None) -> str:
    """Mean ± sample std (ddof 1) in percent; the mean alone for one run."""
    if res is None:
        return "not run"
    return format_accuracy(res["mean"], res["std"], len(res["accuracies"]))


def load_cells(out_dir: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("*.json")) if p.stem != "summary"}


def build_tables(cells: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every table as ``{title, command, headers, rows, notes}`` with rows as printed.

    Pure: everything shown comes from ``cells``."""
    tables: list[dict[str, Any]] = []
    test = lambda name: cells[name]["test"] if name in cells else None  # noqa: E731

    def cell_seconds(names):
        return [f"{cells[n]['cell_seconds']:.0f}" if n in cells else "-" for n in names]

    datasets = [d for d in DATASETS if any(k.split(".")[1] == d for k in cells)]
    budgets = sorted({int(k.split(".")[2][1:]) for k in cells if k.startswith("main.") and ".b" in k})
    for ds in datasets:
        whole = test(f"main.{ds}.whole")
        rows = []
        for b in budgets:
            for m in METHODS:
                name = f"main.{ds}.b{b}.{m}"
                c = cells.get(name)
                res = test(name)
                retained = "-" if res is None or whole is None else f"{100 * res['mean'] / whole['mean']:.1f}"
                rows.append([str(b), m, str(c["examples"]) if c else "-", str(c["floats_stored"]) if c else "-",
                             acc(res), retained, cell_seconds([name])[0]])
        if f"main.{ds}.whole" in cells:
            c = cells[f"main.{ds}.whole"]
            rows.append(["-", "whole dataset", str(c["examples"]), str(c["floats_stored"]), acc(whole), "100.0",
                         cell_seconds([f"main.{ds}.whole"])[0]])
        tables.append({"key": f"main-{ds}", "title": f"Main table: {ds}",
                       "command": f"--tables main --datasets {ds}",
                       "headers": ["budget (img/class)", "method", "examples", "floats stored", "test acc % (± sample std)",
                                   "retained %", "cell s"], "rows": rows})
    for ds in datasets:
        rows = []
        for b in budgets:
            names = [f"xarch.{ds}.b{b}.{a}" for a in ARCHS]
            if not any(n in cells for n in names):
                continue
            conv = test(f"main.{ds}.b{b}.bases")
            rows.append([str(b), acc(conv)] + [acc(test(n)) for n in names])
        if rows:
            tables.append({"key": f"xarch-{ds}", "title": f"Cross-architecture: {ds}, `bases` memory",
                           "command": f"--tables xarch --datasets {ds}",
                           "headers": ["budget (test acc %, ± sample std)", "convnet"] + list(ARCHS),
                           "rows": rows})
    rows = []
    for ds in datasets:
        for b in budgets:
            c = cells.get(f"speed.{ds}.b{b}")
            if c is None:
                continue
            reach = c["whole_seconds_to_reach"]
            rows.append([ds, str(b), str(c["examples"]), pct(c["memory_accuracy"]), f"{c['memory_train_seconds']:.1f}",
                         f"{reach:.1f}" if reach is not None else f"not reached in {c['whole_max_epochs']} epochs "
                         f"({c['whole_seconds_run']:.0f} s)",
                         f"{reach / c['memory_train_seconds']:.1f}" if reach is not None else "-",
                         f"{c['whole_protocol_seconds_estimate']:.0f}",
                         f"{100 * c['memory_train_seconds'] / c['whole_protocol_seconds_estimate']:.2f}"])
    if rows:
        tables.append({"key": "speed", "title": "Retrain speed (one run each)", "command": "--tables speed",
                       "headers": ["dataset", "budget", "examples", "memory acc %", "memory train s",
                                   "whole data: s to reach it", "speed-up", "whole data 300 epochs s (est.)",
                                   "memory / whole 300 epochs %"], "rows": rows})
    rows = []
    base = cells.get("main.mnist.b1.bases")
    if base is not None:
        rows.append(["(preset as is)", str(base["examples"]), str(base["floats_stored"]), acc(base["test"]),
                     pct((base.get("validation") or {}).get("mean")), f"{base['distill_seconds']:.0f}"])
    for a in ABLATIONS:
        c = cells.get(f"ablation.mnist.b1.{a}")
        if c is not None:
            rows.append([c["change"], str(c["examples"]), str(c["floats_stored"]), acc(c["test"]),
                         pct((c.get("validation") or {}).get("mean")), f"{c['distill_seconds']:.0f}"])
    if len(rows) > 1:
        tables.append({"key": "ablation", "title": "Ablations: MNIST, budget 1, `bases` memory",
                       "command": "--tables ablation", "headers": ["change", "examples", "floats stored",
                                                                    "test acc % (± sample std)", "val acc %", "distill s"],
                       "rows": rows})
    tables.append({"key": "targets", "title": "Targets", "command": "--render",
                   "headers": ["target", "measured", "met"], "rows": target_rows(cells)})
    return tables


def target_rows(cells: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    mean = lambda n: cells[n]["test"]["mean"] if n in cells else None  # noqa: E731
    for ds in DATASETS:
        b, i = mean(f"main.{ds}.b1.bases"), mean(f"main.{ds}.b1.images")
        if b is not None and i is not None:
            rows.append([f"{ds}: bases > images at budget 1", f"{pct(b)} vs {pct(i)}", "yes" if b > i else "NO"])
        for bud in BUDGETS:
            b = mean(f"main.{ds}.b{bud}.bases")
            refs = [(m, mean(f"main.{ds}.b{bud}.{m}")) for m in ("random", "herding")]
            if b is not None and all(v is not None for _, v in refs):
                ok = all(b > v for _, v in refs)
                rows.append([f"{ds}: bases > random and herding at budget {bud}",
                             f"{pct(b)} vs {' / '.join(pct(v) for _, v in refs)}", "yes" if ok else "NO"])
    for ds, goal in (("mnist", 0.97), ("fashion-mnist", 0.85)):
        b = mean(f"main.{ds}.b1.bases")
        if b is not None:
            c = cells[f"main.{ds}.b1.bases"]
            minutes = c["distill_seconds"] / 60
            met = "yes" if b >= goal and minutes <= 30 else "NO"
            if c["preset"] != "cpu":
                met += f" (preset {c['preset']}; the target is for cpu)"
            rows.append([f"{ds} budget 1 >= {pct(goal, 0)}% within 30 min of distillation",
                         f"{pct(b)} in {minutes:.1f} min", met])
    c = cells.get("speed.mnist.b10")
    whole = mean("main.mnist.whole")
    if c is not None and whole is not None:
        frac = c["memory_train_seconds"] / c["whole_protocol_seconds_estimate"]
        gap = whole - c["memory_accuracy"]
        ok = frac < 0.01 and gap <= 0.05
        measured = (f"{c['memory_train_seconds']:.1f} s = {100 * frac:.2f}% of the 300-epoch whole-data "
                    f"estimate; {100 * gap:.2f} points below the whole-data row "
                    f"({cells['main.mnist.whole']['protocol']['whole_epochs']} epochs)")
        if c.get("whole_reached"):
            measured += f"; whole data reached the memory's accuracy in {c['whole_seconds_to_reach']:.1f} s"
        sooner = bool(c.get("whole_reached")) and c["whole_seconds_to_reach"] <= c["memory_train_seconds"]
        met = "NO" if not ok else ("yes against the 300-epoch protocol; NO against time-to-accuracy" if sooner
                                   else "yes")
        rows.append(["mnist budget 10: retrain < 1% of whole-data time, within 5 points", measured, met])
    return rows


def render_markdown(preset: str, tables: list[dict[str, Any]], cells: dict[str, dict[str, Any]]) -> str:
    machines = sorted({c["machine"] for c in cells.values()})
    dates = sorted({c["date"] for c in cells.values()})
    proto = next(iter(cells.values()))["protocol"] if cells else {}
    out = [f"Preset `{preset}`. Machine: {'; '.join(machines) or '-'}. Dates: {', '.join(dates) or '-'}.",
           f"Evaluation protocol: {json.dumps(proto)}.", ""]
    old = sum("geometry" not in c for c in cells.values())
    if old:
        out += [OLD_GEOMETRY_NOTE.format(n=old, total=len(cells)), ""]
    for t in tables:
        out += [f"#### {t['title']}", "",
                f"Reproduce: `python bench/results.py --preset {preset} {t['command']}`", "",
                "| " + " | ".join(t["headers"]) + " |", "|" + "---|" * len(t["headers"])]
        out += ["| " + " | ".join(r) + " |" for r in t["rows"]]
        out.append("")
    return "\n".join(out)


def render(preset: str, out_dir: Path, doc: Path) -> dict[str, Any]:
    """Rebuild ``summary.json`` and the preset's block of ``doc`` from the cell JSONs."""
    cells = load_cells(out_dir)
    tables = build_tables(cells)
    summary = {"preset": preset, "cells": sorted(cells), "tables": tables}
    atomic_write_json(Path(out_dir) / "summary.json", summary)
    if not doc.exists():
        atomic_write_text(doc, "# Results\n")
    replace_block(doc, f"results-{preset}", render_markdown(preset, tables, cells), f"Preset `{preset}`")
    return summary


# ------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-quick", choices=list(PROTOCOLS))
    p.add_argument("--only", help="comma-separated cell names (see --list)")
    p.add_argument("--tables", default=",".join(TABLES), help=f"subset of {','.join(TABLES)}")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    p.add_argument("--list", action="store_true", help="print the cell names and exit")
    p.add_argument("--render", action="store_true", help="only rebuild summary.json and the doc")
    p.add_argument("--force", action="store_true", help="recompute cells whose JSON exists")
    p.add_argument("--root", help="dataset root (default: $MEMDISTILL_DATA, ./data)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", help="cell JSON folder (default docs/bench/results/<preset>)")
    p.add_argument("--mem-dir", help="memory files (default outputs/results/<preset>)")
    p.add_argument("--doc", default=str(DOCS / "RESULTS.md"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a distillation key (outer.iterations=2) or a protocol field (runs=1)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir or DOCS / "bench" / "results" / args.preset)
    mem_dir = Path(args.mem_dir or ROOT / "outputs" / "results" / args.preset)
    try:
        overrides = dict(parse_sets(args.set, example="outer.iterations=2"))
        if args.only:
            names = [n.strip() for n in args.only.split(",") if n.strip()]
            for n in names:
                parse_cell(n)
        else:
            names = cell_names(tuple(t for t in args.tables.split(",") if t),
                               tuple(d for d in args.datasets.split(",") if d),
                               tuple(int(b) for b in args.budgets.split(",") if b))
        if args.list:
            print("\n".join(names))
            return 0
        if not args.render:
            runner = Runner(args.preset, out_dir, mem_dir, root=args.root, device=args.device,
                            overrides=overrides, force=args.force, progress=not args.no_progress)
            for n in names:
                runner.run(n)
        render(args.preset, out_dir, Path(args.doc))
    except MemdistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.doc} and {out_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
