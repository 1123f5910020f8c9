"""Synthetic run directories that follow the run-directory contract, for report and compare tests.

A real sweep on the shared CPUs is slow and produces no GPU columns (memory, MFU, energy); these
runs look like a small GPU sweep so that every plot and table of the report has data, and they are
deterministic so that compare tests can plant a known slowdown.
"""

from __future__ import annotations

import itertools
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from bench.config.cell import Cell, split_compile
from bench.intervals import median_ci, relative_ci

ENV = {
    "env_torch": "2.11.0+cu128",
    "env_torchvision": "0.26.0",
    "env_timm": "1.0.20",
    "env_fvcore": "0.1.5.post20221221",
    "env_cuda": "12.8",
    "env_cudnn": "91000",
    "env_gpu_name": "NVIDIA H100 80GB HBM3",
    "env_driver": "570.124.06",
    "env_sm_count": 132,
    "env_gpu_mem_gb": 79.2,
    "env_cpu": "AMD EPYC 9454",
    "env_threads": 16,
    "env_os": "Linux-6.8",
    "env_python": "3.12.3",
    "env_host": "gpu-box",
    "env_git_commit": "0123456789abcdef0123456789abcdef01234567",
    "env_git_dirty": False,
    "env_timestamp": "2025-01-01T00:00:00Z",
}

# Per-image forward GFLOPs and parameter counts at 224 px, and a relative speed per impl.
MODELS = {"resnet50": (8.18, 25_557_032), "vit_base_patch16_224": (35.1, 86_567_656)}
IMPL_SPEED = {"rv": 1.0, "torchvision": 0.97, "timm": 1.02}
PRECISION_SPEED = {"fp32": 1.0, "amp-bf16": 2.6}
COMPILE_SPEED = {"none": 1.0, "default": 1.3, "default-freeze": 1.6}
PEAK_TFLOPS = {"fp32": 67.0, "amp-bf16": 989.0}
WALL_S = 3.5
CELL_GAP_S = 5.0


def _cells(archs, impls, batches, precisions, rounds, compile_modes) -> list[Cell]:
    base = [
        Cell(a, i, b, 224, precision=p, device="cuda:0", round=r)
        for r, a, i, b, p in itertools.product(range(rounds), archs, impls, batches, precisions)
    ]
    extra = [
        Cell(a, i, batches[-1], 224, precision=precisions[-1], compile=c, device="cuda:0", round=r)
        for r, a, i, c in itertools.product(range(rounds), archs, impls, compile_modes)
    ]
    modes = [
        Cell(archs[0], i, batches[-1], 224, mode=m, device="cuda:0", round=r)
        for r, i, m in itertools.product(range(rounds), impls, ("train", "finetune"))
    ]
    return base + extra + modes


