"""The `rvbench` command line: one subcommand per module in `bench/commands/`."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import tempfile
import warnings
from pathlib import Path

from bench.errors import EXIT_DISK_FULL, DiskFull, UsageError, is_disk_full

# Subcommand name -> help; its module is bench.commands.<name with "-" as "_">, with register(parser) and run(args) -> int.
COMMANDS = {
    "models": "List the registered (arch, impl) pairs.",
    "flops": "Count parameters and FLOPs with three counters side by side.",
    "run": "Sweep a preset of cells on one device into a run directory.",
    "report": "Write the HTML report of a run directory.",
    "compare": "Compare two runs cell by cell with a significance test.",
    "profile": "Profile one cell: operator categories, per-module time, roofline.",
    "gpu-check": "Check on this GPU that timing, profiling, memory, compile and power measure what they claim.",
    "memory": "Predict a cell's peak CUDA memory and the largest batch that fits, without a GPU.",
    "scale": "Data-parallel training throughput and efficiency from 1 to N ranks, under torchrun.",
    "transfer": "Time to accuracy of linear probe, staged and full fine-tuning, and from scratch, per implementation.",
}


def name_list(text: str) -> list[str]:
    """argparse type for a list of names: comma- (or space-) separated, e.g. "resnet50,vit_base_patch16_224"."""
    return [name for name in re.split(r"[,\s]+", text) if name]


def int_list(text: str) -> list[int]:
    """argparse type for a list of integers, separated as in `name_list`, e.g. "1,32,256"."""
    try:
        return [int(t) for t in name_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only `command`'s module is imported (each pulls in torch, which is slow)."""
    parser = argparse.ArgumentParser(
        prog="rvbench",
        description="Benchmark and profile the registered model families' implementations (rv, torchvision, timm).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(f"bench.commands.{name.replace('-', '_')}").register(command_parser)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """warnings.formatwarning for the terminal: the message alone, one line, no source excerpt."""
    return f"rvbench: warning: {message}\n"


def _reject_empty(argv: list[str], args: argparse.Namespace) -> None:
    """UsageError for an empty value (`--out ''`, `--out=`) or an empty list (`--models ,`): an empty
    path would mean the current directory and an empty list an empty sweep or table, never intended."""
    for i, arg in enumerate(argv):
        if arg == "" or (arg.startswith("--") and arg.endswith("=")):
            flag = arg[:-1] if arg else (argv[i - 1] if i and argv[i - 1].startswith("-") else "an argument")
            raise UsageError(f"{flag} is empty; give a value")
    for name, value in vars(args).items():
        if value == []:
            raise UsageError(f"--{name.replace('_', '-')} is an empty list; give at least one value")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, dispatch, and turn a UsageError (exit 2) or a full disk (exit
    EXIT_DISK_FULL) into a one-line message."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    warnings.formatwarning = _one_line_warning
    try:
        _reject_empty(argv, args)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"rvbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (DiskFull, OSError) as exc:
        if not isinstance(exc, DiskFull) and not is_disk_full(exc):
            raise
        print(f"rvbench {args.command}: error: {exc if isinstance(exc, DiskFull) else DiskFull(exc)}",
              file=sys.stderr)
        return EXIT_DISK_FULL
    except KeyboardInterrupt:
        print(f"rvbench {args.command}: interrupted", file=sys.stderr)
        return 130
