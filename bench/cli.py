"""The `rvbench` command line: one subcommand per module in `bench/commands/`."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from bench.errors import UsageError

# Subcommand name -> module in bench.commands; each module has register(subparsers) and run(args) -> int.
COMMANDS = {
    "models": "List the registered (arch, impl) pairs.",
    "flops": "Count parameters and FLOPs with three counters side by side.",
    "run": "Sweep a preset of cells on one device into a run directory.",
    "report": "Write the HTML report of a run directory.",
    "compare": "Compare two runs cell by cell with a significance test.",
    "profile": "Profile one cell: operator categories, per-module time, roofline.",
}


def name_list(text: str) -> list[str]:
    """argparse type for a list of names: comma- (or space-) separated, e.g. "resnet50,vit_base_patch16_224"."""
    return [name for name in re.split(r"[,\s]+", text) if name]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only `command`'s module is imported (each pulls in torch, which is slow)."""
    parser = argparse.ArgumentParser(
        prog="rvbench",
        description="Benchmark and profile ResNet and ViT implementations (rv, torchvision, timm).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(f"bench.commands.{name}").register(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, dispatch, and turn a UsageError into a one-line message and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"rvbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rvbench {args.command}: interrupted", file=sys.stderr)
        return 130
