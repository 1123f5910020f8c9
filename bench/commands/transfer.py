"""`rvbench transfer`: time to accuracy of transfer-learning strategies, rv vs torchvision vs timm."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from bench.commands.args import DEFAULT_REPORTS, exit_codes_help, name_list, positive_float, seconds
from bench.commands.stopping import Stop, signals_interrupt
from bench.columns import TRANSFER_MODE
from bench.errors import ExitCode, UsageError
from bench.precisions import DEFAULT_PRECISION, TRAINING_PRECISIONS, check_trains, precision_help
from bench.report.summary import write_run_report
from bench.report.text import format_table
from bench.results import ResultWriter, finalize, update_latest
from bench.results.rows import make_row
from bench.results.rundir import env_recorder, lock_run_dir, new_run_dir, write_config
from bench.results.transfer import run_summary

STRATEGY_HELP = ("linear (head only, backbone frozen), staged (head, then the last backbone group, then "
                 "everything; needs >= 3 epochs), full (everything, backbone at 0.1 x the head's lr), scratch "
                 "(random init, everything at one lr)")


def register(parser: argparse.ArgumentParser) -> None:
    """Add the options of `rvbench transfer`."""
    from bench.execute.transfer import STRATEGIES

    parser.epilog = ("Every implementation starts from the same weights: the pretrained ones of the local torch hub "
                     "or Hugging Face cache (torchvision's first, then timm's; nothing is downloaded), else rv's "
                     "random init (weights column 'random'). "
                     + exit_codes_help(ExitCode.OK, ExitCode.USAGE, ExitCode.DISK_FULL, ExitCode.NOTHING_MEASURED,
                                     ExitCode.INTERRUPTED, ExitCode.TERMINATED))
    parser.add_argument("arch", metavar="ARCH", help="e.g. resnet18, vit_tiny_patch16_224")
    parser.add_argument("--data", type=Path, required=True,
                        help="an ImageFolder directory (one subdirectory of images per class; a fifth of each "
                             "validates), a directory of train/ and val/ ImageFolders, or a CIFAR-10 "
                             "python-batches directory (cifar-10-batches-py)")
    parser.add_argument("--impls", type=name_list, help="rv, torchvision, timm (default: every one that has ARCH)")
    parser.add_argument("--strategy", type=name_list, default=list(STRATEGIES), help=STRATEGY_HELP)
    parser.add_argument("--target-acc", type=positive_float, default=0.8, help="validation top-1 (0..1) to time (default 0.8)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (default 10)")
    parser.add_argument("--budget-s", type=seconds,
                        help="stop each run at the first epoch end past S seconds of training and evaluation")
    parser.add_argument("--precision", default=DEFAULT_PRECISION, help=precision_help(TRAINING_PRECISIONS))
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N; auto = cuda:0 if present, else cpu")
    parser.add_argument("--image-size", type=int, help="model input side in px; images are resized on the device "
                                                       "(default: the model's, 224)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch (default 64)")
    parser.add_argument("--lr", type=positive_float,
                        help="the head's learning rate (default: the family optimizer's, from its spec: SGD 0.1 for "
                             "ResNets, AdamW 1e-3 for ViTs and ConvNeXts); the backbone trains at 0.1 x it except from scratch")
    parser.add_argument("--num-classes", type=int,
                        help="the classes the head must have; exit 2 when the data has another number")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head, data order and augmentation")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"reports directory: the run goes to OUT/runs/<time>-<host>-transfer-<device>/ "
                             f"(default: {DEFAULT_REPORTS})")
    parser.set_defaults(func=run)


def _check(args: argparse.Namespace) -> tuple[list[str], int, str]:
    """UsageError for any bad option; returns the impls, the image size and the resolved device."""
    from bench.config.cell import MAX_BATCH_SIZE
    from bench.execute.transfer import STRATEGIES
    from bench.hardware.device import check_capability, check_support, resolve_device
    from bench.models import get_entry, list_entries

    unknown = [s for s in args.strategy if s not in STRATEGIES]
    if unknown:
        raise UsageError(f"unknown strategy {', '.join(map(repr, unknown))}; valid: {', '.join(STRATEGIES)}")
    check_trains(args.precision)
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise UsageError(f"--batch-size must be from 1 to {MAX_BATCH_SIZE}, got {args.batch_size}")
    if "staged" in args.strategy and args.epochs < 3:
        raise UsageError(f"--strategy staged needs --epochs >= 3 (one per stage), got {args.epochs}")
    if not 0 < args.target_acc <= 1:
        raise UsageError(f"--target-acc is a top-1 fraction in (0, 1], got {args.target_acc:g}")
    if args.budget_s is not None and args.budget_s <= 0:
        raise UsageError(f"--budget-s must be > 0 seconds, got {args.budget_s:g}")
    if args.num_classes is not None and args.num_classes < 2:
        raise UsageError(f"--num-classes must be >= 2, got {args.num_classes}")
    impls = args.impls or [e.impl for e in list_entries([args.arch])]
    entries = [get_entry(args.arch, impl) for impl in impls]
    image_size = args.image_size or entries[0].image_size
    entries[0].check_image_size(image_size)
    device = resolve_device(args.device)
    check_support(device, args.precision, "none", ("none",), TRAINING_PRECISIONS)
    check_capability(device, args.precision, TRAINING_PRECISIONS)
    return impls, image_size, device


def _cell_id(key: dict, record: str) -> str:
    return hashlib.sha1(json.dumps({**key, "record": record}, sort_keys=True).encode()).hexdigest()[:12]


def run(args: argparse.Namespace) -> int:
    """Check everything, read the data, then train every strategy x implementation into one run directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm imports huggingface_hub: never wait on the network
    from bench.data.datasets import read_dataset

    impls, image_size, device = _check(args)
    data = read_dataset(args.data)
    if args.num_classes is not None and args.num_classes != len(data.classes):
        raise UsageError(f"--data {args.data} has {len(data.classes)} classes ({', '.join(data.classes[:12])}"
                         f"{' ...' if len(data.classes) > 12 else ''}) but --num-classes says the head has "
                         f"{args.num_classes}")
    reports_dir = args.out or DEFAULT_REPORTS
    run_dir = new_run_dir(reports_dir, f"transfer-{device.replace(':', '')}")
    lock = lock_run_dir(run_dir)
    try:
        write_config(run_dir, {"command": "transfer", **{k: str(v) if isinstance(v, Path) else v
                                                          for k, v in vars(args).items() if k != "func"},
                                "impls": impls, "image_size": image_size, "device": device})
        with signals_interrupt() as stop:
            try:
                return _train_and_report(args, (impls, image_size, device), data, run_dir, reports_dir, stop)
            except KeyboardInterrupt:  # the first signal came between the training and its flag's reset
                print(_interrupted(run_dir), file=sys.stderr)
                return stop.exit_code()
    finally:
        lock.close()


