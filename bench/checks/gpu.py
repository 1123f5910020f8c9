"""`rvbench gpu-check`: does the CUDA path measure what it claims, on this GPU?

Fourteen checks, each the shortest experiment that would expose one way a GPU benchmark goes wrong;
each gives PASS, FAIL or INFO (a figure to read, with no pass rule) and its headline figure. They run
in this order, the fast ones first and compilation last, each within a budget (`CHECKS`) that
`rvbench gpu-validate`'s guard enforces (bench.checks.guard); together about 4 minutes on one H100/H200.

 1 device       the device, its row in the peak table (bench.hardware.gpus) and its NVML handle
                (matched by UUID, so power readings come from the right board);
 2 timing       our event timing against torch.utils.benchmark's blocked_autorange and timm's loop
                (a synchronise every step, bench.measure.timing.timm_loop_ms), resnet50 channels_last
                amp-bf16 inference at batch 1, 64 and 256; PASS when all three agree within 3% at
                batch 64. Batch 1 and 256 give the cost of per-step synchronisation against our
                in-flight window;
 3 profile      the profiler's step time against the measured p50 (within 10%), and the per-module
                forward time against the operator-category total (no kernel counted twice), resnet50
                amp-bf16 inference at batch 256, where the GPU outlasts the host's profiling cost;
 4 memory       resnet50 train at batch 64 and vit_large train at batch 1: activation memory >= 0
                and peak reserved not inflated by warm-up workspaces;
 5 fp32-modes   fp32 against tf32 against torch-default (cuDNN TF32 on) for resnet50 at batch 256;
 6 oom-recovery after an out-of-memory cell, the next cell in the same worker process is ok;
 7 low-precision-train  fp16, bf16 and amp-fp16 (with the GradScaler's scale step by step);
 8 power        NVML's instant against its averaged power reading, and how often the energy counter updates;
 9 batch-4096   resnet50 fp16 inference at batch 4096 (tensors past 2**31 elements);
10 memory-prediction  predicted (bench.counting.memory) against measured peak allocated memory of
                eager resnet50 and vit_base cells at batch 64 (PASS within 10% or 64 MiB);
11 max-batch    the predicted largest resnet50 training batch against `--find-max-batch`'s search
                (one-step probes, starting at the prediction);
12 ddp          a 1-rank NCCL job of `rvbench scale` (torchrun, DistributedDataParallel), resnet50 train
                batch 64: an ok row whose all-reduced bytes equal the gradient bytes;
13 compile      resnet18 at 64 px and batch 8, each in fresh Inductor caches: default inference (cold,
                then warm), default train, reduce-overhead inference: no exception, no recompilation in
                the timed loop, compile_s;
14 compile-autotune  max-autotune-no-cudagraphs inference alone, the slowest compile.

Every check runs in this process except 6 and 11, which drive a real worker, and 12, which
launches torchrun (bench.checks.processes). A check that raises is a FAIL with its error; the others still run. The thresholds are the
`judge_*` functions of bench.checks.rules, pure so that their rules are tested without a GPU. Cells
are measured without power sampling (`CHECK_TIMING`), so none pays the power floor.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.config.cell import Cell
from bench.execute.prepare import prepared_cell
from bench.hardware.gpus import match_device
from bench.measure.cell import measure_cell
from bench.measure.timing import summarize, time_callable, timm_loop_ms
from bench.checks.context import CHECK_TIMING, Context
from bench.checks.processes import check_ddp, check_max_batch, check_oom_recovery
from bench.checks.rules import (
    CheckResult,
    MEMORY_PREDICTION_MB, MEMORY_PREDICTION_PCT, judge_memory, judge_memory_prediction, judge_profile,
    judge_timing,
)  # fmt: skip

GRAD_SCALE_STEPS = 30


# ---- checks ---------------------------------------------------------------------------------------


def check_device(ctx: Context) -> tuple[bool | None, str, dict]:
    from bench.measure.power import describe_nvml_mapping

    index = torch.device(ctx.device).index
    props = torch.cuda.get_device_properties(index)
    spec = match_device(props.name)
    mapping = describe_nvml_mapping(index)
    data = {
        "name": props.name, "capability": f"sm{props.major}{props.minor}",
        "memory_gib": props.total_memory / 2**30, "sm_count": props.multi_processor_count,
        "torch_uuid": str(getattr(props, "uuid", "")), "peak_table": None if spec is None else dataclasses.asdict(spec),
        "nvml": mapping,
    }
    passed = spec is not None and mapping.get("matched_by") == "uuid"
    figure = (f"{props.name} ({data['capability']}, {data['memory_gib']:.0f} GiB); peak table: "
              f"{spec.name if spec else 'NOT FOUND'}; NVML: {mapping.get('matched_by') or mapping.get('note')}")
    return passed, figure, data


def check_timing(ctx: Context) -> tuple[bool | None, str, dict]:
    from torch.utils import benchmark

    data = {}
    for batch in (1, 64, 256):
        cell = ctx.cell("resnet50", batch, precision="amp-bf16", channels_last=True)
        with prepared_cell(cell) as built:
            ours = time_callable(built.step, built.device, CHECK_TIMING)
            ours_ms = summarize(ours.samples_ms, batch, ours.timed_s)["step_ms_p50"]
            auto = benchmark.Timer(stmt="step()", globals={"step": built.step}).blocked_autorange(min_run_time=1.0)
            synced_ms = statistics.fmean(timm_loop_ms(built.step, built.device, max(20, len(ours.samples_ms) // 4)))
        data[batch] = {"ours_p50_ms": ours_ms, "autorange_median_ms": auto.median * 1e3, "synced_mean_ms": synced_ms,
                       "sync_cost_pct": 100.0 * (synced_ms / ours_ms - 1.0)}
    at64 = data[64]
    passed = judge_timing(at64["ours_p50_ms"], at64["autorange_median_ms"], at64["synced_mean_ms"])
    figure = (f"bs64: ours {at64['ours_p50_ms']:.3f} ms, autorange {at64['autorange_median_ms']:.3f} ms, "
              f"synced {at64['synced_mean_ms']:.3f} ms; per-step sync costs "
              f"{data[1]['sync_cost_pct']:+.1f}% at bs1, {data[256]['sync_cost_pct']:+.1f}% at bs256")
    return passed, figure, {str(k): v for k, v in data.items()}


def check_profile(ctx: Context) -> tuple[bool | None, str, dict]:
    """`rvbench profile` as a user runs it (bench.profiling.profile, input shapes recorded) at batch 256.

    Recording the shapes of some 700 ops per step costs the host about as long as the GPU takes for
    the step at batch 64, so there the profiled step measured the profiler's host overhead and the
    10% rule failed on a sound profiler. At batch 256 the GPU's work is four times longer and the
    host's cost hides under it, as it does in a GPU-bound benchmark; profiling without the shapes
    instead would check a profile that `rvbench profile` never writes."""
    from bench.profiling.profile import profile_cell

    cell = ctx.cell("resnet50", 256, precision="amp-bf16", channels_last=True)
    measured = measure_cell(cell, CHECK_TIMING)
    summary = profile_cell(cell, ctx.out_dir / "profile-resnet50")
    modules_ms, busy_ms = summary["modules_ms_total"], summary["busy_ms"]
    passed = judge_profile(summary["step_ms"], measured["step_ms_p50"], modules_ms, busy_ms)
    data = {"profile_step_ms": summary["step_ms"], "measured_p50_ms": measured["step_ms_p50"],
            "modules_ms_total": modules_ms, "busy_ms": busy_ms, "categories": summary["categories"],
            "categories_note": summary["categories_note"]}
    figure = (f"profiled step {summary['step_ms']:.3f} ms vs measured p50 {measured['step_ms_p50']:.3f} ms; "
              f"modules {_ms(modules_ms)} of {_ms(busy_ms)} operator time")
    return passed, figure, data


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def check_memory(ctx: Context) -> tuple[bool | None, str, dict]:
    cells = {
        "resnet50 train bs64": ctx.cell("resnet50", 64, precision="amp-bf16", channels_last=True, mode="train"),
        "vit_large train bs1": ctx.cell("vit_large_patch16_224", 1, precision="amp-bf16", mode="train"),
    }
    data, figures, passed = {}, [], True
    for name, cell in cells.items():
        row = measure_cell(cell, CHECK_TIMING)
        ok, why = judge_memory(row)
        passed &= ok
        figures.append(f"{name}: {why}")
        data[name] = {k: v for k, v in row.items() if k.startswith("mem_")}
    return passed, "; ".join(figures), data


# Compile checks: resnet18 at 64 px and batch 8, so the checks time compilation, not the model.
COMPILE_ARCH, COMPILE_SIZE, COMPILE_BATCH = "resnet18", 64, 8


def _compiled(ctx: Context, compile_mode: str, mode: str, warm: bool = False) -> tuple[bool, str, dict]:
    """One compiled cell in fresh Inductor caches, as a sweep's worker compiles it (cold `compile_s`);
    with `warm`, once more in the same caches, for the figure a reused cache would give. Passes when
    no recompilation happened inside a timed loop."""
    from bench.execute.step import cold_compile_caches

    cell = ctx.cell(COMPILE_ARCH, COMPILE_BATCH, image_size=COMPILE_SIZE, precision="amp-bf16",
                    channels_last=True, compile=compile_mode, mode=mode)
    with cold_compile_caches(compile_mode):
        rows = [measure_cell(cell, CHECK_TIMING) for _ in range(2 if warm else 1)]
    data = {k: rows[0].get(k) for k in ("compile_s", "recompiles", "recompiles_timed", "cudagraph_record_s",
                                        "step_ms_p50")}
    figure = f"{compile_mode} {mode} {rows[0]['compile_s']:.0f} s"
    if warm:
        data["compile_s_warm"] = rows[1]["compile_s"]
        figure += f" (warm {rows[1]['compile_s']:.0f} s)"
    return all(row["recompiles_timed"] == 0 for row in rows), figure, data


def check_compile(ctx: Context) -> tuple[bool | None, str, dict]:
    """Default mode, inference (cold, then warm) and train; reduce-overhead (CUDA graphs) inference."""
    data, figures, passed = {}, [], True
    for compile_mode, mode, warm in (("default", "inference", True), ("default", "train", False),
                                     ("reduce-overhead", "inference", False)):
        ok, figure, data[f"{compile_mode} {mode}"] = _compiled(ctx, compile_mode, mode, warm)
        passed &= ok
        figures.append(figure)
    return passed, "compile_s cold: " + ", ".join(figures), data


def check_compile_autotune(ctx: Context) -> tuple[bool | None, str, dict]:
    """max-autotune-no-cudagraphs inference alone: autotuning is the slowest compile, so it comes last
    and is the check a short reservation's guard stops first."""
    passed, figure, data = _compiled(ctx, "max-autotune-no-cudagraphs", "inference")
    return passed, "compile_s cold: " + figure, {"max-autotune-no-cudagraphs inference": data}


