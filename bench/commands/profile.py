"""`rvbench profile ARCH`: profile one cell and print where its time and memory go."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.commands.args import check_output, exit_codes_help
from bench.config.cell import COMPILE_MODES, IMPLS, MODES, Cell
from bench.errors import ExitCode
from bench.models import get_entry
from bench.hardware.device import resolve_device
from bench.precisions import DEFAULT_PRECISION, precision_help

NAME_WIDTH = 70  # kernel names run to hundreds of characters; the JSON keeps them whole


def register(parser: argparse.ArgumentParser) -> None:
    """Add the profile arguments."""
    parser.epilog = exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE)
    parser.add_argument("arch", help="timm-style arch name, e.g. resnet50 (see `rvbench models`)")
    parser.add_argument("--impl", default="rv", help=f"implementation: {', '.join(IMPLS)} (default rv)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--precision", default=DEFAULT_PRECISION, help=precision_help())
    parser.add_argument("--compile", default="none", help=f"torch.compile mode: {', '.join(COMPILE_MODES)}")
    parser.add_argument("--mode", default="inference", help=f"{', '.join(MODES)} (default inference)")
    parser.add_argument("--image-size", type=int, default=None, help="input side in px (default: the arch's)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default reports/profiles/<arch>-<impl>-<cell id>)")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps after warm-up (default 5)")
    parser.add_argument("--memory-snapshot", action="store_true",
                        help="also dump a CUDA allocator snapshot of one step (memory_snapshot.pickle)")
    parser.set_defaults(func=run)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_summary(s: dict, out_dir: Path) -> None:
    print(f"profile  {s['label']}  ({s['device_name']}, torch {s['torch']})")
    print(f"step {s['step_ms']:.2f} ms (median of {s['steps']} profiled steps); "
          f"operator time {_fmt(s['busy_ms'], '.2f')} ms/step from {s['time_source']}")
    if s["categories_note"]:
        print(f"categories: {s['categories_note']}")
    print("\ncategory        share      ms/step")
    for cat, share in sorted(s["categories"].items(), key=lambda kv: -kv[1]):
        print(f"  {cat:<13} {share:6.1f}%  {s['category_ms'][cat]:9.3f}")
    print("\ntop operators       ms/step   share  calls  category       name")
    for op in s["top_ops"]:
        name = op["name"] if len(op["name"]) <= NAME_WIDTH else op["name"][: NAME_WIDTH - 3] + "..."
        print(f"  {op['ms']:22.3f} {op['pct']:6.1f}% {op['calls_per_step']:6.1f}  {op['category']:<13}  {name}")
    if s["modules"]:
        print(f"\nmodule ({s['modules_note']})")
        print(f"  {'group':<16} {'ms':>9} {'GFLOP':>10} {'TFLOP/s':>9}")
        for row in s["modules"]:
            print(f"  {row['group']:<16} {_fmt(row['ms'], '9.3f')} {row['gflops']:10.3f} "
                  f"{_fmt(row['achieved_tflops'], '9.3f')}")
    else:
        print(f"\nmodule: {s['modules_note']}")
    print(f"\narithmetic: {s['flops_per_step'] / 1e9:.2f} GFLOP/step, {s['bytes_per_step'] / 1e6:.1f} MB/step "
          f"(estimated), intensity {_fmt(s['intensity'], '.1f')} FLOP/byte, "
          f"achieved {_fmt(s['achieved_tflops'], '.3f')} TFLOP/s")
    roof = s["roofline"]
    if roof is None:
        print(f"roofline: {s['roofline_note']}")
    else:
        print(f"roofline ({roof['device']}): peak {roof['peak_tflops']:.0f} TFLOP/s, {roof['mem_bw_gbs']:.0f} GB/s, "
              f"ridge {roof['ridge_intensity']:.0f} FLOP/byte -> {roof['bound']}-bound, "
              f"{roof['pct_of_attainable']:.0f}% of attainable {roof['attainable_tflops']:.1f} TFLOP/s")
    mem = s["memory"]
    if mem["forward_mb"] is None:
        print(f"memory: {mem['note']}")
    else:
        print(f"memory peak MB: forward {_fmt(mem['forward_mb'], '.0f')}, backward {_fmt(mem['backward_mb'], '.0f')}, "
              f"optimizer {_fmt(mem['optimizer_mb'], '.0f')}")
    print(f"\nwrote {out_dir / 'profile.json'}")
    print(f"wrote {out_dir / s['trace']}  (open in https://ui.perfetto.dev or chrome://tracing)")
    if mem["snapshot"]:
        print(f"wrote {out_dir / mem['snapshot']}  (open in https://pytorch.org/memory_viz)")


def run(args: argparse.Namespace) -> int:
    """Build the cell from the arguments, check it and the output folder before writing anything,
    profile it, print the summary. Returns OK, or FAILED (one line on stderr) when the cell runs out
    of memory."""
    from bench.profiling.profile import check_profile, profile_cell
    from bench.runner.worker import is_oom

    entry = get_entry(args.arch, args.impl)
    cell = Cell(args.arch, args.impl, args.batch_size, args.image_size or entry.image_size,
                precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                mode=args.mode, device=resolve_device(args.device))
    check_profile(cell, args.steps, args.memory_snapshot)
    out_dir = args.out or Path("reports/profiles") / f"{cell.arch}-{cell.impl}-{cell.cell_id}"
    check_output(out_dir, "--out", directory=True)
    try:
        summary = profile_cell(cell, out_dir, steps=args.steps, memory_snapshot=args.memory_snapshot)
    except RuntimeError as exc:
        if not is_oom(exc):
            raise
        print(f"rvbench profile: error: out of memory at batch size {cell.batch_size} on {cell.device} "
              f"({str(exc).splitlines()[0]}); try a smaller --batch-size", file=sys.stderr)
        return ExitCode.FAILED
    _print_summary(summary, out_dir)
    return ExitCode.OK