def _ok_row(cell: Cell, samples: list[float]) -> dict:
    gflops, params = MODELS[cell.arch]
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    p50 = pct(0.5)
    ci = median_ci(np.asarray(samples))
    low, high = (None, None) if ci is None else ci
    step_flops = gflops * cell.batch_size * {"inference": 1.0, "train": 3.0, "finetune": 1.2}[cell.mode]
    achieved = step_flops / p50  # GFLOP per ms == TFLOP/s
    trainable = {"inference": 0, "train": params, "finetune": 2_049_000}[cell.mode]
    return {
        "status": "ok",
        "message": "",
        "params_total": params,
        "params_trainable": trainable,
        "gflops_per_image": gflops,
        "gflops_per_step": step_flops,
        "n_iters": len(samples),
        "timed_s": sum(samples) / 1000,
        "warmup_iters": 3,
        "step_ms_p50": p50,
        "step_ms_p90": pct(0.9),
        "step_ms_p95": pct(0.95),
        "step_ms_p99": pct(0.99),
        "step_ms_mean": sum(samples) / len(samples),
        "step_ms_std": 0.02 * p50,
        "step_ms_min": ordered[0],
        "step_ms_max": ordered[-1],
        "step_ms_iqr": pct(0.75) - pct(0.25),
        "noisy": False,
        "step_ms_p50_ci_low": low,
        "step_ms_p50_ci_high": high,
        "rel_ci": relative_ci(p50, ci),
        "converged": True,
        "throughput": cell.batch_size * 1000 / p50,
        "throughput_ci_low": None if high is None else cell.batch_size * 1000 / high,
        "throughput_ci_high": None if low is None else cell.batch_size * 1000 / low,
        "throughput_wall": cell.batch_size * 1000 / (sum(samples) / len(samples)),
        "compile_s": 41.5 if cell.compile != "none" else None,
        "recompiles": 1 if cell.compile != "none" else 0,
        "recompiles_timed": 0,
        "inductor_freezing": split_compile(cell.compile)[1],
        "mem_peak_alloc_mb": (180.0 + 21.0 * cell.batch_size * (3 if cell.mode == "train" else 1))
        / IMPL_SPEED[cell.impl] ** 2,
        "mem_peak_reserved_mb": 256.0 + 24.0 * cell.batch_size,
        "mem_weights_mb": params * 4 / 2**20,
        "mem_activation_mb": 21.0 * cell.batch_size,
        "mem_rss_delta_mb": None,
        "mem_note": "",
        # 5% under the measured peak, as an uncounted workspace would leave a real prediction.
        "mem_predicted_mb": 0.95 * (180.0 + 21.0 * cell.batch_size * (3 if cell.mode == "train" else 1))
        / IMPL_SPEED[cell.impl] ** 2,
        "power_w_mean": 420.0,
        "power_w_max": 560.0,
        "sm_clock_mhz": 1755,
        "mem_clock_mhz": 2619,
        "temp_c_max": 61,
        "gpu_util_pct": 97,
        "throttle_reasons": "",
        "energy_j_per_image": 420.0 * p50 / 1000 / cell.batch_size,
        "energy_source": "counter",
        "power_note": "",
        "achieved_tflops": achieved,
        "mfu": achieved / PEAK_TFLOPS.get(cell.precision, 67.0),
        "tf32_matmul": False,
        "tf32_cudnn": True,
        "cudnn_benchmark": True,
    }


def _failed_row(status: str, message: str) -> dict:
    """A non-ok row: every measurement column present and null, as the runner writes it."""
    columns = _ok_row(Cell("resnet50", "rv", 1, 224), [1.0])
    return {**dict.fromkeys(columns), "status": status, "message": message}


def _profile_details(arch: str, impl: str, batch: int, vit: bool) -> dict:
    """The top_ops, modules and per-phase memory of a profile summary (see bench.profiling.profile), with a
    hostile operator name so the report's escaping of profile tables is exercised."""
    ops = [("aten::addmm" if vit else "aten::convolution", "matmul" if vit else "convolution", 4.2, 52.5, 24.0)]
    ops += [(f"<b>kernel_{i}</b>", "elementwise", 0.1, 1.25, 2.0) for i in range(24)]
    groups = ["patch_embed", "blocks.0-5", "blocks.6-11", "head"] if vit else ["stem", "layer1", "layer2", "head"]
    modules = [
        {"group": g, "ms": 0.5 + i, "flops_per_image": 1e9 * (i + 1), "gflops": batch * (i + 1.0),
         "achieved_tflops": batch * (i + 1.0) / (0.5 + i)}
        for i, g in enumerate(groups)
    ]
    memory = {"forward_mb": 812.0, "backward_mb": 1630.5, "optimizer_mb": 420.0, "note": "CUDA caching allocator"}
    return {
        "top_ops": [
            {"name": n, "category": c, "ms": ms, "pct": pct, "calls_per_step": calls} for n, c, ms, pct, calls in ops
        ][:20],
        "modules": modules,
        "modules_note": f"{arch} {impl}: forward time only",
        "memory": memory,
    }


