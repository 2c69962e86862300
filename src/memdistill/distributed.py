"""Several processes, one run: the process group, who computes what, and the reductions.

A distillation launched by ``torchrun --nproc-per-node N memdistill distill ...`` runs
the same outer loop in every process ("rank"). Each rank computes its share of the
outer iteration's inner unrolls; the meta-gradients are summed with one all-reduce, so
every rank takes the identical outer step. Only rank 0 writes files and logs progress.

Work is split by index: item ``j`` of ``n`` (an inner unroll, an evaluation run, a
class) belongs to rank ``j mod world_size``, so the union over ranks is exactly what a
single process computes.

Everything here also works without ``torch.distributed``: :func:`single_process` is a
group of one whose collectives return their input, so library code has one path.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping, NoReturn, Sequence

import torch

from .errors import ConfigError, DistributedError

__all__ = [
    "DistContext",
    "single_process",
    "launched_by_torchrun",
    "init_distributed",
    "rank_device",
    "exit_process",
]

log = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

_joined_group = False  # set once this process joins a process group (see exit_process)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group: ``rank`` of ``world_size`` (``local_rank`` on
    its machine). ``backend`` is ``None`` for a single process (no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    # -------------------------------------------------------------- who does what
    @property
    def distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, evaluates and writes files."""
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether item ``index`` of a split is this rank's (``index mod world_size``)."""
        return index % self.world_size == self.rank

    def shard(self, n: int) -> list[int]:
        """This rank's items of ``range(n)``: ``rank, rank + world_size, ...``."""
        return list(range(self.rank, n, self.world_size))

    # ------------------------------------------------------------- collectives
    def _collective(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:  # gloo/NCCL failures and timeouts surface as RuntimeError
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed ({str(exc).splitlines()[0]}). "
                "Another rank has most likely stopped (look for its own error in the log) or "
                "stalled past the collective timeout; the last checkpoint is intact: fix the cause "
                "and relaunch with --resume"
            ) from exc

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all ranks, in place; every rank gets the same values."""
        if self.distributed:
            import torch.distributed as tdist

            self._collective("all-reduce", tdist.all_reduce, tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as tdist

        out: list[Any] = [None] * self.world_size
        self._collective("all-gather", tdist.all_gather_object, out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (others pass anything, e.g. ``None``)."""
        if not self.distributed:
            return obj
        import torch.distributed as tdist

        box = [obj]
        self._collective("broadcast", tdist.broadcast_object_list, box, src=src)
        return box[0]

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes | None:
        """Rank ``src``'s bytes (or ``None``) on every rank."""
        return self.broadcast_object(data, src=src)

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as tdist

            self._collective("barrier", tdist.barrier)

    def close(self, synchronize: bool = False) -> None:
        """Leave the process group (no-op for a single process).

        With ``synchronize`` (the normal end of a run) every rank first waits for the
        others, so no process tears down its connections, or exits, while another still
        talks to it (seen to abort a rank at exit with gloo). Leave it off on failure
        paths, where a lost rank would make the wait run into the collective timeout."""
        if self.distributed:
            import torch.distributed as tdist

            if synchronize and tdist.is_initialized():
                try:
                    self.barrier()
                except DistributedError:  # a rank was lost after all: leave anyway
                    log.debug("no barrier before leaving the process group", exc_info=True)
            try:
                if tdist.is_initialized():
                    tdist.destroy_process_group()
            except RuntimeError:  # best effort: a group that lost a rank may not tear down cleanly
                log.debug("process group teardown failed", exc_info=True)


def single_process() -> DistContext:
    """A group of one: rank 0 of 1, collectives return their input."""
    return DistContext()


def launched_by_torchrun(env: Mapping[str, str]) -> bool:
    """Whether ``env`` (e.g. ``os.environ``) holds the variables torchrun sets."""
    return "RANK" in env and "WORLD_SIZE" in env


