"""Queries in label space: build query vectors and recall what a memory holds for them.

A query is any vector ``q`` of the memory's label space (length ``L``); the ``i``-th
recalled example is ``x_i(q) = up(q^T A_i B)``, linear in ``q``. These helpers build the
common queries by class *name or index* (resolved against the memory file's label
space, so a ``parity`` memory's class ``3`` is its target row ``e_3 + e_odd``):

- :func:`class_query`: one class;
- :func:`mixture_query`: a weighted mixture of classes (weights as given);
- :func:`group_query`: a named group of classes, the normalised mixture (weights ``1/n``);
- :func:`interpolation_queries`: ``steps`` points on the line from class ``a`` to ``b``;
- :func:`parse_query`: the command-line syntax (``3``, ``even``, ``3:0.5,8:0.5``,
  ``group:0,2,4,6,8``).

Recall itself is :meth:`MemoryFile.recall(query=q) <memdistill.MemoryFile.recall>`:
``(L,)`` or ``(Q, L)`` in, ``(Q*r, C, H, W)`` images out; :func:`recall_query` returns
them as ``(Q, r, C, H, W)``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from .errors import ConfigError
from .labels import LabelSpace, label_space_of

__all__ = [
    "class_query",
    "mixture_query",
    "group_query",
    "interpolation_queries",
    "parse_query",
    "recall_query",
    "resolve_class",
]


def _space(mem_file) -> LabelSpace:
    return label_space_of(mem_file)


def resolve_class(class_names: Sequence[str], key: str | int) -> int:
    """Index of a class given by name (exact) or by index (int or digits).

    Names win over indices, so ``"3"`` on MNIST is the class named ``3``."""
    names = [str(c) for c in class_names]
    if isinstance(key, str):
        k = key.strip()
        if k in names:
            return names.index(k)
        if k.lstrip("-").isdigit():
            key = int(k)
        else:
            raise ConfigError(f"unknown class {key!r}; valid class names: {', '.join(names)} "
                              f"(or indices 0..{len(names) - 1})")
    if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < len(names):
        raise ConfigError(f"class index {key!r} is out of range; valid: 0..{len(names) - 1} ({', '.join(names)})")
    return int(key)


def class_query(mem_file, cls: str | int) -> torch.Tensor:
    """``(L,)`` query of one class (its target vector in the label space)."""
    space = _space(mem_file)
    return space.table[resolve_class(space.class_names, cls)].clone()


def mixture_query(mem_file, weights: Mapping[str | int, float]) -> torch.Tensor:
    """``(L,)`` query ``sum_c w_c q_c`` over classes (weights used as given)."""
    if not weights:
        raise ConfigError("a mixture needs at least one class with a weight")
    q = torch.zeros(_space(mem_file).width)
    for cls, w in weights.items():
        w = float(w)
        if not math.isfinite(w):
            raise ConfigError(f"the weight of class {cls!r} is {w}; weights must be finite numbers")
        q += w * class_query(mem_file, cls)
    return q


def group_query(mem_file, members: Sequence[str | int]) -> torch.Tensor:
    """``(L,)`` normalised mixture (weights ``1/n``) of the ``n`` member classes."""
    if len(members) == 0:
        raise ConfigError("a group needs at least one class")
    space = _space(mem_file)
    idx = [resolve_class(space.class_names, m) for m in members]
    if len(set(idx)) != len(idx):
        raise ConfigError(f"a group lists a class twice: {list(members)}")
    return space.table[idx].mean(0)


def interpolation_queries(mem_file, a: str | int, b: str | int, steps: int) -> torch.Tensor:
    """``(steps, L)`` queries ``(1 - t) q_a + t q_b`` for ``t`` evenly in ``[0, 1]``."""
    if int(steps) < 2:
        raise ConfigError(f"an interpolation needs steps >= 2 (both ends), got {steps}")
    qa, qb = class_query(mem_file, a), class_query(mem_file, b)
    t = torch.linspace(0, 1, int(steps)).unsqueeze(1)
    return (1 - t) * qa + t * qb


def parse_query(mem_file, spec: str) -> torch.Tensor:
    """``(L,)`` query from text.

    - ``3`` or ``Trouser``: a class (its target row); on a label space with more
      coordinates, a coordinate name such as ``even`` (its unit vector);
    - ``3:0.5,8:0.5``: a weighted mixture of classes/coordinates;
    - ``group:0,2,4,6,8``: the normalised mixture of a group of classes.
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty query; e.g. 3, 3:0.5,8:0.5 or group:0,2,4,6,8")
    if spec.startswith("group:"):
        return group_query(mem_file, [m for m in spec[len("group:"):].split(",") if m.strip()])
    space = _space(mem_file)
    if ":" not in spec:
        return _single(space, spec)
    q = torch.zeros(space.width)
    for part in spec.split(","):
        name, _, w = part.rpartition(":")
        try:
            weight = float(w)
        except ValueError:
            raise ConfigError(f"query part {part!r}: expected NAME:WEIGHT with a number weight") from None
        if not math.isfinite(weight):
            raise ConfigError(f"query part {part!r}: the weight must be finite")
        q += weight * _single(space, name)
    return q