def _write_profiles(run_dir: Path, archs, impls, batch: int, precision: str) -> None:
    """profiles/<arch>-<impl>/profile.json with the fields the report reads (see bench.profiling.profile)."""
    for arch, impl in itertools.product(archs, impls):
        cell = Cell(arch, impl, batch, 224, precision=precision, device="cuda:0")
        vit = arch.startswith("vit")
        shares = {
            "convolution": 2.0 if vit else 61.0,
            "matmul": 58.0 if vit else 1.0,
            "attention": 18.0 if vit else 0.0,
            "normalization": 7.0 if vit else 14.0,
            "elementwise": 9.0 if vit else 16.0,
            "memory": 5.0 if impl == "torchvision" else 4.0,
        }
        shares["other"] = 100.0 - sum(shares.values())
        intensity = (180.0 if vit else 95.0) * IMPL_SPEED[impl]
        roofline = {
            "intensity": intensity,
            "achieved_tflops": 410.0 * IMPL_SPEED[impl] if vit else 260.0 * IMPL_SPEED[impl],
            "peak_tflops": PEAK_TFLOPS[precision],
            "mem_bw_gbs": 3350.0,
            "device": "H100 SXM",
        }
        summary = {
            **cell.config(),
            "cell_id": cell.cell_id,
            "categories": shares,
            "roofline": roofline,
            **_profile_details(arch, impl, batch, vit),
        }
        out = run_dir / "profiles" / f"{arch}-{impl}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(summary, indent=1))


def write_run(
    run_dir: Path,
    *,
    archs: tuple[str, ...] = tuple(MODELS),
    impls: tuple[str, ...] = ("rv", "torchvision", "timm"),
    batches: tuple[int, ...] = (8, 64),
    precisions: tuple[str, ...] = ("fp32", "amp-bf16"),
    rounds: int = 2,
    seed: int = 0,
    n_samples: int = 40,
    slow: dict[tuple, float] | None = None,
    failures: dict[tuple, tuple[str, str]] | None = None,
    run_id: str = "20250101T000000Z-gpu-box-h100",
    profiles: bool = False,
    compile_modes: tuple[str, ...] = ("default",),
) -> Path:
    """Write results.jsonl, samples.jsonl, results.csv, config.json and env.json into `run_dir`.

    `slow` maps (arch, impl, batch_size, precision) to a factor applied to that config's step times in
    every round; `failures` maps the same key to (status, message), replacing its measurement.
    By default one oom and one error cell are planted (the error message carries markup).
    `profiles` adds a profile summary per (arch, impl), as `rvbench run --profile` does.
    `n_samples` is the number of timed steps of each ok cell. `compile_modes` are the compiled
    variants added at the largest batch and last precision.
    """
    import pandas as pd

    slow = slow or {}
    if failures is None:
        failures = {
            ("vit_base_patch16_224", "timm", batches[-1], precisions[0]): ("oom", "CUDA out of memory."),
            (archs[0], "rv", batches[0], precisions[-1]): (
                "error",
                "RuntimeError: bad <script>alert('x')</script> & more",
            ),
        }
    rng = random.Random(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows, samples_lines = [], []
    for cell in _cells(archs, impls, batches, precisions, rounds, compile_modes):
        key = (cell.arch, cell.impl, cell.batch_size, cell.precision)
        gflops, _ = MODELS[cell.arch]
        speed = IMPL_SPEED[cell.impl] * PRECISION_SPEED[cell.precision] * COMPILE_SPEED[cell.compile]
        work = {"inference": 1.0, "train": 3.2, "finetune": 1.4}[cell.mode]
        base_ms = (0.4 + gflops * cell.batch_size * work / 40.0 / speed) * slow.get(key, 1.0)
        row = {"schema_version": 1, "run_id": run_id, "cell_id": cell.cell_id, **cell.config(), "find_max_batch": False}
        # Cells start CELL_GAP_S apart and each takes WALL_S: the run's elapsed span differs from the sum.
        start = datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=CELL_GAP_S * len(rows))
        row.update(started_at=start.isoformat().replace("+00:00", "Z"), wall_s=WALL_S)
        row.update(ENV)
        if key in failures and cell.mode == "inference" and cell.compile == "none":
            row.update(_failed_row(*failures[key]))
        else:
            samples = [base_ms * rng.lognormvariate(0.0, 0.01) for _ in range(n_samples)]
            row.update(_ok_row(cell, samples))
            samples_lines.append(json.dumps({"cell_id": cell.cell_id, "samples_ms": samples}))
        rows.append(row)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "samples.jsonl").write_text("".join(line + "\n" for line in samples_lines))
    pd.DataFrame(rows).to_csv(run_dir / "results.csv", index=False)
    block = {"models": list(archs), "impls": list(impls), "batch_sizes": list(batches), "precisions": list(precisions)}
    config = {
        "preset": "synthetic",
        "device": "cuda:0",
        "rounds": rounds,
        "timing": {"warmup_iters": 3, "min_iters": 10},
        "sweeps": [block],
        "find_max_batch": False,
        "skipped_pairs": [],
        "cells": len(rows),
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=1))
    (run_dir / "env.json").write_text(json.dumps(ENV, indent=1))
    if profiles:
        _write_profiles(run_dir, archs, impls, batches[-1], precisions[-1])
    return run_dir


