"""`rvbench run`: sweep a preset on one device, several (--devices) or a Ray cluster (--cluster) into a
run directory, resumably."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bench.commands.args import DEFAULT_REPORTS, exit_codes_help, int_list, name_list, seconds
from bench.config.presets import list_presets
from bench.commands.stopping import Stop, disk_full_ends, signals_interrupt
from bench.config.backends import backend_help
from bench.errors import ExitCode, UsageError
from bench.hardware.device import check_capability, cuda_count, resolve_device
from bench.precisions import CUDA_ONLY_PRECISIONS, PRECISIONS
from bench.runner import CPU_MAX_BATCH_LIMIT, MAX_BATCH_LIMIT

# The sweep's modules (torch, pandas) are imported where they are used, so `rvbench run --help` is instant.
if TYPE_CHECKING:
    from bench.config.sweep import SweepSpec, TimingConfig
    from bench.runner.runner import Job

# Options that define the sweep; with --resume the sweep comes from DIR/config.json instead.
SWEEP_OPTIONS = ("preset", "models", "impls", "batch_sizes", "precisions", "compile", "backends", "modes",
                 "optimizers", "channels_last", "image_size", "rounds", "find_max_batch")
# ... and with --resume the run stays where it is.
RESUME_CONFLICTS = SWEEP_OPTIONS + ("process_time", "out")
# --cell-timeout when none is given on a GPU: far above any cell's running time, so only a hung cell
# (or a compilation hung just as long: the two are timed apart, see bench.runner.runner) is killed.
GPU_CELL_TIMEOUT_S = 900.0


def register(parser: argparse.ArgumentParser) -> None:
    """Add the options of `rvbench run`."""
    parser.epilog = ("Lists are comma-separated. Overrides replace that axis in every block of the preset. "
                     + exit_codes_help(*ExitCode))
    sweep = parser.add_argument_group("sweep (preset and overrides)")
    sweep.add_argument("--preset", choices=list_presets(), default=None,
                       help="sweep preset from bench/config/presets (default: gpu on CUDA, else cpu)")
    sweep.add_argument("--models", type=name_list, help="archs to run, e.g. resnet50,vit_base_patch16_224")
    sweep.add_argument("--impls", type=name_list, help="implementations: rv, torchvision, timm")
    sweep.add_argument("--batch-sizes", type=int_list, help="batch sizes, e.g. 1,32,256 (never reduced on OOM)")
    sweep.add_argument("--precisions", type=name_list,
                       help=f"{', '.join(PRECISIONS)} ({', '.join(CUDA_ONLY_PRECISIONS)} need CUDA; torch-default "
                            "is PyTorch's defaults, cuDNN TF32 on and matmul TF32 off: timm's float32)")
    sweep.add_argument("--compile", type=name_list,
                       help="torch.compile modes: none, default, max-autotune, max-autotune-no-cudagraphs, "
                            "reduce-overhead (CUDA); default-freeze, max-autotune-freeze, "
                            "max-autotune-no-cudagraphs-freeze: with Inductor freezing (inference only)")
    sweep.add_argument("--backends", type=name_list,
                       help=backend_help() + "; a backend other than eager joins the inference cells without compile")
    sweep.add_argument("--modes", type=name_list, help="inference, train (full step), finetune (frozen backbone)")
    sweep.add_argument("--optimizer", dest="optimizers", type=name_list,
                       help="optimizers of train and finetune cells: sgd (timm's benchmark: SGD, Nesterov "
                            "momentum), adamw, default (each registered family's usual, from its spec: SGD momentum "
                            "for ResNets, AdamW for ViTs and ConvNeXts; the default)")
    sweep.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="run every model in NHWC (or none); default: as the preset says")
    sweep.add_argument("--image-size", type=int, help="input side in px (0: each model's default)")
    sweep.add_argument("--rounds", type=int, help="repeats of every cell, impls interleaved per round")
    sweep.add_argument("--process-time", action="store_true", default=None,
                       help="time CPU steps in the process's CPU time instead of wall time, so other jobs on a "
                            "shared machine do not count (row column timer = process-cpu); with OMP_NUM_THREADS=1 "
                            "a step's CPU time is its latency on an idle core")
    sweep.add_argument("--find-max-batch", action="store_true", default=None,
                       help="also search the largest batch that fits for each config (own row, "
                            "find_max_batch=true); an OOM, worker crash, timeout or an error above batch 1 "
                            "means 'does not fit' (max_batch_limit_reason says which); probes stop at "
                            f"{MAX_BATCH_LIMIT} on a GPU, {CPU_MAX_BATCH_LIMIT} on a CPU")
    where = parser.add_argument_group("where and how")
    where.add_argument("--device", default="auto",
                       help="cpu, cuda or cuda:N; auto = cuda:0 if present, else cpu (with --cluster: cuda or cpu)")
    where.add_argument("--devices", type=name_list, metavar="LIST",
                       help="run on several devices at once, one worker each, e.g. cuda:0,cuda:1 or all (every "
                            "visible GPU); the implementations of one configuration and round stay on one device. "
                            "A device named twice gets two slots (cpu,cpu: for tests; CPU slots contend for the cores)")
    where.add_argument("--cluster", metavar="ADDRESS",
                       help="run on a Ray cluster, one actor per GPU (--device cpu: per unit of the node resource "
                            "rvbench_cpu): ray://HOST:PORT, HOST:PORT, or auto ($RAY_ADDRESS); needs "
                            "pip install 'rvbench[cluster]'")
    where.add_argument("--out", type=Path, default=None,
                       help="reports directory: the run goes to OUT/runs/<time>-<host>-<device>/, "
                            f"OUT/latest links to it (default: {DEFAULT_REPORTS})")
    where.add_argument("--resume", type=Path, metavar="DIR",
                       help="continue the run in DIR: run only cells without a row (its config.json "
                            "defines the sweep and where it runs, unless --devices or --cluster says otherwise)")
    where.add_argument("--cell-timeout", type=seconds, metavar="S",
                       help="kill a cell after S seconds outside compilation, or S seconds compiling (row "
                            f"status timeout, worker restarted); default: {GPU_CELL_TIMEOUT_S:g} on a GPU, none on a CPU")
    where.add_argument("--profile", action="store_true",
                       help="afterwards, profile every impl of each arch at the arch's fastest "
                            "config into RUN_DIR/profiles/<arch>-<impl>/")
    parser.set_defaults(func=run)


def _resume_spec(args: argparse.Namespace) -> tuple[SweepSpec, dict, Path]:
    """The sweep of `--resume DIR` (its config.json) and the config itself, which says where it ran."""
    given = [o for o in RESUME_CONFLICTS if getattr(args, o) is not None]
    if given or args.device != "auto":
        flags = ", ".join("--" + o.replace("_", "-") for o in given + (["device"] if args.device != "auto" else []))
        raise UsageError(f"--resume continues DIR where it is, as DIR/config.json says; drop {flags}")
    config = args.resume / "config.json"
    if not config.is_file():
        raise UsageError(f"{args.resume} is not a run directory (no config.json)")
    try:
        data = json.loads(config.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{config} is damaged ({exc}); it is not a run's config") from None
    command = data.get("command", "run") if isinstance(data, dict) else "run"
    if command != "run":
        raise UsageError(f"{args.resume} was made by `rvbench {command}`, which has no --resume; "
                         "`rvbench run --resume` continues `rvbench run` directories only")
    from bench.config.sweep import SweepSpec

    spec = SweepSpec.from_json(data, where=str(config))
    reports_dir = args.resume.parent.parent if args.resume.parent.name == "runs" else None
    return spec, data, reports_dir


def _new_spec(args: argparse.Namespace, device: str) -> SweepSpec:
    from bench.config.sweep import build_spec

    preset = args.preset or ("cpu" if device == "cpu" else "gpu")
    overrides = {o: getattr(args, o) for o in SWEEP_OPTIONS if o not in ("preset", "find_max_batch")}
    spec = build_spec(preset, device, overrides, find_max_batch=bool(args.find_max_batch))
    if args.process_time:
        if device != "cpu":
            raise UsageError(f"--process-time times CPU steps; {device}'s steps are timed by CUDA events")
        spec.timing["process_time"] = True
    return spec


def _local_devices(names: list[str]) -> list[str]:
    """--devices resolved here ("all": every visible CUDA device), each checked to exist."""
    if names == ["all"]:
        if not cuda_count():
            raise UsageError("--devices all: this machine has no CUDA device; valid: cpu or cuda:N lists")
        return [f"cuda:{i}" for i in range(cuda_count())]
    return [resolve_device(name) for name in names]


def _kind(device: str) -> str:
    return "cpu" if device == "cpu" else "cuda"


def _where(args: argparse.Namespace, config: dict | None) -> tuple[str | None, list[str] | None, str | None]:
    """Where the run goes: (cluster address, None, its device) or (None, local devices, their first).

    A resumed run goes where it went before unless --devices or --cluster says otherwise; the device
    is then that of its cells (None here: config.json has it)."""
    if args.devices and args.cluster:
        raise UsageError("--devices and --cluster: give one (a cluster places its own actors)")
    if args.devices and args.device != "auto":
        raise UsageError("--device and --devices: give one")
    if args.profile and (args.cluster or (config or {}).get("cluster") and not args.devices):
        raise UsageError("--profile runs on this machine, not on a cluster: profile with `rvbench profile` on a node")
    cluster = args.cluster or (None if config is None or args.devices else config.get("cluster"))
    if cluster:
        from bench.runner.cluster import cluster_device, connect

        connect(cluster)
        if config is None:
            return cluster, None, cluster_device(args.device)
        cluster_device(_kind(config["device"]))
        return cluster, None, None
    names = args.devices or (config.get("devices") or [config["device"]] if config else [args.device])
    devices = _local_devices(names)
    return None, devices, None if config else devices[0]


def _run_label(cluster: str | None, devices: list[str] | None, device: str) -> str:
    """What the run directory's name says it ran on: the device, N x its kind, or ray-<kind>."""
    if cluster:
        return f"ray-{_kind(device)}"
    return device.replace(":", "") if len(devices) == 1 else f"{len(devices)}x{_kind(device)}"


