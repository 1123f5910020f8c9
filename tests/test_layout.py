"""The package layout's one rule: data flows one way, so no module imports a stage above its own.

Stages, low to high (CONTRIBUTING.md draws the same map). Every import counts, including the lazy
ones inside functions and the modules named to `importlib.import_module`: a lazy upward import is
still a cycle between stages, only hidden.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STAGES = (
    ("bench.errors", "bench.provenance", "bench.columns", "bench.precisions", "bench.intervals"),
    ("bench.models", "bench.hardware", "bench.data"),
    ("bench.config",),
    ("bench.counting",),
    ("bench.execute",),
    ("bench.measure",),
    ("bench.profiling",),
    ("bench.results",),
    ("bench.runner",),
    ("bench.regress", "bench.checks"),
    ("bench.report",),
    ("bench.commands",),
    ("bench.cli", "bench.__main__"),
)


def stage_of(module: str) -> int | None:
    """The stage index of a bench module; None for `bench` itself (the version only) and non-bench modules."""
    for index, prefixes in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_module_target(node: ast.Call) -> str | None:
    """The module an `import_module(...)` / `importlib.import_module(...)` call names: a string, or an
    f-string's text before its first placeholder, "bench.commands.{x}" counting as `bench.commands`."""
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    if name != "import_module" or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr):
        prefix = ""
        for part in arg.values:
            if not isinstance(part, ast.Constant):
                break
            prefix += part.value
        return prefix.rstrip(".") or None
    return None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, top-level or nested, `from X import Y` as X.Y too,
    and of every module named to `import_module`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and (target := _import_module_target(node)):
            found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("bench"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_stage_above_its_own(path: Path) -> None:
    module = _module_name(path)
    own = stage_of(module)
    assert own is not None or module == "bench", f"{module} is in no stage: add its package to STAGES"
    upward = [
        f"line {line}: {name} (stage {stage_of(name)} > {own})"
        for line, name in imports_of(path)
        if own is not None and (stage_of(name) or 0) > own
    ]
    assert not upward, f"{module} (stage {own}) imports a later stage: " + "; ".join(upward)


@pytest.mark.parametrize("path", _sources("rv_models"), ids=lambda p: str(p.relative_to(ROOT)))
def test_rv_models_never_imports_the_harness(path: Path) -> None:
    assert not [name for _, name in imports_of(path) if name == "bench" or name.startswith("bench.")]


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a lazy import of the report from the results stage is found."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from bench.report import write_report\n")
    names = [name for _, name in imports_of(source)]
    assert "bench.report.write_report" in names
    assert stage_of("bench.report.write_report") > stage_of("bench.results.store")


def test_the_rule_sees_import_module(tmp_path: Path) -> None:
    """`importlib.import_module(f"bench.commands.{name}")` is an import of the commands package, so a
    command importing `bench.cli` back (the loop the CLI's lazy loading once hid) is an upward import."""
    source = tmp_path / "probe.py"
    source.write_text("import importlib\n\ndef load(name):\n"
                      "    return importlib.import_module(f'bench.commands.{name.replace(\"-\", \"_\")}')\n"
                      "def cli():\n    return import_module('bench.cli')\n")
    names = [name for _, name in imports_of(source)]
    assert "bench.commands" in names and "bench.cli" in names
    assert stage_of("bench.cli") > stage_of("bench.commands.run") == stage_of("bench.commands")
