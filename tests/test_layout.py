"""The package's layout: no import circle between its modules (imports inside functions
included), and no module over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import growformer

ROOT = Path(growformer.__file__).parent
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # `from package import module` imports the module (and the package's
            # __init__ as any import of its modules does); other names are the package's.
            modules = [f"{base}.{a.name}" for a in node.names]
            targets = [m for m in modules if m in MODULES]
            if len(targets) < len(modules):
                targets.append(base)
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle_through(start: str) -> list[str] | None:
    """A path of imports from ``start`` back to itself, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(GRAPH[node]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_circle(module):
    cycle = _cycle_through(module)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_package_root_is_imported_by_no_module():
    """Importing ``growformer`` from inside it would close a circle through the root."""
    assert [m for m, targets in GRAPH.items() if "growformer" in targets] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_600_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines"


def test_the_check_sees_a_circle():
    """The walk finds a known circle when one is added (a check that cannot fail is none)."""
    GRAPH["growformer.errors"].add("growformer.structure")
    try:
        assert _cycle_through("growformer.errors") is not None
    finally:
        GRAPH["growformer.errors"].discard("growformer.structure")