def run(args: argparse.Namespace) -> int:
    """Validate everything, then sweep; returns _sweep's exit code (0 when all went well).

    A full disk raises DiskFull naming the run directory to resume (finished rows are kept)."""
    from bench.config.sweep import expand, timing_config
    from bench.results.rundir import lock_run_dir, new_run_dir, write_config
    from bench.runner.runner import plan_jobs

    if args.resume:
        spec, config, reports_dir = _resume_spec(args)
        cluster, devices, _ = _where(args, config)
    else:
        cluster, devices, device = _where(args, None)
        spec, reports_dir = _new_spec(args, device), args.out or DEFAULT_REPORTS
    if devices and {_kind(d) for d in devices} != {_kind(spec.device)}:
        raise UsageError(f"the run's cells are for {spec.device}; --devices must be {_kind(spec.device)} devices too")
    timing = timing_config(spec)
    cells = expand(spec)
    for backend, precision, why in spec.skipped_backends:
        print(f"rvbench run: skipping backend {backend} in {precision}: {why}", file=sys.stderr)
    jobs = plan_jobs(cells, spec.find_max_batch)
    for device, precision in dict.fromkeys((d, c.precision) for d in devices or [] for c in cells):
        check_capability(device, precision)

    run_dir = args.resume or new_run_dir(reports_dir, _run_label(cluster, devices, spec.device))
    lock = lock_run_dir(run_dir)
    try:
        with disk_full_ends(reports_dir, run_dir, resume=True):
            if not args.resume:
                write_config(run_dir, {**spec.to_json(), "cells": len(cells), "jobs": len(jobs),
                                        "devices": devices, "cluster": cluster})
            with signals_interrupt() as stop:
                try:
                    return _sweep(args, spec, timing, jobs, (cluster, devices), run_dir, reports_dir, stop)
                except KeyboardInterrupt:  # the first signal came between the sweep and its flag's reset
                    print(f"rvbench run: interrupted; {_resume_hint(run_dir)}", file=sys.stderr)
                    return stop.exit_code()
    finally:
        lock.close()


