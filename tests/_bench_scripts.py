"""Loading the benchmark scripts of ``bench/`` as modules, and reading the generated
blocks of the docs they write, for the tests that check those scripts."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    """``bench/<name>.py`` imported as the module ``bench_<name>``."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{name}"] = mod
    spec.loader.exec_module(mod)
    return mod


def doc_block(text: str, key: str) -> str:
    """The text between ``<!-- key:start -->`` and ``<!-- key:end -->``."""
    m = re.search(rf"<!-- {re.escape(key)}:start -->\n(.*?)\n<!-- {re.escape(key)}:end -->", text, re.S)
    assert m, f"block {key} missing"
    return m.group(1)


def render_block(render, doc: str, key: str, tmp_path: Path) -> tuple[str, str]:
    """``(rendered, committed)``: block ``key`` of ``docs/<doc>`` as ``render`` writes it
    into a copy of the page under ``tmp_path``, and as the committed page holds it."""
    copy = tmp_path / doc
    shutil.copy(ROOT / "docs" / doc, copy)
    render(copy)
    return doc_block(copy.read_text(), key), doc_block((ROOT / "docs" / doc).read_text(), key)
