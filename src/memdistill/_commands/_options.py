"""Options several commands share, each declared once as an argparse parent parser, and
the description of one command.

Each function returns a fresh parent parser (``add_help=False``) for ``parents=``; a
command picks the ones that make sense for it (its :attr:`Command.parents`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["Command", "data_options", "device_option", "progress_option", "collective_option"]


COMMON = "common options"  # the help lists the shared options under this title, after the command's own


def _parent() -> tuple[argparse.ArgumentParser, argparse._ArgumentGroup]:
    p = argparse.ArgumentParser(add_help=False)
    return p, p.add_argument_group(COMMON)


def data_options(download: bool = True, user_data: bool = True) -> argparse.ArgumentParser:
    """``--root`` (where datasets live); for commands that read data, ``--download`` (built-in
    datasets) and ``--skip-bad-images`` / ``--rebuild-manifest`` (``folder:``/``npz:`` data)."""
    p, g = _parent()
    g.add_argument("--root", help="data folder (default: $MEMDISTILL_DATA, then ./data)")
    if download:
        g.add_argument("--download", action="store_true", help="fetch missing files from official mirrors")
    if user_data:
        g.add_argument("--skip-bad-images", action="store_true",
                       help="folder: datasets: skip (and count) files that are not readable images instead of failing")
        g.add_argument("--rebuild-manifest", action="store_true",
                       help="folder:/npz: datasets: accept the files as they are now, rewriting their manifest")
    return p


def device_option(default: str | None) -> argparse.ArgumentParser:
    """``--device``; ``default=None`` leaves the choice to the run's configuration."""
    p, g = _parent()
    shown = "the configuration's device" if default is None else default
    g.add_argument("--device", default=default, help=f"cpu | cuda | cuda:N | auto (default: {shown})")
    return p


def progress_option() -> argparse.ArgumentParser:
    """``--no-progress``, for every long-running command."""
    p, g = _parent()
    g.add_argument("--no-progress", action="store_true",
                   help="no progress display (a bar on a terminal, a line every 30 s in a log otherwise)")
    return p


def collective_option() -> argparse.ArgumentParser:
    """``--collective-timeout``, for commands that join a torchrun process group."""
    p, g = _parent()
    g.add_argument("--collective-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others before failing (default 1800)")
    return p


def _no_parents() -> Sequence[argparse.ArgumentParser]:
    return ()


@dataclass(frozen=True)
class Command:
    """One ``memdistill`` command.

    Attributes:
        name: the word on the command line.
        help: one line for ``memdistill --help``.
        add_arguments: declares the command's own arguments on its parser.
        run: the handler; returns the exit status.
        parents: builds the shared option parsers the command takes (see the functions above).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    parents: Callable[[], Sequence[argparse.ArgumentParser]] = _no_parents

    def register(self, commands) -> argparse.ArgumentParser:
        """Add this command to ``commands`` (the result of ``add_subparsers``)."""
        p = commands.add_parser(self.name, help=self.help, parents=list(self.parents()))
        self.add_arguments(p)
        p.set_defaults(func=self.run)
        return p
