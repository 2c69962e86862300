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

__all__ = ["table", "join", "rank0_first", "resolve_device", "run_header", "load_memory_file", "load_data",
           "data_load_options", "check_memory_dataset", "dataset_record"]


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


def data_load_options(args: argparse.Namespace, name: str) -> dict[str, object]:
    """The keyword options of :func:`~memdistill.data.load_dataset` the shared data
    flags give for dataset ``name`` (``--download`` for built-ins; ``--skip-bad-images``,
    ``--rebuild-manifest`` and the progress display for ``folder:``/``npz:`` data)."""
    from ..data import is_user_dataset

    if is_user_dataset(name):
        return {"skip_bad_images": bool(getattr(args, "skip_bad_images", False)),
                "rebuild_manifest": bool(getattr(args, "rebuild_manifest", False)),
                "progress": not getattr(args, "no_progress", False)}
    return {"download": bool(getattr(args, "download", False))}


def load_data(args: argparse.Namespace, name: str, split: str):
    """One split of dataset ``name`` under the shared data flags (``--root`` ...)."""
    from ..data import load_dataset

    return load_dataset(name, split, root=args.root, **data_load_options(args, name))


def check_memory_dataset(mf, requested: str | None, file: str) -> str:
    """The dataset to evaluate memory file ``mf`` against: ``requested`` (``--dataset``)
    or the one it records; refuses another built-in dataset at once (a ``folder:``/``npz:``
    one is compared by content once loaded, :func:`~memdistill.data.check_dataset_source`)."""
    from ..data import is_user_dataset

    dataset = requested or mf.dataset
    if dataset != mf.dataset and not (is_user_dataset(dataset) and is_user_dataset(mf.dataset)):
        raise ConfigError(f"{file} holds a memory of {mf.dataset!r}, not {dataset!r}; evaluate it against {mf.dataset!r}")
    return dataset


def dataset_record(mf) -> dict | None:
    """The ``folder:``/``npz:`` dataset record a memory file keeps (``None`` for built-ins)."""
    return (mf.meta.get("extra") or {}).get("dataset")