def _interrupted(run_dir: Path) -> str:
    """The one line of a transfer stopped by SIGINT or SIGTERM: where its rows are (a transfer does not resume)."""
    return f"rvbench transfer: interrupted; the finished epochs and runs are kept in {run_dir}"


def _train_and_report(args: argparse.Namespace, setup: tuple[list[str], int, str], data, run_dir: Path,
                      reports_dir: Path, stop: Stop) -> ExitCode:
    """Train every run (`setup`: impls, image size, device), then write the tables, report and `latest`, also when
    a signal (`stop`) stopped the training. Returns the signal's code; else NOTHING_MEASURED when no run
    finished (each one diverged, ran out of memory or failed); else OK."""
    interrupted = bool(stop.received)  # a signal during the set-up: train nothing, write what is there
    try:
        with stop.measuring_now():
            if not interrupted:
                _train_all(args, *setup, data, run_dir)
    except KeyboardInterrupt:
        interrupted = True
    df = finalize(run_dir)
    runs = run_summary(df)
    summary = runs.drop(columns="message").round(1)
    text = format_table(list(summary.columns), summary.itertuples(index=False), left=5) + "\n"
    report = write_run_report(run_dir, text)
    update_latest(reports_dir, run_dir)
    print(text + f"run directory: {run_dir}" + (f"\nreport: {report}" if report else ""))
    if interrupted:
        print(_interrupted(run_dir), file=sys.stderr)
        return stop.exit_code()
    if not (runs["status"] == "ok").any():
        counts = ", ".join(f"{n} {status}" for status, n in runs["status"].value_counts().items())
        print(f"rvbench transfer: error: no run finished ({counts}; each run's message above and in the report); "
              f"rows in {run_dir}", file=sys.stderr)
        return ExitCode.NOTHING_MEASURED
    return ExitCode.OK


