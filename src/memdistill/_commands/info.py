"""``memdistill info``: what a memory file holds."""

from __future__ import annotations

import argparse

from ._options import Command
from ._run import load_memory_file


def add_arguments(i: argparse.ArgumentParser) -> None:
    i.add_argument("file")


def cmd_info(args: argparse.Namespace) -> int:
    mf = load_memory_file(args.file)
    rep = mf.report()
    width = max(len(k) for k in rep)
    for k, v in rep.items():
        print(f"{k.ljust(width)}  {v}")
    return 0


COMMAND = Command("info", "what a memory file holds", add_arguments, cmd_info)
