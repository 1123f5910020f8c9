"""`rvbench gpu-validate` / `make gpu-validate [GPU=0] [OUT=dir]`: what a short GPU reservation
runs first, in one go, within 8 minutes (bench.checks.validate): gpu-check, the gpu-smoke sweep and
timm's loop over its cells, each part and each check stopped at its budget.

The work goes to reports/gpu-validate/<time>-<device>/; OUT (`--out`, default that directory)
receives gpu-validate.json, gpu-validate.txt and gpu-validate-<time>-<device>.tar.gz, nothing else.
Exit OK when every part and check ran and none failed; FAILED when one failed or was stopped for its
budget; USAGE without a CUDA device (one line, nothing written).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.commands.args import DEFAULT_REPORTS, check_output, exit_codes_help
from bench.commands.stopping import signals_interrupt
from bench.errors import ExitCode


def register(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.epilog = exit_codes_help(ExitCode.OK, ExitCode.FAILED, ExitCode.USAGE, ExitCode.INTERRUPTED, ExitCode.TERMINATED)
    parser.add_argument("--device", default="cuda:0", help="the CUDA device to validate (default cuda:0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the three files go (default: the work directory, "
                             f"{DEFAULT_REPORTS}/gpu-validate/<time>-<device>/)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the guarded parts, print the seconds each part and check took, write OUT's three files."""
    from bench.checks.validate import TOTAL_S, Validation
    from bench.commands.gpu_check import cuda_device

    device = cuda_device(args.device, "gpu-validate")
    name = f"gpu-validate-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{device.replace(':', '')}"
    work = DEFAULT_REPORTS / "gpu-validate" / name.removeprefix("gpu-validate-")
    out = args.out or work
    check_output(out, "--out", directory=True)
    check_output(work, "the work directory", directory=True)
    validation = Validation(device, work, out)
    validation.echo(f"gpu-validate on {device}: at most {TOTAL_S:.0f} s; work in {work}")
    with signals_interrupt() as stop:  # a reservation ending (SIGTERM) or Ctrl-C: stop the part in flight
        try:
            with stop.measuring_now():
                results = validation.run()
        except KeyboardInterrupt:
            print(f"rvbench gpu-validate: stopped; what ran is in {out}/gpu-validate.json and the work in {work}",
                  file=sys.stderr)
            return stop.exit_code()
    archive = validation.pack(name)
    for line in ["== seconds per part and check (of budget):", *validation.summary()]:
        validation.echo(line)
    left_out = validation.archive["left_out"]
    validation.echo(f"wrote {out}/gpu-validate.json, gpu-validate.txt and {archive.name} "
                    f"({validation.archive['bytes'] / 2**20:.1f} MiB"
                    + (f"; left out to fit: {', '.join(left_out)})" if left_out else ")"))
    problems = [r.name for r in results if r.status != "ok"]
    problems += [f"{c['name']} {c['verdict']}" for r in results for c in r.checks if c["verdict"] not in ("PASS", "INFO")]
    verdict = f"gpu-validate: not clean: {', '.join(problems)}" if problems else "gpu-validate: every part and check ran, none failed"
    validation.echo(verdict)
    validation.write()
    return ExitCode.FAILED if problems else ExitCode.OK