def check_low_precision_train(ctx: Context) -> tuple[bool | None, str, dict]:
    data, figures = {}, []
    for precision in ("fp16", "bf16", "amp-fp16"):
        row = measure_cell(ctx.cell("resnet50", 64, precision=precision, channels_last=True, mode="train"), CHECK_TIMING)
        data[precision] = {k: row.get(k) for k in ("step_ms_p50", "throughput", "amp_skipped_steps")}
        figures.append(f"{precision} {row['throughput']:.0f} img/s")
    cell = ctx.cell("resnet50", 64, precision="amp-fp16", channels_last=True, mode="train")
    with prepared_cell(cell) as built:
        trace = []
        for _ in range(GRAD_SCALE_STEPS):
            built.step()
            trace.append(built.step.grad_scale())
        skipped = built.step.skipped_steps()
    data["grad_scale_trace"], data["skipped_of_first_steps"] = trace, skipped
    figures.append(f"GradScaler scale {trace[0]:g} -> {trace[-1]:g} over {len(trace)} fresh steps, {skipped} skipped; "
                   f"timed loop skipped {data['amp-fp16']['amp_skipped_steps']}")
    return None, ", ".join(figures), data


def check_power(ctx: Context) -> tuple[bool | None, str, dict]:
    from bench.measure.power import (
        compare_power_readings,
        energy_counter_period_s,
        nvml_device,
    )

    cell = ctx.cell("resnet50", 256, precision="amp-bf16", channels_last=True)
    with prepared_cell(cell) as built:
        readings = compare_power_readings(built.step, built.device, seconds=3.0)
    found = nvml_device(torch.device(ctx.device))
    period_s = None if isinstance(found, str) else energy_counter_period_s(*found)
    data = {"readings": readings, "energy_counter_period_ms": None if period_s is None else period_s * 1e3}
    if "note" in readings:
        return None, f"no power readings: {readings['note']}", data
    instant, average = readings["instant_w_mean"], readings["average_w_mean"]
    figure = (f"under load instant {_watts(instant)} (max {_watts(readings['instant_w_max'])}), averaged "
              f"{_watts(average)} (max {_watts(readings['average_w_max'])}); energy counter updates every "
              + ("- (it did not move)" if period_s is None else f"{period_s * 1e3:.0f} ms"))
    return None, figure, data


