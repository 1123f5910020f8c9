"""The `rvbench` command line: one subcommand per module in `bench/commands/`."""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap
import warnings
from typing import NoReturn

from bench import __version__
from bench.errors import DiskFull, ExitCode, UsageError, is_disk_full
from bench.provenance import git_state

DESCRIPTION = "Benchmark and profile the registered model families' implementations (rv, torchvision, timm)."

# Subcommand name -> help; its module is bench.commands.<name with "-" as "_">, with register(parser) and run(args) -> int.
COMMANDS = {
    "models": "List the registered (arch, impl) pairs.",
    "flops": "Count parameters and FLOPs with three counters side by side.",
    "run": "Sweep a preset of cells on one device into a run directory.",
    "report": "Write the HTML report of a run directory.",
    "compare": "Compare two runs cell by cell with a significance test.",
    "history": "Every run under some folders as series in commit order: steps found, sized and explained; a trend page.",
    "bisect": "The first commit between a good and a bad one where one cell's step got significantly slower.",
    "profile": "Profile one cell: operator categories, per-module time, roofline.",
    "gpu-check": "Check on this GPU that timing, profiling, memory, compile and power measure what they claim.",
    "gpu-validate": "What a short GPU reservation runs first: gpu-check, the gpu-smoke sweep, timm's loop; in 8 minutes.",
    "crosscheck": "Time a run's cells again in timm benchmark.py's loop (a synchronise every step) against the run's figures.",
    "memory": "Predict a cell's peak CUDA memory and the largest batch that fits, without a GPU.",
    "scale": "Data-parallel training throughput and efficiency from 1 to N ranks, under torchrun.",
    "serve": "Latency under load: MLPerf's SingleStream, Server (QPS at a p99 bound) and Offline, with a dynamic batcher.",
    "transfer": "Time to accuracy of linear probe, staged and full fine-tuning, and from scratch, per implementation.",
}


def version_line() -> str:
    """`rvbench --version`: the package version and, in a git checkout, its short commit ("+dirty"
    when tracked files differ from it), e.g. "rvbench 0.1.0 (git 07cbcb6)"."""
    commit, dirty = git_state()
    return f"rvbench {__version__}" + (f" (git {commit[:7]}{'+dirty' if dirty else ''})" if commit else "")


class _VersionAction(argparse.Action):
    """--version, asking git only when given (argparse's own action would compute the text on every run)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0,
                         help="print the version and the git commit of this checkout, and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_line())
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose complaints (a bad value, an unknown option) are UsageErrors like every
    other bad input: one line naming the command, exit 2, nothing written (argparse would print its
    usage block first, and exit from inside the parse)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def exit_codes_epilog() -> str:
    """The exit-code table of `rvbench --help`, from bench.errors.ExitCode (the README shows the same)."""
    lines = ["exit codes:"]
    for code in ExitCode:
        lines += textwrap.wrap(code.meaning.replace("`", ""), width=96, initial_indent=f"  {int(code):<5}",
                               subsequent_indent=" " * 7)
    return "\n".join(lines)


def start_text() -> str:
    """What a bare `rvbench` prints: the commands and how to begin."""
    width = max(map(len, COMMANDS))
    commands = "\n".join(f"  {name:<{width}}  {help_text}" for name, help_text in COMMANDS.items())
    return (f"{DESCRIPTION}\n\ncommands:\n{commands}\n\n"
            "start with:  rvbench run --preset smoke   (seconds on a CPU; then open reports/latest/index.html)\n"
            "options:     rvbench COMMAND --help       (rvbench --help: the exit codes)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only `command`'s module is imported (each pulls in torch, which is slow)."""
    parser = _Parser(prog="rvbench", description=DESCRIPTION, epilog=exit_codes_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction)
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
    """Parse arguments, dispatch, and turn a UsageError or a full disk into a one-line message and
    its exit code. No arguments at all: the commands and how to start."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(start_text(), end="")
        return ExitCode.OK
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
    except UsageError as exc:
        print(f"rvbench{f' {command}' if command in COMMANDS else ''}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    warnings.formatwarning = _one_line_warning
    try:
        _reject_empty(argv, args)
        return int(args.func(args))
    except UsageError as exc:
        print(f"rvbench {args.command}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except (DiskFull, OSError) as exc:
        if not isinstance(exc, DiskFull) and not is_disk_full(exc):
            raise
        print(f"rvbench {args.command}: error: {exc if isinstance(exc, DiskFull) else DiskFull(exc)}",
              file=sys.stderr)
        return ExitCode.DISK_FULL
    except KeyboardInterrupt:
        print(f"rvbench {args.command}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
