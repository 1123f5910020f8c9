"""`rvbench memory`: predict the peak CUDA memory of cells, and the largest batch that fits, on any
machine (bench.counting.memory: fake tensors, no GPU, no real kernels)."""

from __future__ import annotations

import argparse
import json
import re
from decimal import Decimal

from bench.commands.args import name_list
from bench.config.cell import COMPILE_MODES, DEFAULT_OPTIMIZER, MAX_BATCH_SIZE, MODES, OPTIMIZERS
from bench.counting.memory import (
    CARDS,
    CATEGORIES,
    CUDA_CONTEXT_BYTES,
    MB,
    NOT_MODELLED,
    card_batches,
    max_batch,
    predict_step_memory,
)
from bench.counting.workspace import CUBLAS_WORKSPACE_HOPPER, CUBLAS_WORKSPACE_OLDER
from bench.errors import ExitCode, UsageError
from bench.models import list_entries
from bench.precisions import DEFAULT_PRECISION, PRECISIONS, precision_help
from bench.report.text import format_table

# The most memory --gpu-mem may say: what a 64-bit address space holds (16 EiB).
MAX_GPU_MEM = 2**64
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def memory_size(text: str) -> int:
    """Bytes of a size such as "80GiB", "24GB" or "40960MiB" (GB = 10**9, GiB = 2**30), exactly (no
    float to overflow), at most MAX_GPU_MEM."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)\s*", text, re.IGNORECASE)
    if match is None:
        raise UsageError(f"--gpu-mem {text!r}: give a number and a unit, e.g. 80GiB, 24GB, 40960MiB")
    size = int(Decimal(match[1]) * _UNITS[match[2].upper()])
    if size > MAX_GPU_MEM:
        raise UsageError(f"--gpu-mem {text}: over the {MAX_GPU_MEM // 2**60} EiB a 64-bit address space holds")
    return size


def _choices(what: str, values: list[str], valid: tuple[str, ...]) -> list[str]:
    unknown = [v for v in values if v not in valid]
    if unknown:
        raise UsageError(f"unknown {what} {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    return values


def register(parser: argparse.ArgumentParser) -> None:
    """Add the command's options."""
    parser.add_argument("archs", type=name_list, metavar="ARCH",
                        help="comma-separated archs, e.g. vit_large_patch16_224")
    parser.add_argument("--impls", type=name_list, metavar="IMPLS",
                        help="comma-separated impls (default: all with ARCH)")
    parser.add_argument("--batch-sizes", type=name_list, default=["64"], metavar="N,...",
                        help="batch sizes (default 64)")
    parser.add_argument("--image-size", type=int, metavar="N", help="input side in px (default: each model's own)")
    parser.add_argument("--precision", type=name_list, default=[DEFAULT_PRECISION], metavar="P,...",
                        help=f"precisions: {precision_help()}")
    parser.add_argument("--mode", type=name_list, default=["train"], metavar="M,...",
                        help=f"modes (default train): {', '.join(MODES)}")
    parser.add_argument("--optimizer", default=DEFAULT_OPTIMIZER, metavar="NAME",
                        help=f"train/finetune optimizer (default: the family's usual one): {', '.join(OPTIMIZERS)}")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights and input")
    parser.add_argument("--compile", default="none", metavar="MODE",
                        help="compile mode of the cell: predicted as its eager program (compile is not modelled)")
    parser.add_argument("--gpu-mem", type=str, metavar="SIZE", help="also give the largest batch that fits, e.g. 80GiB")
    parser.add_argument("--cards", action="store_true",
                        help="print the largest batch on common cards (A100 40/80GB, H100, H200, L4, RTX 4090) instead")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run)


def _batch_sizes(values: list[str]) -> list[int]:
    if not all(v.isdigit() and 1 <= int(v) <= MAX_BATCH_SIZE for v in values):
        raise UsageError(f"--batch-sizes {','.join(values)}: give whole numbers from 1 to {MAX_BATCH_SIZE}")
    return [int(v) for v in values]


