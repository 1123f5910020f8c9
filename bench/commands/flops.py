"""`rvbench flops`: parameters and per-image FLOPs from three counters, side by side."""

from __future__ import annotations

import argparse
import json

from bench.commands.args import name_list
from bench.errors import ExitCode
from bench.report.text import format_table

# (header, key, format) of the table; the JSON has every field of bench.counting.flops.count.
_TABLE = (
    ("arch", "arch", "{}"),
    ("impl", "impl", "{}"),
    ("px", "image_size", "{}"),
    ("params M", "params", "{:.2f}"),
    ("GMACs analytic", "gmacs_analytic", "{:.3f}"),
    ("GMACs flopcounter", "gmacs_flopcounter", "{:.3f}"),
    ("GMACs tv published", "tv_published_gmacs", "{:.3f}"),
    ("GFLOPs fvcore", "gflops_fvcore", "{:.3f}"),
    ("train GFLOPs", "train_gflops", "{:.2f}"),
)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("--models", type=name_list, metavar="ARCHS", help="comma-separated archs to count (default: all)")
    parser.add_argument("--impls", type=name_list, metavar="IMPLS", help="comma-separated impls to count (default: all)")
    parser.add_argument("--image-size", type=int, metavar="N", help="input side in px (0 or omitted: each model's own)")
    parser.add_argument("--json", action="store_true", help="print a JSON list with every field and the breakdown")
    parser.set_defaults(func=run)


def _cell(row: dict, key: str, fmt: str) -> str | None:
    value = row[key]
    if value is None:
        return None
    return fmt.format(value / 1e6 if key == "params" else value)


def run(args: argparse.Namespace) -> int:
    """Count the selected models and print a table (or JSON), then how to read fvcore's column."""
    from bench.counting.flops import count  # torch: not for --help
    from bench.models import list_entries

    entries = list_entries(archs=args.models, impls=args.impls)
    rows = [count(entry, args.image_size or None) for entry in entries]
    if args.json:
        print(json.dumps(rows, indent=1))
        return ExitCode.OK
    print(format_table([h for h, _, _ in _TABLE], [[_cell(r, k, f) for _, k, f in _TABLE] for r in rows], left=2))
    print("\nGMACs: multiply-accumulates per image (FLOPs = 2 x MACs); torchvision's published _ops are GMACs.")
    print("fvcore counts 1 per multiply-add, adds norms/pools and drops fused attention; per model:")
    for r in rows:
        print(f"  {r['arch']} {r['impl']}: {r['fvcore_note']}")
    return ExitCode.OK