def _int_var(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(f"environment variable {name} is missing; launch with torchrun, which sets "
                              f"{', '.join(TORCHRUN_VARIABLES)}")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; launch with torchrun") from None


def rank_device(name: str, ctx: DistContext) -> torch.device:
    """The device of this rank for ``--device name`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``).

    Under torchrun ``cuda`` and ``auto`` mean ``cuda:LOCAL_RANK``, one GPU per process.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: cpu, cuda, cuda:N, auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; valid: cpu, cuda, cuda:N, auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA device is available; use --device cpu")
        if ctx.world_size > 1:
            if dev.index is not None and dev.index != ctx.local_rank:
                raise ConfigError(
                    f"device {name!r} under torchrun: each process uses cuda:LOCAL_RANK (here cuda:"
                    f"{ctx.local_rank}); pass --device cuda and choose GPUs with CUDA_VISIBLE_DEVICES"
                )
            dev = torch.device("cuda", ctx.local_rank)
        if (dev.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"device {dev} does not exist: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s); use fewer --nproc-per-node or another index")
    return dev


def init_distributed(
    env: Mapping[str, str], device: str = "cpu", timeout_s: float = 1800.0
) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun prepared (or none, when not launched by it).

    Args:
        env: the environment (pass ``os.environ``); torchrun sets ``RANK``,
            ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``; the backend is NCCL on
            CUDA and gloo on CPU.
        timeout_s: how long a collective may wait for the other ranks before the run
            stops with :class:`~memdistill.errors.DistributedError` (a stalled rank
            cannot hang the job forever).

    Returns:
        ``(context, device)``: this rank's context and the device it computes on.
    """
    if not launched_by_torchrun(env) or _int_var(env, "WORLD_SIZE") == 1:
        ctx = single_process()
        return ctx, rank_device(device, ctx)
    import torch.distributed as tdist

    if not tdist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run in one process (without torchrun)")
    rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
    local = _int_var(env, "LOCAL_RANK", default=0)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside [0, WORLD_SIZE={world}); launch with torchrun")
    if timeout_s <= 0:
        raise ConfigError(f"the collective timeout must be > 0 seconds, got {timeout_s}")
    dev = rank_device(device, DistContext(rank, world, local, None))
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and not tdist.is_nccl_available():
        raise ConfigError("NCCL is not available in this PyTorch build; use --device cpu (gloo)")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world,
                              "timeout": datetime.timedelta(seconds=timeout_s)}
    if dev.type == "cuda":
        kwargs["device_id"] = dev
    try:
        tdist.init_process_group(**kwargs)
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"rank {rank} of {world} could not join the process group ({str(exc).splitlines()[0]}); "
            "check --rdzv-endpoint / MASTER_ADDR:MASTER_PORT are reachable from every machine"
        ) from exc
    global _joined_group
    _joined_group = True
    log.info("rank %d of %d (local rank %d) on %s, backend %s", rank, world, local, dev, backend)
    return DistContext(rank, world, local, backend), dev


def exit_process(code: int) -> NoReturn:
    """End this process with exit status ``code``: the last call of a program run by torchrun.

    A process that never joined a process group exits as ``sys.exit(code)`` does. One
    that did flushes its output and log handlers and ends with ``os._exit(code)``,
    skipping the interpreter's shutdown. The reason is a race inside PyTorch's gloo
    backend: once ``torch._dynamo`` is imported (every ``torch.optim`` step imports it),
    ``destroy_process_group()`` no longer destroys the gloo process group, so its worker
    threads outlive :meth:`DistContext.close`. A worker still releasing a finished
    collective (which holds tensors owned by Python objects) when the interpreter shuts
    down cannot take the GIL and calls ``std::terminate``: a rank that finished its run
    aborts with SIGABRT, torchrun kills the others and the job fails (seen in CI, rare and
    timing-dependent; the stack is
    ``ProcessGroupGloo::runLoop`` -> ``~AsyncBarrierWork`` -> ``~AsyncAllreduceWork`` ->
    ``take_gil`` during ``Py_FinalizeEx``). Without the shutdown there is nothing to race.
    Every file this project writes is complete before this point (written to a temporary
    file and renamed), so nothing is lost by skipping ``atexit`` handlers.
    """
    if not _joined_group:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more to write
            pass
    logging.shutdown()
    os._exit(code)


def sum_over_ranks(ctx: DistContext, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each tensor over all ranks with one all-reduce of a flat buffer."""
    tensors = list(tensors)
    if not ctx.distributed or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    ctx.all_reduce_sum(flat)
    out, start = [], 0
    for t in tensors:
        n = t.numel()
        out.append(flat[start : start + n].view_as(t))
        start += n
    return out


def load_bytes(data: bytes, map_location: torch.device | str) -> Any:
    """``torch.load`` (weights only) of bytes broadcast from rank 0."""
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
