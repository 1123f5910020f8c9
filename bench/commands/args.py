"""Argument helpers shared by the subcommands: list types for argparse and the output check.

They live at the commands' own level, below `bench.cli`, which imports the commands: a command
importing them from `bench.cli` would close an import loop.
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
import threading
from pathlib import Path

from bench.errors import ExitCode, UsageError

# Where runs go when no --out is given: REPORTS/runs/<run>/, REPORTS/latest linking the newest.
DEFAULT_REPORTS = Path("reports")


def name_list(text: str) -> list[str]:
    """argparse type for a list of names: comma- (or space-) separated, e.g. "resnet50,vit_base_patch16_224"."""
    return [name for name in re.split(r"[,\s]+", text) if name]


def int_list(text: str) -> list[int]:
    """argparse type for a list of integers, separated as in `name_list`, e.g. "1,32,256"."""
    try:
        return [int(t) for t in name_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def finite_float(text: str) -> float:
    """argparse type for a real number: refuses nan and inf, which no option means (nan compares false
    with every bound, so a range check downstream would let it through)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type for a finite number > 0 (a rate, a size, a fraction)."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def seconds(text: str) -> float:
    """argparse type for a time limit: a positive_float no longer than threading.TIMEOUT_MAX (about
    292 years), the longest wait Python's locks and queues accept (more raises OverflowError mid-run)."""
    value = positive_float(text)
    if value > threading.TIMEOUT_MAX:
        raise argparse.ArgumentTypeError(f"expected at most {threading.TIMEOUT_MAX:.0f} seconds, got {text!r}")
    return value


def check_output(path: Path, flag: str, directory: bool = False) -> None:
    """UsageError unless `path` (a file, or with `directory` a folder, made if missing) can be
    written: checked before any work, so a long comparison or profile is not lost at its end."""
    if directory and path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is not a directory")
    if not directory and path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file name")
    if not directory and not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {path.parent} does not exist")
    try:
        if directory:
            path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path if directory else path.parent):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path} is not writable ({exc.strerror})") from None


def check_page(out: Path | None, default: Path, default_name: str) -> Path:
    """The page a command writes: `out` (its --out) or else `default`, checked writable (check_output).
    A default that cannot be written is named as `default_name` (e.g. "RUN_B's page"), not as an --out
    never given, and the line says how to write it elsewhere."""
    if out:
        check_output(out, "--out")
        return out
    try:
        check_output(default, default_name)
    except UsageError as exc:
        raise UsageError(f"{exc}; write it elsewhere with --out FILE") from None
    return default


def exit_codes_help(*codes: ExitCode) -> str:
    """The exit-code sentence of a command's --help: the codes it can return, by name (the table in
    bench.errors, shown by `rvbench --help`, says what each means)."""
    listed = ", ".join(f"{int(code)} {code.name.lower().replace('_', ' ')}" for code in codes)
    return f"Exit codes: {listed} (each explained in `rvbench --help`)."
