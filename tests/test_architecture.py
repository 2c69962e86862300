"""The layout rules of docs/ARCHITECTURE.md, checked on the source tree.

Each rule is read off the code with :mod:`ast` (no imports are executed), so a change
that breaks one fails here with the offending function, import or call named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "src" / "memdistill"
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _imports(name: str, path: Path, is_pkg: bool, modules) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its file (top level,
    inside functions and under ``TYPE_CHECKING`` alike)."""
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target in modules:
                found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()}


def test_no_function_over_the_line_limit():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PROJECT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)


def test_no_module_imports_a_module_that_imports_it_back(import_graph):
    mutual = sorted(f"{a} <-> {b}" for a, deps in import_graph.items() for b in deps
                    if a < b and a in import_graph.get(b, ()))
    assert not mutual, "mutual imports: " + "; ".join(mutual)


def test_the_checker_sees_mutual_imports(tmp_path, monkeypatch):
    """The rule above can fail: two modules that import each other are reported."""
    pkg = tmp_path / "memdistill"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from . import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    modules = _modules()
    graph = {n: _imports(n, p, k, modules) for n, (p, k) in modules.items()}
    assert "memdistill.b" in graph["memdistill.a"] and "memdistill.a" in graph["memdistill.b"]


def test_file_format_depends_on_neither_the_package_root_nor_rendering(import_graph):
    deps = import_graph["memdistill.memory.file"]
    assert "memdistill" not in deps and "memdistill.viz" not in deps, sorted(deps)


class _CallFinder(ast.NodeVisitor):
    """``(function, line)`` of every call to ``name``, in its innermost enclosing function."""

    def __init__(self, name: str):
        self.name, self.stack, self.found = name, ["<module>"], []

    def visit_FunctionDef(self, node):
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node):
        f = node.func
        called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if called == self.name:
            self.found.append((self.stack[-1], node.lineno))
        self.generic_visit(node)


def _calls(path: Path, name: str) -> list[tuple[str, int]]:
    finder = _CallFinder(name)
    finder.visit(ast.parse(path.read_text()))
    return finder.found


def test_distillation_config_is_assembled_in_one_function():
    """Only ``config.resolve`` builds a :class:`DistillConfig`; the CLI, the continual
    learner and the bench scripts all call it."""
    builders = {}
    for path in [*PACKAGE.rglob("*.py"), *(PROJECT / "bench").glob("*.py")]:
        found = _calls(path, "DistillConfig")
        if found:
            builders[str(path.relative_to(PROJECT))] = sorted({fn for fn, _ in found})
    assert builders == {"src/memdistill/config.py": ["resolve"]}, builders
    for caller in ("src/memdistill/continual/strategies.py", "bench/results.py", "bench/tune.py"):
        assert _calls(PROJECT / caller, "resolve"), f"{caller} does not build its config with config.resolve"
