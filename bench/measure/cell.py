"""Measure one cell: build the model, apply mode/precision/layout/compile, time it, and return
one flat row of measurement columns (the configuration, status and env_* columns are the runner's).

Order of events in a cell:
1-2. `bench.execute.prepare.prepared_cell`: check the cell, set the precision's global switches,
   build (seeded), set the mode, cast and lay out the model, make the fixed random batch;
3. compiled cells only: the first step, synchronised, is `compile_s` (it also compiles backward);
4. warm-up; on CUDA, gradients dropped, cache emptied, peaks reset and memory at rest read, then one
   untimed step to refill the cache (bench.measure.memory); the power and contention monitors start
   last, right before the timed loop, and stop right after its final synchronisation (the load
   average is read before step 1, bench.measure.contention);
5. `prepared_cell` releases the model (dropped first), compile caches, cuBLAS workspaces and CUDA
   cache, and restores the switches.

A row with power (a CUDA device NVML can read) times at least its monitor's `floor_s`, whatever the
preset's `min_s`, `max_s` and `max_iters`: the energy counter's update period and NVML's averaging decide
how long its readings need (bench.measure.power).
A timing config that samples no power for the cell (`TimingConfig.no_power`: the runner's one-step
max-batch probes, or a batch below the preset's `power_min_batch`) opens no monitor and keeps its
own `min_s` and `max_iters`; the row's power columns are None and `power_note` says why.

Recompilations are dynamo graphs compiled after the first step: `recompiles` counts those in
warm-up and timing, `recompiles_timed` those inside the timed loop (its samples then include
compilation, and the row says so instead of hiding it). Both are 0 for eager cells.
`inductor_freezing` is Inductor's freezing switch as the compiled cell ran (False for eager cells).
`cudagraph_record_s`: seconds spent recording CUDA graphs in the cell (warm-up, where cudagraph
trees record), for CUDA-graph cells only. `optimizer_used` names the train/finetune optimizer;
`amp_skipped_steps` counts the GradScaler's skipped optimizer steps inside the timed loop (amp-fp16
training only; warm-up first runs until a step is applied, `Step.settle`).

A cell of a backend other than eager (bench.execute.backends) times the backend's inference the same way; its
`deploy` columns (export, threads, hint, parity with eager fp32) come from the build, outside the timed loop.

FLOPs: `gflops_per_step` is forward FLOPs x batch for inference and forward+backward FLOPs x
batch for train. For finetune it is forward FLOPs x batch: the frozen backbone runs no backward,
and the head's weight gradient (one small matmul) is below 0.1% of any model here, so counting
full training FLOPs would inflate MFU by about 3x. `achieved_tflops` = gflops_per_step / median
step; `mfu` divides it by the device's dense peak for the precision (None on CPU/unknown GPUs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from typing import Iterator

import torch

from bench.columns import values
from bench.config.cell import Cell
from bench.config.precision import numerics_state
from bench.config.sweep import TimingConfig
from bench.counting.flops import count_params
from bench.execute.prepare import BuiltCell, flops_per_image, prepared_cell
from bench.execute.step import cudagraph_recording_s, freezing_enabled, graphs_compiled
from bench.models.training import optimizer_name
from bench.hardware.gpus import peak_tflops_for
from bench.measure.contention import ContentionMonitor, contention_monitor, load_average
from bench.measure.memory import CudaPeak, RssPeak, weights_bytes
from bench.measure.power import PowerMonitor, empty_columns, power_monitor
from bench.measure.timing import summarize, synchronize, time_callable, timer


@contextlib.contextmanager
def _timed_window(built: BuiltCell, monitor: PowerMonitor | str, contention: ContentionMonitor,
                  window: dict) -> Iterator[None]:
    """Entered right before the timed loop: CUDA memory at rest, compiled-graph count, power, contention.

    The memory peaks are read only after a loop that finished; the power monitor's thread is
    stopped whatever happened. The contention readings (every process's /proc stat, NVML's process
    lists: milliseconds) bracket the power window, never fall inside it, so their idle GPU time is
    not billed to the cell's energy.
    """
    built.step.settle()  # amp-fp16 training: warm up until the GradScaler's scale stops overflowing
    peak = None
    if built.device.type == "cuda":
        peak = window["cuda"] = CudaPeak(built.device)
        optimizer = built.optimizer
        peak.start(None if optimizer is None else lambda: optimizer.zero_grad(set_to_none=True))
        built.step()
        synchronize(built.device)
    window["graphs_before"] = graphs_compiled()
    window["skipped_before"] = built.step.skipped_steps()
    contention.start()
    if isinstance(monitor, PowerMonitor):
        monitor.start()
    try:
        yield
    finally:
        if isinstance(monitor, PowerMonitor):
            monitor.stop()
        contention.stop()
    window["graphs_after"] = graphs_compiled()
    window["skipped_after"] = built.step.skipped_steps()
    if peak is not None:
        peak.stop()


def _measure(built: BuiltCell, timing: TimingConfig, load_avg: float | None) -> dict:
    cell, device = built.cell, built.device
    contention = contention_monitor(device, load_avg)
    params_total, params_trainable = count_params(built.model)
    weights = weights_bytes(built.model)
    step = built.step
    monitor = timing.no_power(cell.batch_size) or power_monitor(device)
    if isinstance(monitor, PowerMonitor):
        floor_s = monitor.floor_s
        timing = dataclasses.replace(timing, min_s=max(timing.min_s, floor_s), max_s=max(timing.max_s, floor_s),
                                     max_iters=sys.maxsize)

    rss = RssPeak() if device.type == "cpu" else None
    window: dict = {}
    if rss is not None:
        rss.start()
    recorded_s = cudagraph_recording_s()
    try:
        compile_s = None
        if cell.compile != "none":
            start = time.perf_counter()
            step()
            synchronize(device)
            compile_s = time.perf_counter() - start
        graphs_first = graphs_compiled()
        result = time_callable(step, device, timing, around_timed=_timed_window(built, monitor, contention, window))
    finally:
        if rss is not None:
            rss.stop()

    stats = summarize(result.samples_ms, cell.batch_size, result.timed_s, result.converged)
    memory = rss.columns(weights) if rss is not None else window["cuda"].columns(weights)
    images = cell.batch_size * stats["n_iters"]
    power = monitor.columns(images) if isinstance(monitor, PowerMonitor) else empty_columns(monitor)
    forward, per_image = flops_per_image(cell)
    gflops_per_step = per_image * cell.batch_size / 1e9
    achieved = gflops_per_step / stats["step_ms_p50"]  # GFLOP per ms == TFLOP/s
    peak = peak_tflops_for(torch.cuda.get_device_name(device), cell.precision) if device.type == "cuda" else None
    skipped_before, skipped_after = window["skipped_before"], window["skipped_after"]
    return {
        **values("counts", params_total=params_total, params_trainable=params_trainable,
                 gflops_per_image=forward / 1e9, gflops_per_step=gflops_per_step),
        **stats,
        "warmup_iters": result.warmup_iters,
        "timer": timer(timing, device),
        **values("build", build_s=built.build_s, compile_s=compile_s,
                 recompiles=window["graphs_after"] - graphs_first,
                 recompiles_timed=window["graphs_after"] - window["graphs_before"],
                 inductor_freezing=freezing_enabled(cell.compile),
                 cudagraph_record_s=cudagraph_recording_s() - recorded_s if step.cudagraphs else None),
        **values("deploy", **built.deploy),
        **values("training", optimizer_used=optimizer_name(built.optimizer),
                 amp_skipped_steps=None if skipped_before is None else skipped_after - skipped_before),
        **memory,
        **power,
        **contention.columns(),
        **values("efficiency", achieved_tflops=achieved, mfu=None if peak is None else achieved / peak),
        **values("numerics", **numerics_state()),
        "samples_ms": result.samples_ms,
    }


def measure_cell(cell: Cell, timing: TimingConfig) -> dict:
    """Measure one cell; returns the measurement columns of its results row plus "samples_ms".

    The env_* columns are the run's, collected once per run (bench.measure.env), not per cell.
    Raises UsageError for cells that cannot run here (bad names, precision/device combinations,
    missing devices) and lets torch.OutOfMemoryError propagate for the runner to classify.
    """
    load_avg = load_average()  # before the build
    with prepared_cell(cell) as built:
        row = _measure(built, timing, load_avg)
        del built  # before the release, which can free only what nothing holds
    return row