def _watts(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} W"


def _prediction_cells(ctx: Context) -> list[Cell]:
    """Eager cells of the default GPU preset's models at batch 64: inference and train of each."""
    return [ctx.cell(arch, 64, precision="amp-bf16", channels_last=arch.startswith("resnet"), mode=mode)
            for arch in ("resnet50", "vit_base_patch16_224") for mode in ("inference", "train")]


def check_memory_prediction(ctx: Context) -> tuple[bool | None, str, dict]:
    """Predicted (bench.counting.memory) against measured peak allocated memory for eager cells of
    the default GPU preset's models."""
    from bench.counting.memory import MB, predict_cell_peak

    data, errors, verdicts = {}, [], []
    for cell in _prediction_cells(ctx):
        measured = measure_cell(cell, CHECK_TIMING)["mem_peak_alloc_mb"]
        predicted = predict_cell_peak(cell) / MB
        errors.append(predicted / measured - 1.0)
        verdicts.append(judge_memory_prediction(predicted, measured))
        data[cell.label()] = {"predicted_mb": predicted, "measured_mb": measured, "error_pct": 100.0 * errors[-1],
                              "passed": verdicts[-1]}
    worst = max(errors, key=abs)
    figure = (f"eager peak error within {100 * abs(worst):.1f}% (worst of {len(errors)}; passes within "
              f"{MEMORY_PREDICTION_PCT:g}% or {MEMORY_PREDICTION_MB:g} MiB)")
    return all(verdicts), figure, data


