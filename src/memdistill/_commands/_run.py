"""What the command handlers share at run time: the device, joining torchrun, loading on
rank 0 first, plain-text tables and the header of every run record."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Sequence

import torch

from .._version import __version__
from ..errors import ConfigError

__all__ = ["table", "join", "rank0_first", "resolve_device", "run_header", "load_memory_file"]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """``rows`` under ``headers`` as left-aligned text columns with a dashed rule."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def join(args: argparse.Namespace, device_name: str | None):
    """This process's rank and device: joins the process group when launched by
    torchrun (``RANK``/``WORLD_SIZE`` set), else a single process. ``main`` closes it."""
    from ..distributed import init_distributed

    dist, device = init_distributed(os.environ, device_name, timeout_s=args.collective_timeout)
    args._dist = dist
    if not dist.is_main:  # only rank 0 logs progress
        logging.getLogger("memdistill").setLevel(logging.WARNING)
    return dist, device


def rank0_first(dist, load):
    """``load()`` on every rank, rank 0 first (so a download happens once), then the rest."""
    if dist.is_main:
        out = load()
        dist.barrier()
        return out
    dist.barrier()
    return load()


def resolve_device(name: str) -> torch.device:
    """``--device`` of a single-process command: ``auto`` picks CUDA when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; valid: cpu, cuda, cuda:N, auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA device is available; use --device cpu")
    return dev


def run_header(command: str, *, machine: object = None, **machine_extra: object) -> dict[str, object]:
    """The first keys of a command's JSON record: ``command``, ``argv``, ``version``,
    ``date`` (UTC) and ``machine``.

    ``machine`` is :func:`~memdistill._machine.machine_info` plus ``machine_extra`` (e.g.
    ``device=``, ``processes=``) unless given outright (the continual record keeps the
    one-line description its tables print).
    """
    if machine is None:
        from .._machine import machine_info

        machine = {**machine_info(), **machine_extra}
    return {"command": command, "argv": sys.argv[1:], "version": __version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine}


def load_memory_file(path: str):
    """The :class:`~memdistill.MemoryFile` at ``path``."""
    from ..memory.file import load_memory

    return load_memory(path)
