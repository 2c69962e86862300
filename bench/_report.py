"""Shared helpers for benchmark scripts: machine description and doc blocks."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path


from memdistill._io import atomic_write_text
from memdistill._machine import describe_machine

DOCS = Path(__file__).resolve().parents[1] / "docs"


def machine() -> str:
    return describe_machine()


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def replace_block(doc: Path, key: str, body: str, title: str) -> None:
    """Replace the block between ``<!-- key:start -->`` and ``<!-- key:end -->`` in
    ``doc`` (appending it, under ``title``, when absent)."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n## {title}\n\n{block}\n"
    atomic_write_text(doc, text)
