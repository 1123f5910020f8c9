"""A cell's model as a server runs it: `served_model` builds it once (the one path, `prepared_cell`, at the largest
batch the batcher forms) and gives `infer(k)`, one batch of k requests, for bench.measure.serving.

A request's image comes from a pool of seeded images held in host memory, as MLPerf's query sample library holds
its samples: `infer` gathers the batch's images (a copy, as a server stacks its requests' tensors), moves them to
the device, runs the forward in the cell's precision and brings the logits back to the host, so a batch's service
time holds everything a request costs the server but its transport. On CUDA, events around the forward give the
GPU's busy time (`take_gpu_busy_s`).

torch.compile compiles one graph per batch shape (static shapes, as `rvbench run` compiles): every batch size from 1
to the largest is compiled in warm-up, so no request waits on a compilation.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from bench.config.cell import Cell
from bench.config.precision import autocast
from bench.execute.prepare import BuiltCell, prepared_cell
from bench.execute.step import uses_cudagraphs

POOL_IMAGES = 64
WARMUP_BATCHES = 3  # per batch size


class ServedModel:
    """A built cell's model as the server calls it (bench.measure.serving.Model)."""

    def __init__(self, built: BuiltCell) -> None:
        self.built = built
        generator = torch.Generator().manual_seed(1)
        size = built.cell.image_size
        pool = torch.randn(max(POOL_IMAGES, built.cell.batch_size), 3, size, size, generator=generator)
        self.pool = pool.to(built.plan.param_dtype)
        self.cuda = built.device.type == "cuda"
        if self.cuda:
            self.pool = self.pool.pin_memory()
        self.layout = torch.channels_last if built.cell.channels_last else torch.contiguous_format
        self.cudagraphs = uses_cudagraphs(built.cell.compile, built.device)
        self._next = 0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def infer(self, k: int) -> None:
        """Serve k requests: the next k images of the pool, forward, logits on the host."""
        index = (torch.arange(k) + self._next) % len(self.pool)
        self._next = (self._next + k) % len(self.pool)
        x = self.pool.index_select(0, index).to(self.built.device, non_blocking=True).contiguous(
            memory_format=self.layout)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        with torch.inference_mode(), autocast(self.built.plan, self.built.device):
            logits = self.built.runnable(x)
        if self.cuda:
            end.record()
            self._events.append((start, end))
        logits.float().cpu()

    def take_gpu_busy_s(self) -> float | None:
        """Seconds the GPU spent in the forwards since the last call; None off CUDA."""
        if not self.cuda:
            return None
        busy = sum(start.elapsed_time(end) for start, end in self._events) / 1e3
        self._events.clear()
        return busy

    def warm_up(self) -> None:
        """Every batch size up to the largest, a few times (compiling each shape once)."""
        for k in range(1, self.built.cell.batch_size + 1):
            for _ in range(WARMUP_BATCHES):
                self.infer(k)
        self.take_gpu_busy_s()


@contextlib.contextmanager
def served_model(cell: Cell) -> Iterator[ServedModel]:
    """`cell` (an inference cell whose batch size is the largest batch served) built, warmed up and released."""
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, cell.batch_size + 1)  # one graph per batch size
    try:
        with prepared_cell(cell) as built:
            model = ServedModel(built)
            del built  # the model holds it; dropped before the block ends, so its release frees the memory
            try:
                model.warm_up()
                yield model
            finally:
                model.built = None
    finally:
        torch._dynamo.config.recompile_limit = limit
