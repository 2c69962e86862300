"""``memdistill show``: render a memory's bases, recalled examples or query recalls as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ._options import Command
from ._run import load_memory_file


def add_arguments(w: argparse.ArgumentParser) -> None:
    w.add_argument("file")
    w.add_argument("--png", help="output PNG (default FILE.png)")
    w.add_argument("--per-class", type=int, default=10, help="examples per class / per query")
    w.add_argument("--query", action="append", metavar="Q",
                   help="render the recall of a query instead: a class (3, Trouser), a coordinate (even), "
                        "a mixture (3:0.5,8:0.5) or group:0,2,4; repeat for more rows")
    w.add_argument("--interpolate", nargs=2, metavar=("A", "B"), help="render the path between classes A and B")
    w.add_argument("--steps", type=int, default=9, help="points on the --interpolate path (default 9)")
    w.add_argument("--rows", type=int, default=4, help="slots shown along --interpolate (default 4)")


def cmd_show(args: argparse.Namespace) -> int:
    from ..queries import render_interpolation, render_queries
    from ..viz import render_memory

    mf = load_memory_file(args.file)
    out = Path(args.png) if args.png else Path(args.file).with_suffix(".png")
    if args.query and args.interpolate:
        raise ConfigError("give either --query or --interpolate A B, not both")
    if args.query:
        render_queries(mf, args.query, out, per_query=args.per_class)
    elif args.interpolate:
        render_interpolation(mf, args.interpolate[0], args.interpolate[1], args.steps, out, rows=args.rows)
    else:
        render_memory(mf, out, max_per_class=args.per_class)
    print(f"wrote {out}")
    return 0


COMMAND = Command("show", "render the bases and recalled examples as a PNG", add_arguments, cmd_show)
