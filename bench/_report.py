"""Shared helpers for benchmark scripts: machine description and doc blocks."""

from __future__ import annotations

import platform
import re
from datetime import datetime, timezone
from pathlib import Path

import torch

from memdistill._io import atomic_write_text

DOCS = Path(__file__).resolve().parents[1] / "docs"


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


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