def run(args: argparse.Namespace) -> int:
    """Predict each (arch, impl, mode, precision, batch) and print a table (or JSON), then what the
    prediction leaves out."""
    batches = _batch_sizes(args.batch_sizes)
    precisions = _choices("precision", args.precision, PRECISIONS)
    modes = _choices("mode", args.mode, MODES)
    _choices("optimizer", [args.optimizer], OPTIMIZERS)
    _choices("compile mode", [args.compile], COMPILE_MODES)
    if args.optimizer != DEFAULT_OPTIMIZER and modes == ["inference"]:
        raise UsageError(f"optimizer {args.optimizer!r} is for train and finetune; inference runs none")
    gpu_mem = None if args.gpu_mem is None else memory_size(args.gpu_mem)
    if gpu_mem is not None and gpu_mem <= CUDA_CONTEXT_BYTES:
        raise UsageError(f"--gpu-mem {args.gpu_mem} is no more than the {CUDA_CONTEXT_BYTES // MB} MiB "
                         "kept for the CUDA context")
    entries = list_entries(archs=args.archs, impls=args.impls)
    if not entries:
        raise UsageError(f"no implementation of {', '.join(args.archs)} among impls {', '.join(args.impls)}")
    if args.image_size is not None:
        for entry in entries:
            entry.check_image_size(args.image_size)
    if args.cards:
        return _print_cards(args, entries, modes, precisions)
    rows = []
    for entry in entries:
        size = args.image_size or entry.image_size
        for mode in modes:
            optimizer = DEFAULT_OPTIMIZER if mode == "inference" else args.optimizer
            for precision in precisions:
                for batch in batches:
                    p = predict_step_memory(entry.arch, entry.impl, size, batch, precision, mode, optimizer,
                                            args.channels_last)
                    rows.append({"arch": entry.arch, "impl": entry.impl, "image_size": size, "mode": mode,
                                 "optimizer": optimizer, "precision": precision, "batch_size": batch,
                                 "peak_mb": p.peak / MB, "slack_mb": p.slack / MB, "peak_phase": p.peak_phase,
                                 **{f"{k}_at_peak_mb": v / MB for k, v in p.at_peak.items()},
                                 "weights_mb": p.weights / MB, "gradients_mb": p.gradients / MB,
                                 "optimizer_state_mb": p.optimizer_state / MB, "activations_mb": p.activations / MB})
                if gpu_mem is not None:
                    best = max_batch(entry.arch, entry.impl, size, precision, mode, gpu_mem, optimizer,
                                     args.channels_last)
                    for row in rows[-len(batches):]:
                        row["max_batch"] = best
    if args.json:
        print(json.dumps(rows, indent=1))
        return ExitCode.OK
    _print_rows(rows, gpu_mem)
    if args.compile != "none":
        print(f"--compile {args.compile}: predicted as the eager program; Inductor's fusion and recompute "
              "and CUDA graphs' private pools are not modelled.")
    return ExitCode.OK


def _print_rows(rows: list[dict], gpu_mem: int | None) -> None:
    columns = ["arch", "impl", "px", "mode", "precision", "bs", "peak MB", "+ up to MB", "at"] + [
        f"{c.replace('_', ' ')} MB" for c in CATEGORIES]
    keys = ["arch", "impl", "image_size", "mode", "precision", "batch_size", "peak_mb", "slack_mb", "peak_phase"] + [
        f"{c}_at_peak_mb" for c in CATEGORIES]
    if gpu_mem is not None:
        columns.append(f"max bs in {gpu_mem / 2**30:.4g} GiB")
        keys.append("max_batch")
    print(format_table(columns, [[_rounded(r[k]) for k in keys] for r in rows], left=6))
    print("\nPredicted torch.cuda.max_memory_allocated of one steady-state eager step on CUDA, broken down at "
          f"the peak (MB = 2**20 bytes). \"+ up to\": the caching allocator may charge up to 1 MiB more for each "
          f"live block over 1 MiB (blocks it does not split). workspace: torch's cuBLAS workspace per thread that "
          f"runs matmuls (training: 2), {CUBLAS_WORKSPACE_HOPPER / MB:g} MiB each on Hopper, as assumed here "
          f"({CUBLAS_WORKSPACE_OLDER / MB:g} MiB before; CUBLAS_WORKSPACE_CONFIG when set). {NOT_MODELLED[0].upper()}{NOT_MODELLED[1:]}.")
    if gpu_mem is not None:
        print(f"max bs: largest batch whose predicted peak fits the memory less {CUDA_CONTEXT_BYTES // MB} MiB "
              "for the CUDA context and cuDNN; fragmentation can still make it fail.")


def _rounded(value: object) -> object:
    return round(value, 1) if isinstance(value, float) else value


def _print_cards(args: argparse.Namespace, entries: list, modes: list[str], precisions: list[str]) -> int:
    """The largest batch per arch x mode x precision on each card of CARDS, for the first impl given."""
    impl = entries[0].impl
    rows = []
    for entry in (e for e in entries if e.impl == impl):
        size = args.image_size or entry.image_size
        for mode in modes:
            for precision in precisions:
                rows.append({"arch": entry.arch, "impl": impl, "image_size": size, "mode": mode,
                             "precision": precision, **card_batches(entry.arch, impl, size, precision, mode)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return ExitCode.OK
    columns = ["arch", "impl", "px", "mode", "precision", *(card for card, _ in CARDS)]
    keys = ["arch", "impl", "image_size", "mode", "precision", *(card for card, _ in CARDS)]
    print(format_table(columns, [[r[k] for k in keys] for r in rows], left=5))
    print(f"\nLargest batch predicted to fit each card (its memory as nvidia-smi reports it, less "
          f"{CUDA_CONTEXT_BYTES // MB} MiB for the CUDA context), family optimizers. {NOT_MODELLED[0].upper()}"
          f"{NOT_MODELLED[1:]}.")
    return ExitCode.OK
