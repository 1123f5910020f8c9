"""`rvbench gpu-check`: run the GPU self-checks (bench.checks.gpu) and write their results.

Prints a header line, then a line per check as it ends (its verdict, figure and seconds: the lines
`gpu-validate`'s guard reads, bench.checks.guard). Writes OUT/gpu-check.json (every check's figures,
verdict and seconds, plus the environment; "complete" false until the last check ends) and
OUT/gpu-check.txt (the lines printed), both after every check, OUT being `--out` or
reports/gpu-check/<time>-<device>/.
Exit OK when no check fails, FAILED when one does, USAGE without a CUDA device (one line, nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.commands.args import check_output, exit_codes_help, name_list
from bench.commands.stopping import signals_interrupt
from bench.errors import ExitCode, UsageError

SCHEMA_VERSION = 1


def register(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.epilog = exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.INTERRUPTED, ExitCode.TERMINATED)
    parser.add_argument("--device", default="cuda:0", help="the CUDA device to check (default cuda:0)")
    parser.add_argument("--only", type=name_list, metavar="CHECKS",
                        help="comma-separated checks to run (default: all, in order; an unknown name lists them)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default reports/gpu-check/<time>-<device>)")
    parser.set_defaults(func=run)


def cuda_device(requested: str, command: str) -> str:
    """The CUDA device `command` (gpu-check, gpu-validate) is to check, or UsageError when there is
    none (the CPU has nothing to check)."""
    from bench.hardware.device import cuda_count, resolve_device

    if not cuda_count():
        raise UsageError(f"{command} needs a CUDA device, and torch sees none here (torch.cuda.is_available() is False)")
    device = resolve_device(requested)
    if device == "cpu":
        raise UsageError(f"{command} checks a CUDA device; give --device cuda:N")
    return device


def run(args: argparse.Namespace) -> int:
    """Run the selected checks in order, printing each verdict as it comes; write the files."""
    import torch

    from bench.checks.gpu import CHECKS, Context, run_check
    from bench.measure.env import collect_env

    names = args.only or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UsageError(f"unknown check {unknown[0]!r}; valid: {', '.join(CHECKS)}")
    device = cuda_device(args.device, "gpu-check")
    # The checked GPU is torch's current device: what synchronises without naming one (benchmark.Timer,
    # CUDA-graph capture) waits for it, and nothing opens a context on cuda:0.
    torch.cuda.set_device(torch.device(device))
    out = args.out or Path("reports") / "gpu-check" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{device.replace(':', '')}"
    check_output(out, "--out", directory=True)
    env = collect_env(device)  # before the header: gpu-validate's guard times the first check from it
    print(f"gpu-check on {device} ({torch.cuda.get_device_name(device)}): {len(names)} checks", flush=True)
    lines, results = [], []
    # SIGTERM (gpu-validate's guard) ends the check in flight cleanly: its workers and torchrun jobs are
    # stopped on the way out.
    with signals_interrupt() as stop:
        try:
            with stop.measuring_now():
                for number, name in enumerate(names, 1):
                    result = run_check(name, Context(device, out))
                    results.append(result)
                    lines.append(result.line(number))
                    _write(out, device, env, results, lines, complete=number == len(names))
                    print(lines[-1], flush=True)  # after the files: a guard may stop this process once it reads it
        except KeyboardInterrupt:
            print(f"rvbench gpu-check: stopped during {names[len(results)]}; the {len(results)} checks before it "
                  f"are in {out}", file=sys.stderr)
            return stop.exit_code()
    failed = [r.name for r in results if r.passed is False]
    verdict = f"gpu-check: {len(failed)} of {len(results)} checks failed: {', '.join(failed)}" if failed else (
        f"gpu-check: no check failed ({len(results)} run)")
    print(verdict)
    _write(out, device, env, results, lines + [verdict], complete=True)
    print(f"wrote {out}/gpu-check.json and gpu-check.txt")
    return ExitCode.FAILED if failed else ExitCode.OK


def _write(out: Path, device: str, env: dict, results: list, lines: list[str], complete: bool) -> None:
    """gpu-check.json and .txt with the checks done so far, rewritten after each one: a check that
    hangs or kills the process (and `gpu-validate`'s guard stopping it) costs only itself."""
    from bench.results.store import write_atomically

    write_atomically(out / "gpu-check.txt", lambda p: p.write_text("\n".join(lines) + "\n"))
    report = {"schema_version": SCHEMA_VERSION, "device": device, "complete": complete, "env": env,
              "checks": [{"name": r.name, "verdict": r.verdict, "figure": r.figure, "seconds": r.seconds, "data": r.data}
                         for r in results]}
    write_atomically(out / "gpu-check.json", lambda p: p.write_text(json.dumps(report, indent=1, default=str)))
