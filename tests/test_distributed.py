"""Multi-process distillation with gloo on CPU: two ranks on 127.0.0.1, launched by
torchrun exactly as users launch them, against single-process references."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from memdistill.distill import Distiller, iteration_generator, sample_generator
from memdistill.distributed import DistContext, init_distributed, rank_device, single_process
from memdistill.errors import ConfigError

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
from _dist_worker import tiny_config, tiny_dataset  # noqa: E402

LAUNCH_TIMEOUT = 90  # seconds: a hang fails the test instead of stalling the suite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(HERE), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(args: list[str], cwd: Path, nproc: int = 2, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *launcher, *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def launch(tmp: Path, tasks: list[dict], launcher: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, float]:
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"out": str(tmp), "tasks": tasks, "timeout": 30}))
    t0 = time.perf_counter()
    proc = torchrun([str(HERE / "_dist_worker.py"), str(spec)], cwd=tmp, launcher=launcher)
    return proc, time.perf_counter() - t0


@pytest.fixture
def one_thread():
    """Single-process references with the thread count of each rank (1), so float
    reductions inside convolutions happen in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


POOL = {"outer.meta_batch": 3, "outer.pool_size": 4, "outer.pool_unroll": 2, "outer.pool_max_steps": 6}
# two feature-regression steps (three regressions each, from a pool of four networks) and then
# two unrolls (:mod:`memdistill.distill.regression`)
REGRESSION = {"outer.meta_batch": 3, "outer.regression_steps": 2, "outer.regression_pool": 4,
              "outer.regression_max_steps": 3, "outer.regression_real_per_class": 4}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One torchrun launch of two ranks running every task the tests below check."""
    tmp = tmp_path_factory.mktemp("two_ranks")
    tasks = [
        {"name": "full", "kind": "distill", "config": {"outer.meta_batch": 2}},
        {"name": "stopped", "kind": "distill", "config": {"outer.meta_batch": 2},
         "checkpoint": str(tmp / "run.ckpt"), "metrics": str(tmp / "run.jsonl"), "stop_after": 2,
         "copy_checkpoint": str(tmp / "at2.ckpt")},
        {"name": "resumed", "kind": "distill", "config": {"outer.meta_batch": 2},
         "checkpoint": str(tmp / "run.ckpt"), "metrics": str(tmp / "run.jsonl"), "resume": True},
        {"name": "evaluate", "kind": "evaluate", "runs": 3},
        {"name": "pool", "kind": "distill", "config": POOL},
        {"name": "regression", "kind": "distill", "config": REGRESSION},
        # last: these switch the processes to float64
        {"name": "grad2", "kind": "gradient", "config": {"outer.meta_batch": 2}, "iteration": 1},
        {"name": "grad3", "kind": "gradient", "config": {"outer.meta_batch": 3}, "iteration": 1},
        {"name": "split", "kind": "gradient", "iteration": 1,
         "config": {"outer.meta_batch": 2, "outer.split_classes": True, "outer.window": 2}},
    ]
    proc, _ = launch(tmp, tasks)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp


# ------------------------------------------------------------------ no processes
def test_work_is_split_by_index_and_the_union_is_everything():
    ranks = [DistContext(rank=r, world_size=3, backend="gloo") for r in range(3)]
    shards = [c.shard(7) for c in ranks]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(j for shard in shards for j in shard) == list(range(7))
    assert single_process().shard(4) == [0, 1, 2, 3] and not single_process().distributed


def test_unroll_zero_is_the_iteration_generator_and_others_are_independent():
    a = torch.rand(4, generator=sample_generator(1, 5, 0))
    assert torch.equal(a, torch.rand(4, generator=iteration_generator(1, 5)))
    b = torch.rand(4, generator=sample_generator(1, 5, 1))
    assert not torch.equal(a, b)


def test_without_torchrun_it_is_one_process_and_bad_devices_fail_clearly():
    ctx, dev = init_distributed({}, "cpu")
    assert not ctx.distributed and ctx.is_main and dev == torch.device("cpu")
    with pytest.raises(ConfigError, match="valid: cpu, cuda, cuda:N, auto"):
        rank_device("tpu:0", ctx)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            rank_device("cuda", ctx)
    with pytest.raises(ConfigError, match="RANK=.* is outside"):
        init_distributed({"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "cpu")


def test_a_process_outside_a_group_exits_as_sys_exit_does():
    from memdistill.distributed import exit_process

    with pytest.raises(SystemExit) as info:
        exit_process(3)
    assert info.value.code == 3


def test_a_rank_ends_without_interpreter_shutdown_and_loses_no_output(tmp_path):
    """After joining a group, exit_process flushes buffered output and log records, then
    ends the process with the status given and without the interpreter's shutdown
    (where gloo's leftover worker threads can abort the process): atexit handlers do
    not run."""
    script = tmp_path / "rank.py"
    script.write_text(
        "import atexit, logging, sys\n"
        "import memdistill.distributed as d\n"
        "d._joined_group = True  # as init_distributed sets it under torchrun\n"
        "logging.basicConfig(filename=sys.argv[1], level=logging.INFO)\n"
        "atexit.register(lambda: print('interpreter shutdown ran'))\n"
        "print('buffered ' * 50)  # stdout is a pipe: block-buffered, not yet written\n"
        "logging.getLogger('memdistill').info('last log record')\n"
        "d.exit_process(5)\n")
    log = tmp_path / "run.log"
    proc = subprocess.run([sys.executable, str(script), str(log)], env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 5, proc.stderr
    assert proc.stdout.count("buffered") == 50 and "shutdown ran" not in proc.stdout
    assert "last log record" in log.read_text()


def test_meta_batch_one_is_the_plain_meta_step(one_thread):
    d = Distiller(tiny_config(**{"outer.meta_batch": 1}), tiny_dataset())
    mem = d.new_memory()
    a, b = d.outer_gradient(mem, 2), d.meta_step(mem, 2)
    assert a[0] == b[0] and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_the_split_unroll_with_one_share_is_the_plain_checkpointed_meta_gradient(one_thread):
    """The split engine (update VJP + Hessian-vector product of each share) with a
    single share, all classes, computes the same meta-gradient as the plain one."""
    d = Distiller(tiny_config(**{"outer.meta_batch": 1, "memory.coeff_alpha": 0.0}), tiny_dataset())
    mem = d.new_memory()
    plain = d.meta_step(mem, 1)
    d._split = True  # one rank holding every class: the reductions are identities
    split = d.meta_step(mem, 1)
    assert split[0] == pytest.approx(plain[0], rel=1e-6)
    for a, b in zip(split[1], plain[1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), (a - b).abs().max()
        assert b.abs().max() > 0


# ------------------------------------------------------------------- two ranks
@pytest.mark.parametrize("name,meta_batch,split", [("grad2", 2, False), ("grad3", 3, False), ("split", 2, True)])
def test_averaged_meta_gradient_equals_the_single_process_one_over_all_unrolls(two_ranks, one_thread, monkeypatch,
                                                                                 name, meta_batch, split):
    """Unrolls spread over ranks, or (``split``) every unroll split over ranks by class
    with the inner gradients summed inside the unroll: the same meta-gradient."""
    import functools

    from memdistill.data import ImageDataset

    got = torch.load(two_ranks / f"{name}.pt")
    before = torch.get_default_dtype()
    monkeypatch.setattr(ImageDataset, "normalize",
                        functools.partialmethod(ImageDataset.normalize, dtype=torch.float64))
    try:
        torch.set_default_dtype(torch.float64)
        over = {"outer.meta_batch": meta_batch, "outer.window": 2} if split else {"outer.meta_batch": meta_batch}
        d = Distiller(tiny_config(**over), tiny_dataset())
        mem = d.new_memory()
        mem.tensors = {k: v.detach().double().requires_grad_() for k, v in mem.tensors.items()}
        # the reference: every unroll of the iteration in this one process, then the mean
        per_unroll = [d.meta_step(mem, 1, sample=j) for j in range(meta_batch)]
    finally:
        torch.set_default_dtype(before)
    ref = [sum(r[1][i] for r in per_unroll) / meta_batch for i in range(len(per_unroll[0][1]))]
    assert got["grads"][0].dtype == torch.float64
    # spread unrolls: the same sums up to float64 rounding; split unrolls add each
    # class's share in another order, so a little more rounding
    tol = {"rtol": 1e-9, "atol": 1e-12} if split else {"rtol": 1e-12, "atol": 1e-14}
    for g, r in zip(got["grads"], ref):
        assert torch.allclose(g, r, **tol), (g - r).abs().max()
    assert got["loss"] == pytest.approx(sum(r[0] for r in per_unroll) / meta_batch, rel=tol["rtol"])
    # and the unrolls differ: two ranks really computed different samples
    assert not torch.allclose(per_unroll[0][1][0], per_unroll[1][1][0])


def test_two_ranks_distill_the_same_memory_as_one_process(two_ranks, one_thread):
    got = torch.load(two_ranks / "full.pt")
    ref = Distiller(tiny_config(**{"outer.meta_batch": 2}), tiny_dataset()).run()
    assert got["iterations"] == ref.iterations == 4
    for k, v in ref.memory.tensors.items():
        assert torch.equal(got["memory"][k], v), k
    assert got["losses"] == [r["loss"] for r in ref.history]
    one = Distiller(tiny_config(**{"outer.meta_batch": 1}), tiny_dataset()).run()
    assert not torch.equal(one.memory.tensors["bases"], ref.memory.tensors["bases"])


def test_two_ranks_distill_with_a_model_pool_as_one_process(two_ranks, one_thread):
    """Three unrolls per outer step from pool members, on two ranks (unrolls 0 and 2 on
    rank 0, 1 on rank 1): each rank receives the members the other advanced."""
    got = torch.load(two_ranks / "pool.pt")
    ref = Distiller(tiny_config(**POOL), tiny_dataset()).run()
    assert got["iterations"] == ref.iterations == 4 and got["losses"] == [r["loss"] for r in ref.history]
    for k, v in ref.memory.tensors.items():
        assert torch.equal(got["memory"][k], v), k
    assert [r["pool_steps"] for r in ref.history][-1] != [0, 0, 0]  # members really advanced


def test_two_ranks_distill_with_feature_regression_steps_as_one_process(two_ranks, one_thread):
    """The regressions of an outer step spread over two ranks (0 and 2 on rank 0, 1 on
    rank 1), the regression networks each rank trained sent to the other, then the unrolls."""
    got = torch.load(two_ranks / "regression.pt")
    ref = Distiller(tiny_config(**REGRESSION), tiny_dataset()).run()
    assert [r["objective"] for r in ref.history] == ["regression", "regression", "unroll", "unroll"]
    assert got["iterations"] == ref.iterations == 4 and got["losses"] == [r["loss"] for r in ref.history]
    for k, v in ref.memory.tensors.items():
        assert torch.equal(got["memory"][k], v), k
    assert ref.history[1]["pool_steps"] != [0, 0, 0]  # the second step's networks had trained in the first


def test_a_two_rank_run_resumes_exactly_with_two_ranks_or_one(two_ranks, one_thread, tmp_path):
    full = torch.load(two_ranks / "full.pt")
    stopped, resumed = torch.load(two_ranks / "stopped.pt"), torch.load(two_ranks / "resumed.pt")
    assert stopped["iterations"] == 2 and resumed["iterations"] == 4
    for k, v in full["memory"].items():
        assert torch.equal(resumed["memory"][k], v), k
    lines = (two_ranks / "run.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [0, 1, 2, 3]  # written once, by rank 0
    assert torch.load(two_ranks / "run.ckpt", weights_only=True)["iteration"] == 4
    # the 2-rank checkpoint at iteration 2 resumed by a single process (world size 1)
    ckpt = tmp_path / "copy.ckpt"
    ckpt.write_bytes((two_ranks / "at2.ckpt").read_bytes())
    assert torch.load(ckpt, weights_only=True)["iteration"] == 2
    one = Distiller(tiny_config(**{"outer.meta_batch": 2}), tiny_dataset()).run(checkpoint=ckpt, resume=True)
    for k, v in full["memory"].items():
        assert torch.equal(one.memory.tensors[k], v), k


def test_evaluation_runs_spread_over_ranks_give_the_serial_numbers(two_ranks, one_thread):
    from memdistill.evaluate import TrainConfig, TrainingSet, evaluate

    got = torch.load(two_ranks / "evaluate.pt")
    x = torch.randn(12, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    y = torch.arange(12) % 4
    ref = evaluate(TrainingSet(x, y), tiny_dataset(), TrainConfig(arch="convnet", arch_options={"width": 8},
                   epochs=3, batch_size=8), runs=3, seed=1)
    assert got["accuracies"] == ref.accuracies and len(ref.accuracies) == 3
    assert json.dumps(got["per_class"]) == json.dumps(ref.per_class)


def test_a_rank_failing_mid_run_ends_the_job_and_the_checkpoint_stays_loadable(tmp_path, one_thread):
    ckpt = tmp_path / "fail.ckpt"
    task = {"name": "fail", "kind": "distill", "config": {"outer.meta_batch": 2, "outer.iterations": 6},
            "checkpoint": str(ckpt), "fail_at": 3, "fail_rank": 1}
    # the launcher checks its workers every 5 s, so the surviving rank meets the dead one
    # in a collective first, as a rank on another machine would
    proc, seconds = launch(tmp_path, [task], launcher=("--monitor-interval", "5"))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert seconds < 60, f"the job took {seconds:.0f} s to notice a dead rank"
    assert "exitcode  : 7" in out  # torchrun names the rank that died and how
    assert "DistributedError: rank 0 of 2: all-reduce failed" in out  # the survivor says why it stops
    assert "relaunch with --resume" in out
    assert not (tmp_path / "fail.pt").exists()
    snap = torch.load(ckpt, weights_only=True)  # intact: written atomically by rank 0
    assert snap["iteration"] == 3
    # and resumable, here by a single process: it finishes the run as if nothing happened
    cfg = tiny_config(**{"outer.meta_batch": 2, "outer.iterations": 6})
    resumed = Distiller(cfg, tiny_dataset()).run(checkpoint=ckpt, resume=True)
    ref = Distiller(cfg, tiny_dataset()).run()
    assert resumed.iterations == 6
    for k, v in ref.memory.tensors.items():
        assert torch.equal(resumed.memory.tensors[k], v), k


def test_torchrun_distill_command_on_mnist_matches_one_process(data_root, tmp_path, one_thread, capsys):
    """`torchrun --nproc-per-node 2 -m memdistill distill ...`: one memory file written by
    rank 0, equal to a single process's with the same meta-batch; evaluation runs spread."""
    from memdistill import load
    from memdistill.cli import main

    def args(out):
        return ["distill", "--dataset", "mnist", "--budget-ipc", "1", "--root", str(data_root),
                "--iterations", "2", "--inner-steps", "2", "--bases", "4", "--downsample", "4",
                "--set", "inner.width=8", "--set", "inner.n_per_class=2", "--set", "outer.real_per_class=4",
                "--set", "outer.meta_batch=2", "--set", "evaluation.epochs=1", "--set", "evaluation.width=8",
                "--set", "evaluation.runs=2", "--out", str(out), "--no-progress"]

    two = tmp_path / "two.safetensors"
    proc = torchrun(["-m", "memdistill", *args(two)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # only rank 0 reports and writes
    assert len((tmp_path / "two.metrics.jsonl").read_text().splitlines()) == 2
    one = tmp_path / "one.safetensors"
    assert main(args(one)) == 0
    a, b = load(two), load(one)
    for k, v in b.memory.tensors.items():
        assert torch.equal(a.memory.tensors[k], v), k
    # the final validation (2 runs, one per rank) gives the serial numbers
    last = [json.loads((tmp_path / f"{n}.metrics.jsonl").read_text().splitlines()[-1]) for n in ("two", "one")]
    assert last[0]["eval"]["mean"] == last[1]["eval"]["mean"] and last[0]["eval"]["std"] == last[1]["eval"]["std"]
