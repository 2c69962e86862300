"""The ``memdistill`` command line: a thin layer over the library.

Each command lives in its own module under ``memdistill/_commands/``: its arguments next
to its handler. Options several commands share (``--root``, ``--download``, ``--device``,
``--no-progress``, ``--collective-timeout``) are declared once, as argparse parent parsers,
in ``_commands/_options.py``. To add a command: write a module with a ``COMMAND`` and list
it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn, Sequence

from ._commands import continual, datasets, derive, distill, evaluate, evaluate_subset, info, show
from ._commands._options import Command
from ._commands.distill import _distill_config  # noqa: F401  (the distill config from parsed flags; tests use it)
from ._version import __version__
from .errors import MemdistillError

__all__ = ["COMMANDS", "build_parser", "main"]

#: The commands, in the order ``memdistill --help`` lists them.
COMMANDS: tuple[Command, ...] = tuple(m.COMMAND for m in (
    datasets, evaluate_subset, distill, evaluate, info, show, derive, continual))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="memdistill",
        description="Distill image datasets into addressable memories, and evaluate them.",
    )
    p.add_argument("--version", action="version", version=f"memdistill {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    finished = False
    try:
        code = int(args.func(args))
        finished = True
        return code
    except MemdistillError as exc:
        print(f"memdistill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"memdistill {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        dist = getattr(args, "_dist", None)  # set when the command joined a process group
        if dist is not None:
            dist.close(synchronize=finished)  # ranks that finished leave together


def run() -> NoReturn:
    """The ``memdistill`` program: :func:`main`, then the process ends with its status
    (through :func:`~memdistill.distributed.exit_process`, which a run under torchrun
    needs to end cleanly)."""
    from .distributed import exit_process

    exit_process(main())


if __name__ == "__main__":  # pragma: no cover
    run()
