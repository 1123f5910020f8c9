"""Measure one cell: build the model, apply mode/precision/layout/compile, time it, and return
one flat row of measurement columns (the configuration, status and env_* columns are the runner's).

Order of events in a cell:
1-2. `bench.execute.prepare.prepared_cell`: check the cell, set the precision's global switches,
   build (seeded), set the mode, cast and lay out the model, make the fixed random batch;
3. compiled cells only: the first step, synchronised, is `compile_s` (it also compiles backward);
4. warm-up, then the timed loop, around which CUDA memory peaks and NVML power are sampled;
5. `prepared_cell` releases the model, compile caches and CUDA cache and restores the switches.

Recompilations are dynamo graphs compiled after the first step: `recompiles` counts those in
warm-up and timing, `recompiles_timed` those inside the timed loop (its samples then include
compilation, and the row says so instead of hiding it). Both are 0 for eager cells.
`inductor_freezing` is Inductor's freezing switch as the compiled cell ran (False for eager cells).

FLOPs: `gflops_per_step` is forward FLOPs x batch for inference and forward+backward FLOPs x
batch for train. For finetune it is forward FLOPs x batch: the frozen backbone runs no backward,
and the head's weight gradient (one small matmul) is below 0.1% of any model here, so counting
full training FLOPs would inflate MFU by about 3x. `achieved_tflops` = gflops_per_step / median
step; `mfu` divides it by the device's dense peak for the precision (None on CPU/unknown GPUs).
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch

from bench.config.cell import Cell
from bench.config.precision import numerics_state
from bench.config.sweep import TimingConfig
from bench.counting.flops import count_params
from bench.execute.prepare import BuiltCell, flops_per_image, prepared_cell
from bench.execute.step import freezing_enabled, graphs_compiled
from bench.hardware.gpus import peak_tflops_for
from bench.measure.memory import CudaPeak, RssPeak, weights_bytes
from bench.measure.power import PowerMonitor, empty_columns, power_monitor
from bench.measure.timing import summarize, synchronize, time_callable


@contextlib.contextmanager
def _timed_window(device: torch.device, window: dict) -> Iterator[None]:
    """Entered right around the timed loop: CUDA peaks, power sampling, compiled-graph count."""
    with contextlib.ExitStack() as stack:
        if device.type == "cuda":
            window["cuda"] = stack.enter_context(CudaPeak(device))
        monitor = power_monitor(device)
        window["power"] = monitor
        if isinstance(monitor, PowerMonitor):
            monitor.start()
            stack.callback(monitor.stop)
        window["graphs_before"] = graphs_compiled()
        yield
        window["graphs_after"] = graphs_compiled()


def _measure(built: BuiltCell, timing: TimingConfig) -> dict:
    cell, device = built.cell, built.device
    params_total, params_trainable = count_params(built.model)
    weights = weights_bytes(built.model)
    step = built.step

    rss = RssPeak() if device.type == "cpu" else None
    window: dict = {}
    if rss is not None:
        rss.start()
    try:
        compile_s = None
        if cell.compile != "none":
            start = time.perf_counter()
            step()
            synchronize(device)
            compile_s = time.perf_counter() - start
        graphs_first = graphs_compiled()
        result = time_callable(step, device, timing, around_timed=_timed_window(device, window))
    finally:
        if rss is not None:
            rss.stop()

    stats = summarize(result.samples_ms, cell.batch_size, result.timed_s)
    memory = rss.columns(weights) if rss is not None else window["cuda"].columns(weights)
    monitor = window["power"]
    images = cell.batch_size * stats["n_iters"]
    power = monitor.columns(images) if isinstance(monitor, PowerMonitor) else empty_columns(monitor)
    forward, per_image = flops_per_image(cell)
    gflops_per_step = per_image * cell.batch_size / 1e9
    achieved = gflops_per_step / stats["step_ms_p50"]  # GFLOP per ms == TFLOP/s
    peak = peak_tflops_for(torch.cuda.get_device_name(device), cell.precision) if device.type == "cuda" else None
    return {
        "params_total": params_total,
        "params_trainable": params_trainable,
        "gflops_per_image": forward / 1e9,
        "gflops_per_step": gflops_per_step,
        **stats,
        "warmup_iters": result.warmup_iters,
        "compile_s": compile_s,
        "recompiles": window["graphs_after"] - graphs_first,
        "recompiles_timed": window["graphs_after"] - window["graphs_before"],
        "inductor_freezing": freezing_enabled(cell.compile),
        **memory,
        **power,
        "achieved_tflops": achieved,
        "mfu": None if peak is None else achieved / peak,
        **numerics_state(),
        "samples_ms": result.samples_ms,
    }


def measure_cell(cell: Cell, timing: TimingConfig) -> dict:
    """Measure one cell; returns the measurement columns of its results row plus "samples_ms".

    The env_* columns are the run's, collected once per run (bench.measure.env), not per cell.
    Raises UsageError for cells that cannot run here (bad names, precision/device combinations,
    missing devices) and lets torch.OutOfMemoryError propagate for the runner to classify.
    """
    with prepared_cell(cell) as built:
        return _measure(built, timing)
