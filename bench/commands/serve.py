"""`rvbench serve`: latency under load, in MLPerf Inference's SingleStream, Server and Offline scenarios, with a
dynamic batcher in front of the model and a load generator in a process of its own (bench.measure.scenarios)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import uuid
from pathlib import Path

from bench.columns import SCENARIOS
from bench.commands.args import DEFAULT_REPORTS, exit_codes_help, name_list, positive_float
from bench.commands.stopping import Stop, signals_interrupt
from bench.config.serving import DEFAULT_BATCHERS, DEFAULT_QUERIES, DEFAULT_SLO_MS, Batcher, parse_batchers
from bench.errors import ExitCode, UsageError
from bench.precisions import DEFAULT_PRECISION, precision_help

MIN_QUERIES = 100
# What a run's config.json must hold for --resume, and what --resume takes from it (not from the command line).
_SPEC = ("arch", "impls", "compile", "precision", "device", "image_size", "channels_last", "scenario", "slo_ms",
         "batchers", "queries", "seed")


def register(parser: argparse.ArgumentParser) -> None:
    """Add the options of `rvbench serve`."""
    parser.epilog = ("A request's latency runs from its scheduled arrival to its completion, so a server that falls "
                     "behind shows its queue (no coordinated omission). "
                     + exit_codes_help(ExitCode.OK, ExitCode.USAGE, ExitCode.DISK_FULL, ExitCode.NOTHING_MEASURED,
                                       ExitCode.INTERRUPTED, ExitCode.TERMINATED))
    parser.add_argument("arch", metavar="ARCH", nargs="?", help="e.g. resnet50, vit_base_patch16_224")
    parser.add_argument("--impls", type=name_list, help="rv, torchvision, timm (default: every one that has ARCH)")
    parser.add_argument("--compile", type=name_list, default=["none"],
                        help="torch.compile modes to serve, each its own configuration (default none: eager); every "
                             "batch size the batcher can form is compiled in warm-up")
    parser.add_argument("--precision", default=DEFAULT_PRECISION, help=precision_help())
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N; auto = cuda:0 if present, else cpu")
    parser.add_argument("--image-size", type=int, help="input side in px (default: the model's, 224)")
    parser.add_argument("--channels-last", action="store_true", help="run the model and its batches in NHWC")
    parser.add_argument("--scenario", type=name_list, default=list(SCENARIOS),
                        help="single-stream (p90 latency of back-to-back requests), server (the highest Poisson QPS "
                             "whose p99 meets --slo-ms), offline (throughput of one large query); default: all")
    parser.add_argument("--slo-ms", type=positive_float, default=DEFAULT_SLO_MS,
                        help=f"the Server scenario's p99 latency bound in ms (default {DEFAULT_SLO_MS:g}, MLPerf's for "
                             "ResNet-50)")
    parser.add_argument("--batchers", type=parse_batchers, default=parse_batchers(DEFAULT_BATCHERS),
                        help="dynamic batcher settings MAX_BATCH:DELAY_MS, each served in turn: up to MAX_BATCH queued "
                             "requests, the oldest waiting at most DELAY_MS for more (1:0: no batching; default "
                             f"{DEFAULT_BATCHERS})")
    parser.add_argument("--queries", type=int, default=DEFAULT_QUERIES,
                        help=f"requests per SingleStream run, Server trial and Offline query (default "
                             f"{DEFAULT_QUERIES}; a Server trial takes at least 459, the fewest that can show p99 "
                             "below the SLO with 99%% confidence)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"reports directory: the run goes to OUT/runs/<time>-<host>-serve-<device>/ "
                             f"(default: {DEFAULT_REPORTS})")
    parser.add_argument("--resume", type=Path, metavar="DIR",
                        help="continue the serve run in DIR (its config.json says what to serve): measure only what "
                             "has no answer yet")
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> tuple[list[str], int, str]:
    """UsageError for any bad option; returns the impls, the image size and the resolved device."""
    from bench.config.cell import Cell
    from bench.execute.prepare import check_cell
    from bench.hardware.device import resolve_device
    from bench.models import get_entry, list_entries

    if not args.arch:
        raise UsageError("give the ARCH to serve, e.g. rvbench serve resnet50, or --resume DIR")
    unknown = [s for s in args.scenario if s not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario {', '.join(map(repr, unknown))}; valid: {', '.join(SCENARIOS)}")
    if args.queries < MIN_QUERIES:
        raise UsageError(f"--queries must be >= {MIN_QUERIES}, got {args.queries}")
    impls = args.impls or [e.impl for e in list_entries([args.arch])]
    image_size = args.image_size or get_entry(args.arch, impls[0]).image_size
    device = resolve_device(args.device)
    largest = max(b.max_batch for b in args.batchers)
    for impl in impls:
        for mode in args.compile:
            check_cell(Cell(args.arch, impl, largest, image_size, args.precision, args.channels_last, mode,
                            device=device))
    return impls, image_size, device


def _resumed(args: argparse.Namespace) -> argparse.Namespace:
    """The options of the serve run in `args.resume`, from its config.json."""
    config_path = args.resume / "config.json"
    if not config_path.is_file():
        raise UsageError(f"{args.resume} is not a run directory (no config.json)")
    config = json.loads(config_path.read_text())
    if config.get("command") != "serve":
        raise UsageError(f"{args.resume} was made by `rvbench {config.get('command', 'run')}`; `rvbench serve "
                         "--resume` continues `rvbench serve` directories only")
    if args.arch:
        raise UsageError("--resume continues DIR as its config.json says; drop ARCH")
    spec = {k: config[k] for k in _SPEC}
    spec["batchers"] = [Batcher(b, d) for b, d in spec["batchers"]]
    return argparse.Namespace(**{**vars(args), **spec})


def run(args: argparse.Namespace) -> int:
    """Check everything, then serve every configuration in every scenario into one run directory."""
    from bench.results.rundir import lock_run_dir, new_run_dir, write_config

    if args.resume:
        args = _resumed(args)
    impls, image_size, device = _check(args)
    args.impls, args.image_size, args.device = impls, image_size, device
    reports_dir = args.out or (args.resume.parent.parent if args.resume else DEFAULT_REPORTS)
    run_dir = args.resume or new_run_dir(reports_dir, f"serve-{device.replace(':', '')}")
    lock = lock_run_dir(run_dir)
    try:
        if not args.resume:
            write_config(run_dir, {"command": "serve", **{k: getattr(args, k) for k in _SPEC},
                                   "batchers": [[b.max_batch, b.max_delay_ms] for b in args.batchers]})
        with signals_interrupt() as stop:
            try:
                return _serve_and_report(args, run_dir, reports_dir, stop)
            except KeyboardInterrupt:  # the first signal came between the serving and its flag's reset
                print(_interrupted(run_dir), file=sys.stderr)
                return stop.exit_code()
    finally:
        lock.close()


def _interrupted(run_dir: Path) -> str:
    return f"rvbench serve: interrupted; continue with: rvbench serve --resume {run_dir}"


def _serve_and_report(args: argparse.Namespace, run_dir: Path, reports_dir: Path, stop: Stop) -> ExitCode:
    """Serve everything not yet answered, then write the tables, report and `latest`, also when a signal stopped
    the serving. Returns the signal's code; else NOTHING_MEASURED when no answer is ok; else OK."""
    from bench.report.summary import write_run_report
    from bench.report.text import format_table
    from bench.results import finalize, update_latest
    from bench.results.serving import summary

    interrupted = bool(stop.received)
    try:
        with stop.measuring_now():
            if not interrupted:
                _serve_all(args, run_dir)
    except KeyboardInterrupt:
        interrupted = True
    df = finalize(run_dir)
    table = summary(df)
    shown = table.drop(columns="message").round(2)
    text = format_table(list(shown.columns), shown.itertuples(index=False), left=6) + "\n"
    notes = [f"{r.impl} {r.variant} {r.scenario} {r.batcher}: {r.message}".replace("  ", " ")
             for r in table.itertuples() if r.message]
    text += "".join(f"{note}\n" for note in notes)
    report = write_run_report(run_dir, text)
    update_latest(reports_dir, run_dir)
    print(text + f"run directory: {run_dir}" + (f"\nreport: {report}" if report else ""))
    if interrupted:
        print(_interrupted(run_dir), file=sys.stderr)
        return stop.exit_code()
    if not (table["status"] == "ok").any():
        print(f"rvbench serve: error: nothing was served (each answer's message above); rows in {run_dir}",
              file=sys.stderr)
        return ExitCode.NOTHING_MEASURED
    return ExitCode.OK


