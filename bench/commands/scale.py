"""`rvbench scale`: data-parallel training throughput and efficiency from 1 to N ranks, under torchrun.

For each world size, one torchrun job (bench.runner.scale) trains the arch's DDP step with a fixed
batch per rank; the rows go into a run directory like a sweep's (mode ddp-train, one row per world
size and implementation), with the report's Scaling section and a terminal table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench.commands.args import DEFAULT_REPORTS, exit_codes_help, int_list, name_list, positive_float, seconds
from bench.errors import ExitCode, UsageError
from bench.precisions import TRAINING_PRECISIONS, check_trains, default_train_precision

if TYPE_CHECKING:
    from bench.commands.stopping import Stop

DEFAULT_STEPS = {"cpu": 10, "cuda": 30}
DEFAULT_BATCH = {"cpu": 8, "cuda": 64}
DEFAULT_TIMEOUT_S = 900.0
PROFILE_STEPS = 3


def register(parser: argparse.ArgumentParser) -> None:
    """Add the options of `rvbench scale`."""
    parser.epilog = ("Several nodes: run the same command on each, with --nnodes N --rdzv-endpoint HOST:PORT "
                     "(HOST: the first node); the node of global rank 0 writes the rows. "
                     + exit_codes_help(ExitCode.OK, ExitCode.USAGE, ExitCode.DISK_FULL, ExitCode.REPORT_FAILED,
                                       ExitCode.NOTHING_MEASURED, ExitCode.INTERRUPTED,
                                       ExitCode.TERMINATED))
    parser.add_argument("arch", help="the architecture, e.g. resnet50 or vit_base_patch16_224")
    parser.add_argument("--impls", type=name_list, default=["rv"], help="implementations: rv, torchvision, timm (default rv)")
    parser.add_argument("--nproc", type=int_list, metavar="K,...",
                        help="ranks per node, one job each (default: 1, 2, 4, ... up to the GPUs present; 1,2 on a CPU)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes in every job (default 1)")
    parser.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                        help="rendezvous of several nodes, the same on each (default, one node: 127.0.0.1, a free port)")
    parser.add_argument("--batch-per-rank", type=int, metavar="B",
                        help=f"images per rank and step, fixed across world sizes (weak scaling); default "
                             f"{DEFAULT_BATCH['cuda']} on CUDA, {DEFAULT_BATCH['cpu']} on a CPU")
    parser.add_argument("--image-size", type=int, default=0, help="input side in px (0: the model's default)")
    parser.add_argument("--precision", help=f"{', '.join(TRAINING_PRECISIONS)} (default "
                                            f"{default_train_precision('cuda')} on CUDA, {default_train_precision('cpu')} on a CPU)")
    parser.add_argument("--compile", default="none", help="torch.compile mode of the DDP model (default none)")
    parser.add_argument("--optimizer", default="default", help="default (the family's), sgd or adamw")
    parser.add_argument("--channels-last", action="store_true", help="NHWC model and input")
    parser.add_argument("--backend", choices=("nccl", "gloo"), help="process group backend (default nccl on CUDA, gloo on a CPU)")
    parser.add_argument("--bucket-mb", type=positive_float, default=25.0, help="DDP bucket_cap_mb (default 25)")
    parser.add_argument("--static-graph", action="store_true", help="DDP static_graph=True")
    parser.add_argument("--grad-as-bucket-view", action="store_true", help="DDP gradient_as_bucket_view=True")
    parser.add_argument("--device", default="auto", help="cpu or cuda (ranks take cuda:LOCAL_RANK); auto: cuda if present")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per rank (default 5)")
    parser.add_argument("--steps", type=int, help=f"timed steps per rank, the same on every rank (default "
                                                   f"{DEFAULT_STEPS['cuda']} on CUDA, {DEFAULT_STEPS['cpu']} on a CPU)")
    parser.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"kill a world size's job after S seconds (default {DEFAULT_TIMEOUT_S:g}); also the "
                             "process group's collective timeout")
    parser.add_argument("--link-bw", metavar="BW",
                        help="link for the ring all-reduce bound: a bandwidth per direction with its unit "
                             "(450GB/s, 400Gb/s) or a name (nvlink4, pcie5, ib-ndr, ...); default: the GPU's "
                             "usual link in one node, none on a CPU or across nodes")
    parser.add_argument("--out", type=Path, default=None, help=f"reports directory (default {DEFAULT_REPORTS})")
    parser.set_defaults(func=run)


def _check_positive(value: float | None, flag: str, minimum: float = 1) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be >= {minimum:g}, got {value:g}")


def _spec(args: argparse.Namespace, impl: str, device: str):
    """The ScaleSpec of one implementation; UsageError for anything a job would refuse."""
    from bench.config.cell import Cell
    from bench.execute.ddp import DdpOptions
    from bench.execute.prepare import check_cell
    from bench.hardware.gpus import node_link, parse_link
    from bench.models import get_entry
    from bench.runner.scale import ScaleSpec

    kind = "cpu" if device == "cpu" else "cuda"
    batch = args.batch_per_rank or DEFAULT_BATCH[kind]
    image_size = args.image_size or get_entry(args.arch, impl).image_size
    cell = Cell(arch=args.arch, impl=impl, batch_size=batch, image_size=image_size,
                precision=args.precision or default_train_precision(kind), channels_last=args.channels_last,
                compile=args.compile, mode="train", optimizer=args.optimizer, device=device)
    check_trains(cell.precision)
    check_cell(cell)
    if args.link_bw:
        link = parse_link(args.link_bw)
    elif kind == "cuda" and args.nnodes == 1:
        import torch

        link = node_link(torch.cuda.get_device_name(0))
    else:
        link = None
    return ScaleSpec(cell=dataclasses.replace(cell, device=kind), ddp=DdpOptions(args.bucket_mb, args.static_graph,
                     args.grad_as_bucket_view), backend=args.backend or ("gloo" if kind == "cpu" else "nccl"),
                     warmup=args.warmup, steps=args.steps or DEFAULT_STEPS[kind], profile_steps=PROFILE_STEPS,
                     timeout_s=args.timeout, link=link, nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint)


def _nprocs(args: argparse.Namespace, device: str, gpus: int) -> list[int]:
    if args.nproc is None:
        return [1, 2] if device == "cpu" else [2**i for i in range(gpus.bit_length()) if 2**i <= gpus]
    for n in args.nproc:
        _check_positive(n, "--nproc")
        if device != "cpu" and n > gpus:
            raise UsageError(f"--nproc {n}: this node has {gpus} CUDA device(s)")
    return sorted(set(args.nproc))


def _validate(args: argparse.Namespace, device: str) -> None:
    _check_positive(args.nnodes, "--nnodes")
    _check_positive(args.steps, "--steps")
    _check_positive(args.warmup, "--warmup", 0)
    _check_positive(args.batch_per_rank, "--batch-per-rank")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise UsageError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT, the same on every node")
    if args.rdzv_endpoint:
        from bench.runner.endpoint import check_listenable, parse_endpoint

        host, port = parse_endpoint(args.rdzv_endpoint, "--rdzv-endpoint")
        check_listenable(host, port, "--rdzv-endpoint", local_only=args.nnodes == 1)
    if args.backend == "nccl" and device == "cpu":
        raise UsageError("--backend nccl needs CUDA; on a CPU use gloo")


def run(args: argparse.Namespace) -> int:
    """Validate everything, then run each implementation's world sizes into one run directory.

    SIGTERM or Ctrl-C stops the job running (torchrun and every rank), keeps the rows measured and
    writes the tables and report from them; a full disk raises DiskFull (the rows written are kept)."""
    from bench.commands.stopping import disk_full_ends, signals_interrupt
    from bench.hardware.device import cuda_count, resolve_device
    from bench.results.rundir import lock_run_dir, new_run_dir, write_config

    device = resolve_device(args.device)
    gpus = cuda_count() if device != "cpu" else 0
    _validate(args, device)
    nprocs = _nprocs(args, device, gpus)
    specs = [_spec(args, impl, device) for impl in args.impls]
    reports_dir = args.out or DEFAULT_REPORTS
    run_dir = new_run_dir(reports_dir, f"scale-{specs[0].cell.device}")
    lock = lock_run_dir(run_dir)
    try:
        with disk_full_ends(reports_dir, run_dir, resume=False):
            write_config(run_dir, {"command": "scale", "nproc": nprocs, "specs": [s.to_json() for s in specs]})
            with signals_interrupt() as stop:
                try:
                    return _measure(specs, nprocs, run_dir, reports_dir, stop)
                except KeyboardInterrupt:  # the first signal came between the jobs and its flag's reset
                    print(f"rvbench scale: interrupted; the rows measured are kept in {run_dir}", file=sys.stderr)
                    return stop.exit_code()
    finally:
        lock.close()


def _measure(specs: list, nprocs: list[int], run_dir: Path, reports_dir: Path, stop: Stop) -> int:
    """Run the world sizes of every spec (until a signal stops them: `stop`), then write the tables
    and report of the rows measured; the exit code."""
    from bench.report.sections.scaling import scaling_text
    from bench.report.summary import write_run_report
    from bench.results.store import ResultWriter, finalize, update_latest
    from bench.runner.scale import run_scale

    writer = ResultWriter(run_dir)
    stopped = bool(stop.received)  # a signal during the set-up: measure nothing, write what is there
    try:
        with stop.measuring_now():
            for spec in specs if not stopped else []:
                run_scale(spec, nprocs, run_dir, writer)
    except KeyboardInterrupt:  # the job running was stopped on the way out of run_scale
        stopped = True
    finally:
        writer.close()
    df = finalize(run_dir)
    text = scaling_text(df)
    report = write_run_report(run_dir, text) if len(df) else None
    update_latest(reports_dir, run_dir)
    print(text + f"run directory: {run_dir}" + (f"\nreport: {report}" if report else ""))
    if stopped or stop.received:  # a signal while the tables or report were written counts too
        code = stop.exit_code()
        print(f"rvbench scale: {code.name.lower()}: the job running was stopped; {len(df)} row(s) kept in {run_dir}",
              file=sys.stderr)
        return code
    if report is None:
        print(f"rvbench scale: error: the HTML report failed; results kept, rebuild with `rvbench report {run_dir}`",
              file=sys.stderr)
        return ExitCode.REPORT_FAILED
    if not (df["status"] == "ok").any():
        print("rvbench scale: error: no world size finished; see the failed rows in the report", file=sys.stderr)
        return ExitCode.NOTHING_MEASURED
    return ExitCode.OK