def _resume_hint(run_dir: Path) -> str:
    """The line that tells an interrupted run how to go on."""
    return f"continue with: rvbench run --resume {run_dir}"


def _sweep(args: argparse.Namespace, spec: SweepSpec, timing: TimingConfig, jobs: list[Job],
           where: tuple[str | None, list[str] | None], run_dir: Path, reports_dir: Path | None,
           stop: Stop) -> int:
    """Run the jobs not yet recorded in run_dir on the cluster or local devices of `where`, then write
    the tables, report and summary.

    Returns OK; FAILED when a cluster lost every slot; the signal's code when `stop` received one
    (the sweep stopped, or it came while the tables and report were written); else REPORT_FAILED
    when the HTML report failed, NOTHING_MEASURED when no cell is ok."""
    from bench.report.summary import SUMMARY_NAME, summary_counts, summary_text, write_run_report
    from bench.results import ResultWriter, finalize, finished_cell_ids, update_latest
    from bench.results.rundir import env_recorder
    from bench.runner.cluster import SlotsLost, run_cluster
    from bench.runner.progress import sweep_progress
    from bench.runner.runner import Runner, group_jobs, profile_cells
    from bench.runner.schedule import Board, run_local, slots

    done = finished_cell_ids(run_dir)
    todo = [job for job in jobs if job.job_id not in done]
    cluster, devices = where

    cell_timeout = args.cell_timeout
    if cell_timeout is None and spec.device != "cpu":
        cell_timeout = GPU_CELL_TIMEOUT_S
    writer = ResultWriter(run_dir)
    bar = sweep_progress(len(jobs), len(jobs) - len(todo))
    board = Board(bar, env_recorder(run_dir))
    runners = [Runner(run_dir, run_dir.name, timing, cell_timeout, slot) for slot in slots(devices or [])]
    lost = None
    try:
        with stop.measuring_now():
            if stop.received:  # a signal during the set-up: measure nothing, write what is there
                completed = False
            elif cluster:
                completed = run_cluster(group_jobs(todo), writer, board, run_dir.name, timing, cell_timeout,
                                        spec.device)
            else:
                completed = run_local(runners, group_jobs(todo), writer, board)
    except KeyboardInterrupt:  # the signal came in the sweep but outside the runners' own handling
        completed = False
    except SlotsLost as exc:
        completed, lost = False, exc
    finally:
        bar.close()
        writer.close()

    df = finalize(run_dir)
    if completed and args.profile and not stop.received:
        try:  # a signal stops the profiles too; those written are kept, the report follows
            with stop.measuring_now():
                print("\n".join(runners[0].profile(profile_cells(df), run_dir / "profiles")))
        except KeyboardInterrupt:
            pass
        finally:
            runners[0].close()
    text = summary_text(df)
    report = write_run_report(run_dir, text)
    if reports_dir is not None:
        update_latest(reports_dir, run_dir)
    print(text + f"run directory: {run_dir}" + (f"\nreport: {report}" if report else ""))
    if lost is not None:
        print(f"rvbench run: error: {lost}; {len(df)} of {len(jobs)} cells recorded; {_resume_hint(run_dir)}",
              file=sys.stderr)
        return ExitCode.FAILED
    if not completed:
        print(f"interrupted: {len(df)} of {len(jobs)} cells recorded; {_resume_hint(run_dir)}")
    if stop.received:
        return stop.exit_code()
    if report is None:
        print(f"rvbench run: error: the HTML report failed (its error is in {run_dir / SUMMARY_NAME}); "
              f"the results are kept, rebuild with `rvbench report {run_dir}`", file=sys.stderr)
        return ExitCode.REPORT_FAILED
    if not (df["status"] == "ok").any():
        print(f"rvbench run: error: no cell was measured ({summary_counts(df)}); see {run_dir / SUMMARY_NAME}",
              file=sys.stderr)
        return ExitCode.NOTHING_MEASURED
    return ExitCode.OK
