"""CONTRIBUTING.md stays true: every file it names exists, and every function, class or constant it places in a
file ("`name` in `path.py`") is defined there. A recipe that names a moved or renamed thing fails here, not on the
next contributor."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "CONTRIBUTING.md").read_text()

# `bench/report/page.py`, `rv_models/`, `tests/test_families.py`, `bench/report/sections/`
PATH = re.compile(r"`((?:bench|rv_models|tests)/[\w./*-]*)`")
# `write_report` in `bench/report/page.py`; `FAMILIES` in `rv_models/registry.py`
PLACED = re.compile(r"`(\w+)`(?:\([^)]*\))? in `((?:bench|rv_models|tests)/[\w/]+\.py)`")


def defined_names(path: Path) -> set[str]:
    """Top-level and class-level functions, classes and assigned names of a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_every_named_path_exists() -> None:
    named = set(PATH.findall(TEXT))
    assert len(named) > 20, "the pattern no longer finds CONTRIBUTING.md's paths"
    missing = sorted(p for p in named if not any(ROOT.glob(p.rstrip("/"))))
    assert not missing, f"CONTRIBUTING.md names paths that do not exist: {missing}"


def test_every_placed_name_is_defined_where_it_says() -> None:
    placed = PLACED.findall(TEXT)
    assert len(placed) > 5, "the pattern no longer finds CONTRIBUTING.md's `name` in `file` references"
    wrong = sorted(f"{name} in {path}" for name, path in placed
                   if not (ROOT / path).exists() or name not in defined_names(ROOT / path))
    assert not wrong, f"CONTRIBUTING.md places names where they are not defined: {wrong}"