def check_fp32_modes(ctx: Context) -> tuple[bool | None, str, dict]:
    data = {}
    for precision in ("fp32", "tf32", "torch-default"):
        row = measure_cell(ctx.cell("resnet50", 256, precision=precision, channels_last=True), CHECK_TIMING)
        data[precision] = {k: row.get(k) for k in ("throughput", "step_ms_p50", "tf32_matmul", "tf32_cudnn")}
    fp32 = data["fp32"]["throughput"]
    figure = ", ".join(f"{p} {v['throughput']:.0f} img/s ({v['throughput'] / fp32:.2f}x)" for p, v in data.items())
    # TF32 tensor cores on sm80+ make tf32 and torch-default (cuDNN TF32 on) faster than real fp32 convolutions.
    passed = data["tf32"]["throughput"] > fp32 and data["torch-default"]["throughput"] > fp32
    return passed, figure, data


def check_batch_4096(ctx: Context) -> tuple[bool | None, str, dict]:
    cell = ctx.cell("resnet50", 4096, precision="fp16", channels_last=True)
    short = dataclasses.replace(CHECK_TIMING, min_iters=5, min_s=0.5)
    row = measure_cell(cell, short)
    figure = f"{row['throughput']:.0f} img/s, peak allocated {row['mem_peak_alloc_mb'] / 1024:.1f} GiB"
    return True, figure, {k: row.get(k) for k in ("throughput", "step_ms_p50", "mem_peak_alloc_mb")}


@dataclass(frozen=True)
class Check:
    """A check and its budget: the most seconds `gpu-validate`'s guard gives it before stopping it
    (its process's start-up aside). Budgets are ceilings for one H100/H200, about twice each check's
    expected time, and add up to the gpu-check part's budget (bench.checks.validate)."""

    run: Callable[[Context], tuple[bool | None, str, dict]]
    budget_s: float


# In the order they run: the fast checks first, compilation last, so an overrun costs the least.
CHECKS: dict[str, Check] = {
    "device": Check(check_device, 6),
    "timing": Check(check_timing, 15),
    "profile": Check(check_profile, 12),
    "memory": Check(check_memory, 10),
    "fp32-modes": Check(check_fp32_modes, 10),
    "oom-recovery": Check(check_oom_recovery, 12),
    "low-precision-train": Check(check_low_precision_train, 10),
    "power": Check(check_power, 8),
    "batch-4096": Check(check_batch_4096, 8),
    "memory-prediction": Check(check_memory_prediction, 25),
    "max-batch": Check(check_max_batch, 30),
    "ddp": Check(check_ddp, 22),
    "compile": Check(check_compile, 30),
    "compile-autotune": Check(check_compile_autotune, 27),
}


def run_check(name: str, ctx: Context) -> CheckResult:
    """Run one check; an exception is a FAIL carrying its traceback."""
    start = time.perf_counter()
    try:
        passed, figure, data = CHECKS[name].run(ctx)
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
        first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        passed, figure, data = False, f"raised {type(exc).__name__}: {first_line}", {"traceback": traceback.format_exc()}
    gc.collect()
    torch.cuda.empty_cache()
    return CheckResult(name, passed, figure, data, time.perf_counter() - start)