def fail_every_cell(run_dir: Path) -> list[str]:
    """Rewrite a synthetic run so that no cell measured: every row oom or error, no samples.

    Returns the failure messages written (each unique, with markup), so tests can look for them.
    """
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    messages = []
    for i, row in enumerate(rows):
        status = "oom" if i % 2 else "error"
        message = f"failure #{i}: <i>{status}</i> & co"
        row.update(_failed_row(status, message))
        messages.append(message)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "samples.jsonl").write_text("")
    (run_dir / "results.csv").unlink()
    return messages


# The columns a run made before the adaptive stopping rule lacks: every row's interval and verdict.
INTERVAL_ROW_COLUMNS = ("step_ms_p50_ci_low", "step_ms_p50_ci_high", "rel_ci", "converged", "throughput_ci_low",
                        "throughput_ci_high")


def make_old(run_dir: Path) -> Path:
    """Rewrite a synthetic run as a finished one made before rows carried intervals: INTERVAL_ROW_COLUMNS
    gone from results.jsonl, and results.csv and results.parquet (what `load` reads) written as that
    version's store wrote them, every other column there and these not at all."""
    from bench.results.store import _tidy

    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in row.items() if k not in INTERVAL_ROW_COLUMNS} for row in rows]
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = _tidy(rows).drop(columns=list(INTERVAL_ROW_COLUMNS))
    table.to_csv(run_dir / "results.csv", index=False)
    table.to_parquet(run_dir / "results.parquet")
    return run_dir
# What a busy machine leaves in a contended row, and a quiet one in the others (bench.measure.contention).
CONTENDED = {"others_cpu": 0.45, "load_avg": 5.2, "gpu_other_procs": 0, "contended": True}
QUIET = {"others_cpu": 0.01, "load_avg": 0.3, "gpu_other_procs": 0, "contended": False}


def mark_contended(run_dir: Path, share: float) -> int:
    """Give a synthetic run (made before contention was measured) the contention columns: the first `share`
    of its ok rows CONTENDED, the others QUIET. Returns how many rows were marked contended."""
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    ok = [row for row in rows if row["status"] == "ok"]
    marked = round(share * len(ok))
    for i, row in enumerate(ok):
        row.update(CONTENDED if i < marked else QUIET)
    (run_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "results.csv").unlink(missing_ok=True)
    return marked


_REAL_RUNS: dict[Path, Path] = {}


def real_smoke_run(base: Path) -> Path:
    """A real `rvbench run --preset smoke --profile` run directory under `base`, made once per process.

    This is the runner's own output (results, samples, env, profiles), so report tests see exactly
    what users get; it takes a minute or more on a busy CPU, hence the cache.
    """
    import subprocess
    import sys

    if base not in _REAL_RUNS:
        reports = base / "reports"
        cmd = [sys.executable, "-m", "bench", "run", "--preset", "smoke", "--device", "cpu", "--profile", "--out", str(reports)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, f"smoke run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        (run_dir,) = (reports / "runs").iterdir()
        _REAL_RUNS[base] = run_dir
    return _REAL_RUNS[base]
