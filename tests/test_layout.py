"""The package layout's import rules (README "Where things live"), read from the source.

Every ``import`` in every module counts, including those inside functions, so a lazy
import cannot slip past. ``multikd.errors`` and ``multikd.atomic`` are leaves anyone may use.
"""

from __future__ import annotations

import ast
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
    "train": {"data", "models", "method"},
    "bench": {"data", "models", "method", "train"},
}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
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


def test_results_never_import_plots():
    names = _imported_modules(ROOT / "bench" / "results.py")
    assert not any(n.startswith("multikd.bench.plots") for n in names), names


def test_leaves_import_nothing_of_the_package_but_each_other():
    for leaf in ("errors", "atomic"):
        names = _imported_modules(ROOT / f"{leaf}.py")
        assert all(_part(n) in LEAVES for n in names), (leaf, names)


def test_every_module_lives_in_a_known_place():
    top = {p.stem for p in ROOT.glob("*.py")}
    assert top == {"__init__", "__main__", "cli", "errors", "atomic"}, top
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