def _train_all(args: argparse.Namespace, impls: list[str], image_size: int, device: str, data, run_dir: Path) -> None:
    """Every strategy x implementation in turn, each row appended (fsynced) as its epoch ends."""
    from bench.config.cell import Cell
    from bench.execute.transfer import TransferRun, pretrained_weights, random_weights
    from bench.measure.env import collect_env
    from bench.measure.transfer import measure_transfer

    env = collect_env(device)
    env_recorder(run_dir)(device, env)
    random = random_weights(args.arch, image_size, args.seed)
    pretrained = random
    if any(s != "scratch" for s in args.strategy):
        pretrained, missing = pretrained_weights(args.arch, image_size, args.seed)
        if missing:
            print(f"rvbench transfer: no pretrained weights cached, so every strategy starts from random init "
                  f"(weights 'random'): {missing}")
    on_device = data.to(device)
    writer = ResultWriter(run_dir)
    try:
        for strategy in args.strategy:
            weights = random if strategy == "scratch" else pretrained
            for impl in impls:
                run = TransferRun(args.arch, impl, strategy, args.epochs, args.batch_size, image_size, args.precision,
                                  device, args.seed, len(data.classes), args.lr)
                cell = Cell(args.arch, impl, args.batch_size, image_size, args.precision, mode=TRANSFER_MODE,
                            device=device)
                key = {"arch": args.arch, "impl": impl, "strategy": strategy, "batch_size": args.batch_size,
                       "image_size": image_size, "precision": args.precision, "device": device, "seed": args.seed}
                fields = {"find_max_batch": False, "strategy": strategy, "seed": args.seed, "weights": weights.label,
                          "target_acc": args.target_acc, "data": str(args.data), "data_format": data.format,
                          "train_images": len(data.train_x), "val_images": len(data.val_x),
                          "num_classes": len(data.classes)}
                started = time.time()
                try:
                    for row in measure_transfer(run, weights, on_device, args.target_acc, args.budget_s):
                        measured = dict(row)
                        message = measured.pop("message", "")
                        writer.write(make_row(run_dir.name, _cell_id(key, f"{row['record']}{row['epoch']}"), cell,
                                              "ok", message, env=env, started=started if row["record"] == "run"
                                              else None, **fields, **measured), None)
                        _print_row(impl, strategy, row)
                except (RuntimeError, ValueError) as exc:  # torch.OutOfMemoryError is a RuntimeError
                    status, message = _failure(exc)
                    writer.write(make_row(run_dir.name, _cell_id(key, "run"), cell, status, message, env=env,
                                          **fields, record="run"), None)
                    print(f"{impl} {strategy}: {status}: {message}")
    finally:
        writer.close()


def _failure(exc: Exception) -> tuple[str, str]:
    """The status and message of a run that raised `exc`: "error" and Diverged's own message (it starts
    "diverged:"); else "oom" or "error" and the exception's type and first line."""
    from bench.measure.transfer import Diverged
    from bench.runner.worker import is_oom

    if isinstance(exc, Diverged):
        return "error", str(exc)
    return ("oom" if is_oom(exc) else "error"), f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _print_row(impl: str, strategy: str, row: dict) -> None:
    if row["record"] == "run":
        print(f"{impl} {strategy}: top-1 {row['val_top1']:.1%} after {row['time_s']:.1f} s; {row['message']}")
    else:
        print(f"{impl} {strategy} epoch {row['epoch']} ({row['trained_groups']}): loss {row['train_loss']:.3f}, "
              f"top-1 {row['val_top1']:.1%}, {row['time_s']:.1f} s, {row['images_per_s']:.0f} img/s", flush=True)
