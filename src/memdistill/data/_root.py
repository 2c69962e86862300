"""Where dataset files are looked for.

Lookup order: the ``root`` argument if given; else the folders in the ``MEMDISTILL_DATA``
environment variable (several may be joined with ``os.pathsep``); else ``./data``. For
Fashion-MNIST, Debian's ``/usr/share/datasets/fashion-mnist`` (package
``dataset-fashion-mnist``) is searched last when it exists.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "DEFAULT_ROOT", "DEBIAN_FASHION_MNIST", "resolve_roots", "find_stray"]

ENV_VAR = "MEMDISTILL_DATA"
DEFAULT_ROOT = Path("data")
# Module-level so tests (and unusual systems) can point it elsewhere.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def _system_roots(dataset: str | None) -> list[Path]:
    if dataset is not None and dataset.lower() == "fashion-mnist":
        return [DEBIAN_FASHION_MNIST]
    return []


def resolve_roots(root: str | Path | None = None, dataset: str | None = None) -> list[Path]:
    """The folders searched for ``dataset``, in order (absolute paths).

    Args:
        root: an explicit data folder; when given it is the only user folder searched.
        dataset: registry name; adds system folders that exist for it (Debian's
            Fashion-MNIST folder, only when ``root`` is not given).

    Returns:
        ``[root]``; or the ``MEMDISTILL_DATA`` folders; or ``[./data]`` — followed by any
        existing system folder. Downloads go to the first entry.
    """
    if root is not None:
        return [Path(root).expanduser().absolute()]
    env = os.environ.get(ENV_VAR, "")
    roots = [Path(p).expanduser().absolute() for p in env.split(os.pathsep) if p.strip()]
    if not roots:
        roots = [DEFAULT_ROOT.absolute()]
    for extra in _system_roots(dataset):
        extra = Path(extra)
        if extra.is_dir() and extra.absolute() not in roots:
            roots.append(extra.absolute())
    return roots


def find_stray(
    roots: list[Path], names: set[str], *, max_depth: int = 3, max_entries: int = 20000
) -> list[Path]:
    """Files named one of ``names`` anywhere shallowly under ``roots``.

    Used to say "found X at Y, but it belongs in Z" when a layout is wrong; the walk is
    bounded in depth and entries so a huge data folder cannot stall an error message.
    """
    found: list[Path] = []
    seen = 0
    for root in roots:
        stack = [(root, 0)]
        while stack:
            folder, depth = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                seen += 1
                if seen > max_entries:
                    return found
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if depth < max_depth:
                            stack.append((Path(entry.path), depth + 1))
                    elif entry.name in names:
                        found.append(Path(entry.path))
                except OSError:
                    continue
    return found
