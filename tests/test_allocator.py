"""The command line's opt-in allocator setting (memdistill/_allocator.py): freed blocks are
kept and reused without page faults, only the CLI's own process is changed, off by default,
and the memory is the same either way."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from memdistill.cli import main

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates, frees and reallocates a 64 MB tensor, filling it each time, and prints the
# minor page faults of the second round (what a freed feature map costs when reused).
_PROBE = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from memdistill._allocator import keep_freed_memory
    assert keep_freed_memory()
n = 16 * 2**20
for _ in range(2):  # warm-up round: first touch costs faults either way
    t = torch.empty(n).fill_(1.0); del t
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    t = torch.empty(n).fill_(1.0); del t
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting exists for glibc only")
def test_kept_blocks_are_reused_without_page_faults():
    system, keep = _faults("system"), _faults("keep")
    pages = 4 * 16 * 2**20 * 4 // 4096  # the 4 reallocations' pages, had each been faulted in anew
    assert system > pages // 2  # glibc's default: each 64 MB block is mapped and faulted in again
    assert keep < system // 2  # kept: heap pages reused (measured: none, or one block's in four)


def test_the_cli_applies_it_to_its_own_process_unless_turned_off(data_root, tmp_path, monkeypatch):
    import memdistill._allocator as allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    args = ["distill", "--dataset", "mnist", "--budget-ipc", "1", "--preset", "cpu-quick", "--root", str(data_root),
            "--iterations", "1", "--inner-steps", "1", "--set", "inner.width=4", "--set", "outer.real_per_class=2",
            "--set", "evaluation.every=0", "--set", "evaluation.at_start=false", "--set", "evaluation.epochs=1",
            "--set", "evaluation.width=4", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a.mem.safetensors")]) == 0
    assert calls == [1]  # on by default (docs/BENCHMARKS.md, "Chunking the outer loss")
    assert main(args + ["--set", "keep_freed_memory=false", "--out", str(tmp_path / "b.mem.safetensors")]) == 0
    assert calls == [1]  # a flag turns it off
    for preset in ("cpu", "paper"):  # every preset keeps the default
        other = [a if a != "cpu-quick" else preset for a in args]
        assert main(other + ["--out", str(tmp_path / f"{preset}.mem.safetensors")]) == 0
    assert calls == [1, 1, 1]


def test_the_library_leaves_its_host_process_alone(mnist_train, monkeypatch):
    # building a Distiller and running it never touches the allocator: only the CLI does
    import memdistill._allocator as allocator

    from memdistill.config import resolve
    from memdistill.distill import Distiller

    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: pytest.fail("the library changed the allocator"))
    sets = [("keep_freed_memory", True), ("inner.width", 4), ("inner.steps", 1), ("outer.real_per_class", 2),
            ("outer.pool_size", 0), ("outer.iterations", 1), ("evaluation.every", 0),
            ("evaluation.at_start", False), ("evaluation.epochs", 1), ("evaluation.width", 4)]
    cfg = resolve("cpu-quick", "mnist", 1, sets=sets)
    assert cfg.keep_freed_memory
    small = mnist_train.subset(torch.arange(500))
    assert Distiller(cfg, small).run().iterations == 1


@pytest.mark.skipif(not GLIBC, reason="the setting exists for glibc only")
def test_the_memory_is_the_same_with_and_without_it(data_root, tmp_path):
    from memdistill import load

    outs = []
    for keep in ("true", "false"):
        out = tmp_path / f"{keep}.mem.safetensors"
        cmd = [sys.executable, "-m", "memdistill", "distill", "--dataset", "mnist", "--budget-ipc", "1", "--preset",
               "cpu-quick", "--root", str(data_root), "--iterations", "2", "--inner-steps", "3", "--set",
               "inner.width=16", "--set", "outer.real_per_class=8", "--set", "outer.pool_size=0", "--set",
               "evaluation.every=0", "--set", "evaluation.at_start=false", "--set", "evaluation.epochs=1", "--set",
               "evaluation.width=4", "--set", f"keep_freed_memory={keep}",
               "--out", str(out), "--no-progress"]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        outs.append(load(out))
    for name, tensor in outs[0].memory.tensors.items():
        assert torch.equal(tensor, outs[1].memory.tensors[name]), name
