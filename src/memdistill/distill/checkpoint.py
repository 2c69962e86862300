"""Checkpoints and metrics of a distillation run.

A checkpoint is a ``torch.save`` of the run state's snapshot (see
:meth:`.loop.RunState.snapshot`: ``iteration``, ``lr``, ``skipped``, ``rollbacks``,
``last_eval`` as JSON, ``memory`` tensors, outer ``optimizer`` state, the model
``pool``) plus the run's
``config`` as JSON, written atomically. A run resumes from it only when the settings
that shape the memory (``dataset``, ``seed``, ``zca``, ``memory``) and the model pool's
(``outer.pool_*``) are unchanged.

Metrics are JSON lines, one record per outer iteration.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_bytes
from ..config import DistillConfig, config_to_dict
from ..distributed import load_bytes
from ..errors import ConfigError, MemdistillError
from ..memory import Memory

__all__ = ["check_resume", "load_checkpoint", "save_checkpoint", "append_metrics", "read_metrics",
           "reset_metrics", "RESUME_KEYS"]

RESUME_KEYS = ("dataset", "seed", "zca", "memory")
"""Configuration sections that must be unchanged for a run to resume from a checkpoint."""
POOL_KEYS = ("pool_size", "pool_unroll", "pool_max_steps")
"""Options of ``outer`` that must be unchanged too: the model pool the checkpoint holds."""
REGRESSION_KEYS = ("regression_steps", "regression_pool", "regression_max_steps")
"""And those of the feature-regression pool and phase (:mod:`.regression`)."""

PathLike = str | os.PathLike


def save_checkpoint(path: PathLike, snapshot: dict[str, Any], config: DistillConfig) -> None:
    """Write ``snapshot`` and ``config`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save({**snapshot, "config": json.dumps(config_to_dict(config))}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _read(path: PathLike, data: bytes | None, device: str | torch.device) -> dict[str, Any]:
    try:
        if data is not None:
            return load_bytes(data, map_location=device)
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint
        raise MemdistillError(f"checkpoint {path} cannot be read ({exc}); delete it to start afresh") from None


def _check_config(snapshot: dict[str, Any], config: DistillConfig, path: PathLike) -> None:
    saved_cfg = json.loads(snapshot["config"])
    now = config_to_dict(config)
    for key in RESUME_KEYS:
        if saved_cfg.get(key) != now.get(key):
            raise ConfigError(
                f"checkpoint {path} was written with a different {key} ({saved_cfg.get(key)!r} vs "
                f"{now.get(key)!r}); resume with the same configuration or start afresh without --resume"
            )
    # checkpoints from before the pool / feature regression had none: the first key's 0
    _check_outer_keys(saved_cfg["outer"], now["outer"], POOL_KEYS, "its model pool", path)
    _check_outer_keys(saved_cfg["outer"], now["outer"], REGRESSION_KEYS, "its feature-regression phase", path)


def _check_outer_keys(saved: dict[str, Any], now: dict[str, Any], keys: tuple[str, ...], what: str,
                      path: PathLike) -> None:
    """Refuse a resume whose ``outer.<keys>`` differ from the checkpoint's while the
    feature they configure (on when ``keys[0]`` is non-zero) is on in either."""
    switch = keys[0]
    if not (saved.get(switch, 0) or now[switch]):
        return
    for key in keys:
        was, want = saved.get(key, 0 if key == switch else None), now[key]
        if was != want:
            raise ConfigError(
                f"checkpoint {path} was written with outer.{key}={was!r} ({what}), this run has {want!r}; "
                "resume with the same settings or start afresh without --resume"
            )


def load_checkpoint(path: PathLike, config: DistillConfig, memory: Memory, data: bytes | None = None,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """The snapshot saved at ``path`` (or in ``data``, its bytes), checked against the
    run's ``config`` and against ``memory``'s tensor names and shapes.

    Raises:
        MemdistillError: the checkpoint cannot be read.
        ConfigError: it was written by a run with other memory settings.
    """
    snapshot = _read(path, data, device)
    _check_config(snapshot, config, path)
    for k, v in snapshot["memory"].items():
        if k not in memory.tensors or memory.tensors[k].shape != v.shape:
            raise ConfigError(f"checkpoint {path} does not match this memory (tensor {k!r})")
    return snapshot


def check_resume(checkpoint_path: PathLike, config: DistillConfig) -> None:
    """Raise what a run with ``config`` resuming from ``checkpoint_path`` would refuse
    with, without running anything (so a command can refuse before writing any file).

    A missing checkpoint is fine: the run starts afresh.

    Raises:
        MemdistillError: the checkpoint cannot be read.
        ConfigError: it was written with a different dataset, seed, zca or memory.
    """
    path = Path(checkpoint_path)
    if path.exists():
        _check_config(_read(path, None, "cpu"), config, path)


def reset_metrics(path: PathLike) -> None:
    """Start an empty metrics file."""
    atomic_write_bytes(path, b"")


def append_metrics(path: PathLike, record: dict[str, Any]) -> None:
    """Append one iteration's record."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def read_metrics(path: PathLike, upto: int) -> list[dict[str, Any]]:
    """Keep the records of iterations before ``upto`` (rewritten atomically)."""
    p = Path(path)
    if not p.exists():
        return []
    kept = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    kept = [r for r in kept if r.get("iteration", 0) < upto]
    atomic_write_bytes(p, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept
