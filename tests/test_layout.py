"""The package layout's import rules (README "Where things live"), read from the source.

Every ``import`` in every module counts, including those inside functions and relative ones,
so a lazy import cannot slip past. ``multikd.errors`` and ``multikd.atomic`` are leaves
anyone may use. ``multikd.plugins`` (a researcher's files joining the registries) imports
only ``method`` and the leaves, and the layers above ``method`` may import it. No module
reaches itself again through its imports (no import cycle).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

import multikd

ROOT = Path(multikd.__file__).parent
LEAVES = {"errors", "atomic", "__init__"}

# subpackage -> the subpackages of multikd it may import (besides itself and the leaves)
ALLOWED = {
    "data": set(),
    "models": set(),
    "method": {"models"},
    "train": {"data", "models", "method", "plugins"},
    "results": {"models", "train", "plugins"},
    "bench": {"data", "models", "method", "train", "results", "plugins"},
    "cli": {"data", "models", "method", "train", "results", "bench", "plugins"},
}
PLUGINS_MAY_IMPORT = {"method"}


def _module_name(path: Path, root: Path = ROOT) -> str:
    """``multikd/bench/runner.py`` -> ``multikd.bench.runner``; an ``__init__`` is its package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_statements(path: Path, root: Path = ROOT) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every import in ``path``: ``import a.b`` gives
    ``("a.b", [], line)``, ``from a import b, c`` gives ``("a", ["b", "c"], line)``; a
    relative import is resolved against the package of ``path`` (a module of ``root``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = _module_name(path, root).split(".")
                if path.name != "__init__.py":
                    package.pop()
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.append((module, [alias.name for alias in node.names], node.lineno))
    return found


def _imported_modules(path: Path) -> set[str]:
    """Every dotted name of multikd that ``path`` imports (``from a import b``: ``a`` and
    ``a.b``, since ``b`` may be a module)."""
    names = set()
    for module, aliases, _ in _import_statements(path):
        names.add(module)
        names.update(f"{module}.{alias}" for alias in aliases)
    return {n for n in names if n == "multikd" or n.startswith("multikd.")}


def _part(module: str) -> str | None:
    """The top-level part of multikd a dotted name falls in (None for ``multikd`` itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_subpackage_imports_follow_the_layout(package):
    allowed = ALLOWED[package] | {package} | LEAVES | {"__version__"}
    offenders = []
    for path in _modules_of(package):
        for name in _imported_modules(path):
            part = _part(name)
            if part is not None and part not in allowed:
                offenders.append(f"{path.relative_to(ROOT.parent)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_tables_never_import_plots():
    names = _imported_modules(ROOT / "results" / "tables.py")
    assert not any(n.startswith("multikd.results.plots") for n in names), names


def test_leaves_import_nothing_of_the_package_but_each_other():
    for leaf in ("errors", "atomic"):
        names = _imported_modules(ROOT / f"{leaf}.py")
        assert all(_part(n) in LEAVES for n in names), (leaf, names)


def test_plugins_import_only_the_method_and_the_leaves():
    names = _imported_modules(ROOT / "plugins.py")
    assert all(_part(n) in PLUGINS_MAY_IMPORT | LEAVES for n in names), names


def test_every_module_lives_in_a_known_place():
    top = {p.stem for p in ROOT.glob("*.py")}
    assert top == {"__init__", "__main__", "errors", "atomic", "plugins"}, top
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), packages


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_subpackage_says_what_it_may_import(package):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc and "import" in doc.lower(), f"multikd/{package}/__init__.py needs its rule"


def test_the_rule_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from multikd.train import engine\n")
    assert _part(next(iter(_imported_modules(bad)))) == "train"


def _import_graph(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """module -> {module it imports: where (``path:line``)}, for every module under ``root``.

    An import points at the most specific module it names: ``from multikd.bench import
    runner`` at ``multikd.bench.runner``, ``from multikd.models import create_model`` at
    ``multikd.models`` (its ``__init__``). The parent packages that Python runs first are not
    edges: every ``__init__`` that re-exports its modules would otherwise be a cycle.
    """
    paths = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for module, path in paths.items():
        edges = {}
        for imported, aliases, line in _import_statements(path, root):
            for name in [f"{imported}.{a}" for a in aliases] or [imported]:
                while name and name not in paths:
                    name = name.rpartition(".")[0]
                if name and name != module:
                    edges.setdefault(name, f"{path.relative_to(root.parent)}:{line}")
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One shortest cycle ``[a, b, ..., a]`` through the first module of each strongly
    connected group of two or more modules (Tarjan's algorithm, then a breadth-first search)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while v not in group:
                group.add(stack.pop())
            on_stack.difference_update(group)
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:
        start = min(group)
        came_from, queue = {}, deque([start])
        while start not in came_from:
            v = queue.popleft()
            for w in sorted(graph[v]):
                if w in group and w not in came_from:
                    came_from[w] = v
                    queue.append(w)
        path = [start]
        while len(path) == 1 or path[-1] != start:
            path.append(came_from[path[-1]])
        cycles.append(path[::-1])
    return sorted(cycles)


def _describe(cycle: list[str], graph: dict[str, dict[str, str]]) -> str:
    steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return "import cycle: " + " ".join(cycle[:1] + [f"-> {b}" for b in cycle[1:]]) + "\n  " + (
        "\n  ".join(steps))


def _home(module: str) -> str:
    """The subpackage a module lives in, or ``top-level`` (errors, atomic, plugins, ...)."""
    part = _part(module)
    return part if part in ALLOWED else "top-level"


@pytest.fixture(scope="module")
def package_cycles():
    """The package's import graph and its cycles, read once for every part."""
    graph = _import_graph()
    return graph, _cycles(graph)


@pytest.mark.parametrize("part", [*sorted(ALLOWED), "top-level"])
def test_no_import_cycle(part, package_cycles):
    """Not even through function-level imports: a cycle works only while every import in it
    stays where it is, and breaks on the first harmless-looking move."""
    graph, cycles = package_cycles
    found = [c for c in cycles if any(_home(m) == part for m in c)]
    assert not found, "\n".join(_describe(c, graph) for c in found)


def test_the_cycle_finder_finds_a_lazy_cycle(tmp_path):
    package = tmp_path / "multikd"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from multikd.sub import a\n")
    (package / "sub" / "a.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..sub.a import g\n")
    (package / "c.py").write_text("from multikd.sub import a\n")
    graph = _import_graph(package)
    assert _cycles(graph) == [["multikd.sub.a", "multikd.sub.b", "multikd.sub.a"]]
    assert "multikd/sub/b.py:2" in _describe(_cycles(graph)[0], graph)