def _cell_id(key: dict, **more: object) -> str:
    return hashlib.sha1(json.dumps({**key, **more}, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _answers(args: argparse.Namespace) -> list[tuple[str, Batcher]]:
    """(scenario, batcher) of each answer: SingleStream once (no batcher), Offline once per largest batch, the
    Server search per batcher."""
    answers: list[tuple[str, Batcher]] = []
    for scenario in SCENARIOS:
        if scenario not in args.scenario:
            continue
        if scenario == "single-stream":
            answers.append((scenario, Batcher(1, 0)))
        elif scenario == "offline":
            answers += [(scenario, Batcher(b, 0)) for b in sorted({b.max_batch for b in args.batchers})]
        else:
            answers += [(scenario, b) for b in args.batchers]
    return answers


def _serve_all(args: argparse.Namespace, run_dir: Path) -> None:
    """Every implementation x compile mode, built once, served in each scenario not yet answered; each row is
    appended (fsynced) as it is measured."""
    from bench.config.cell import Cell
    from bench.measure.env import collect_env
    from bench.results import ResultWriter, finished_cell_ids
    from bench.results.rundir import env_recorder

    env = collect_env(args.device)
    env_recorder(run_dir)(args.device, env)
    done = finished_cell_ids(run_dir)
    largest = max(b.max_batch for b in args.batchers)
    writer = ResultWriter(run_dir)
    try:
        for impl in args.impls:
            for mode in args.compile:
                cell = Cell(args.arch, impl, largest, args.image_size, args.precision, args.channels_last, mode,
                            device=args.device)
                key = {k: v for k, v in cell.config().items() if k not in ("batch_size", "round")}
                todo = []
                for scenario, batcher in _answers(args):
                    cell_id = _cell_id(key, scenario=scenario, max_batch=batcher.max_batch,
                                       delay=batcher.max_delay_ms, queries=args.queries, seed=args.seed,
                                       slo=args.slo_ms if scenario == "server" else None)
                    if cell_id not in done:
                        todo.append((scenario, batcher, cell_id))
                if todo:
                    _serve_cell(args, cell, todo, writer, run_dir.name, env)
    finally:
        writer.close()


def _serve_cell(args: argparse.Namespace, cell, todo: list, writer, run_id: str, env: dict) -> None:
    """One configuration built once and served in each of `todo`'s (scenario, batcher, result cell id); a
    failure (out of memory, an error) is its answer's row, and the next goes on."""
    from dataclasses import replace

    from bench.execute.serving import served_model
    from bench.measure import scenarios
    from bench.results.rows import make_row
    from bench.runner.worker import is_oom

    def write(batcher: Batcher, scenario: str, cell_id: str, status: str, message: str, started: float,
              **columns: object) -> None:
        row_cell = replace(cell, batch_size=batcher.max_batch)
        writer.write(make_row(run_id, cell_id, row_cell, status, message, env=env, started=started,
                              mode=f"serve-{scenario}", find_max_batch=False, **columns), None)

    started = time.time()
    try:
        with served_model(cell) as model:
            for scenario, batcher, cell_id in todo:
                started = time.time()
                try:
                    if scenario == "single-stream":
                        rows = [{**scenarios.single_stream(model, args.queries), "record": "result"}]
                    elif scenario == "offline":
                        rows = [{**scenarios.offline(model, batcher, args.queries, args.seed), "record": "result"}]
                    else:
                        rows = scenarios.server_search(model, batcher, args.slo_ms, args.queries, args.seed)
                    for columns in rows:
                        message = columns.pop("message", "")
                        result = columns["record"] == "result"
                        write(batcher, scenario, cell_id if result else _cell_id({"trial": uuid.uuid4().hex}),
                              "ok", message, started, **columns)
                        _print(cell, scenario, batcher, columns, message)
                except (RuntimeError, ValueError) as exc:  # torch.OutOfMemoryError is a RuntimeError
                    write(batcher, scenario, cell_id, "oom" if is_oom(exc) else "error", _first_line(exc), started,
                          record="result")
                    print(f"{cell.impl} {scenario} {batcher.label}: {_first_line(exc)}", flush=True)
    except (RuntimeError, ValueError) as exc:  # the build or warm-up failed: every answer of the configuration
        for scenario, batcher, cell_id in todo:
            write(batcher, scenario, cell_id, "oom" if is_oom(exc) else "error", _first_line(exc), started,
                  record="result")
        print(f"{cell.impl}: {_first_line(exc)}", flush=True)


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def _print(cell, scenario: str, batcher: Batcher, columns: dict, message: str) -> None:
    what = f"{cell.impl} {cell.compile if cell.compile != 'none' else 'eager'} {scenario}"
    if scenario == "server":
        what += f" {batcher.label} trial {columns['trial']}: {columns['offered_qps']:.1f} QPS offered, p99 " \
                f"{columns['lat_ms_p99']:.1f} ms, {'met' if columns['slo_met'] else 'missed'}"
        if columns["record"] == "result":
            what = f"{cell.impl} server {batcher.label}: {message}"
    elif scenario == "offline":
        what += f" batch {batcher.max_batch}: {columns['achieved_qps']:.1f} samples/s"
    else:
        what += f": p90 {columns['lat_ms_p90']:.2f} ms ({columns['early_stop']})"
    print(what, flush=True)
