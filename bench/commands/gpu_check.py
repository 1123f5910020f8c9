"""`rvbench gpu-check`: run the GPU self-checks (bench.checks.gpu) and write their results.

Writes OUT/gpu-check.json (every check's figures, verdict and seconds, plus the environment) and
OUT/gpu-check.txt (the lines printed), OUT being `--out` or reports/gpu-check/<time>-<device>/.
Exit OK when no check fails, FAILED when one does, USAGE without a CUDA device (one line, nothing written).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.commands.args import check_output, exit_codes_help, name_list
from bench.errors import ExitCode, UsageError

SCHEMA_VERSION = 1


def register(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.epilog = exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE)
    parser.add_argument("--device", default="cuda:0", help="the CUDA device to check (default cuda:0)")
    parser.add_argument("--only", type=name_list, metavar="CHECKS",
                        help="comma-separated checks to run (default: all, in order); see the list in --help")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default reports/gpu-check/<time>-<device>)")
    parser.set_defaults(func=run)


def _device(requested: str) -> str:
    """The CUDA device to check, or UsageError when there is none (the CPU has nothing to check)."""
    from bench.hardware.device import cuda_count, resolve_device

    if not cuda_count():
        raise UsageError("gpu-check needs a CUDA device, and torch sees none here (torch.cuda.is_available() is False)")
    device = resolve_device(requested)
    if device == "cpu":
        raise UsageError("gpu-check checks a CUDA device; give --device cuda:N")
    return device


def run(args: argparse.Namespace) -> int:
    """Run the selected checks in order, printing each verdict as it comes; write the files."""
    import torch

    from bench.checks.gpu import CHECKS, Context, run_check
    from bench.measure.env import collect_env
    from bench.results.store import write_atomically

    names = args.only or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UsageError(f"unknown check {unknown[0]!r}; valid: {', '.join(CHECKS)}")
    device = _device(args.device)
    # The checked GPU is torch's current device: what synchronises without naming one (benchmark.Timer,
    # CUDA-graph capture) waits for it, and nothing opens a context on cuda:0.
    torch.cuda.set_device(torch.device(device))
    out = args.out or Path("reports") / "gpu-check" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{device.replace(':', '')}"
    check_output(out, "--out", directory=True)
    lines, results = [], []
    for number, name in enumerate(names, 1):
        result = run_check(name, Context(device, out))
        results.append(result)
        line = f"{result.verdict}  {number:>2} {name:<20} {result.figure}  ({result.seconds:.0f} s)"
        print(line, flush=True)
        lines.append(line)
    failed = [r.name for r in results if r.passed is False]
    verdict = f"gpu-check: {len(failed)} of {len(results)} checks failed: {', '.join(failed)}" if failed else (
        f"gpu-check: no check failed ({len(results)} run)")
    print(verdict)
    text = "\n".join(lines + [verdict]) + "\n"
    write_atomically(out / "gpu-check.txt", lambda p: p.write_text(text))
    report = {"schema_version": SCHEMA_VERSION, "device": device, "env": collect_env(device),
              "checks": [{"name": r.name, "verdict": r.verdict, "figure": r.figure, "seconds": r.seconds, "data": r.data}
                         for r in results]}
    write_atomically(out / "gpu-check.json", lambda p: p.write_text(json.dumps(report, indent=1, default=str)))
    print(f"wrote {out}/gpu-check.json and gpu-check.txt")
    return ExitCode.FAILED if failed else ExitCode.OK