def _single(space: LabelSpace, name: str) -> torch.Tensor:
    name = name.strip()
    if name in space.class_names or name in space.coordinates or name in space.row_names:
        return space.query_of(name)
    return space.table[resolve_class(space.class_names, name)].clone()


def recall_query(mem_file, query: torch.Tensor) -> torch.Tensor:
    """Recalled images ``(Q, r, C, H, W)`` (normalised space) for ``(L,)`` or ``(Q, L)``
    queries; refuses wrong lengths and NaN/Inf like :meth:`Memory.recall`."""
    q = torch.as_tensor(query)
    x, _ = mem_file.recall(query=q)
    n = 1 if q.ndim == 1 else q.shape[0]
    return x.view(n, mem_file.memory.query_slots, *mem_file.image_shape)


# ---------------------------------------------------------------------- pictures
def render_queries(mem_file, specs: Sequence[str], path, per_query: int = 10):
    """PNG of the recalled examples of each query in ``specs`` (one row per query,
    up to ``per_query`` slots), in pixel space. Returns the path written."""
    from .viz import render_grid

    if not specs:
        raise ConfigError("give at least one query, e.g. --query 3 or --query 3:0.5,8:0.5")
    if per_query < 1:
        raise ConfigError(f"per_query must be >= 1, got {per_query}")
    q = torch.stack([parse_query(mem_file, s) for s in specs])
    n = min(per_query, mem_file.memory.query_slots)
    x = recall_query(mem_file, q)[:, :n]
    pixels = mem_file.to_pixels(x.flatten(0, 1))
    title = f"{mem_file.dataset}: recalled examples of {len(specs)} quer{'y' if len(specs) == 1 else 'ies'}"
    return render_grid(pixels, n, path, title=title, row_labels=[_short(s) for s in specs])


def render_interpolation(mem_file, a: str | int, b: str | int, steps: int, path, rows: int = 4):
    """PNG of recall along ``(1 - t) q_a + t q_b``: one column per step, one row per
    slot (the first ``rows`` slots), in pixel space. Returns the path written."""
    from .viz import render_grid

    if rows < 1:
        raise ConfigError(f"rows must be >= 1, got {rows}")
    q = interpolation_queries(mem_file, a, b, steps)
    k = min(rows, mem_file.memory.query_slots)
    x = recall_query(mem_file, q)[:, :k]  # (steps, k, C, H, W)
    pixels = mem_file.to_pixels(x.transpose(0, 1).flatten(0, 1))
    space = _space(mem_file)
    na = space.class_names[resolve_class(space.class_names, a)]
    nb = space.class_names[resolve_class(space.class_names, b)]
    return render_grid(pixels, int(steps), path, title=f"{mem_file.dataset}: {na} -> {nb} in {steps} steps",
                       row_labels=[f"slot {i}" for i in range(k)])


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
