"""Memory of one cell, as results-row columns (MB = 2**20 bytes).

CUDA (exact, from the caching allocator), over the timed loop:
- `mem_peak_alloc_mb`: peak bytes held by tensors;
- `mem_peak_reserved_mb`: peak bytes the caching allocator held from the driver (what really has
  to fit on the card; includes fragmentation and cached free blocks);
- `mem_weights_mb`: parameters + buffers, in the cell's dtype (also reported on CPU: it is exact);
- `mem_activation_mb`: peak allocated minus the memory allocated at rest right before the loop.
  At rest the allocator holds the weights and buffers, the input batch and labels, the cuBLAS
  workspaces warm-up made (one per thread that ran cuBLAS; bench.execute.prepare drops them between
  cells, so a cell's peak holds its own) and, for train/finetune, the optimizer state; gradients are dropped first (`zero_grad(set_to_none=True)`,
  as every step begins), else they would count as rest and undercount the step by their size. So
  this is the transient memory of one step: activations saved for backward, gradients,
  temporaries, workspaces;
- `mem_graph_pool_mb`: bytes in CUDA graphs' private memory pools (0 without CUDA graphs).

At rest is read after `empty_cache()`, so the peaks start from what the cell holds, not from the
cuDNN autotuning workspaces of warm-up. The caller then runs one untimed step to refill the cache,
so the first timed step pays no cudaMalloc; the peaks cover that step, which is like the others.

CUDA graphs (reduce-overhead, and max-autotune's): the graph's private pool is filled while
warm-up records it, and replays allocate nothing, so peak minus at rest would be near 0. Measuring
from before the first call would instead count compilation and autotuning buffers. Neither is the
step's memory, so for these cells `mem_activation_mb` is None, `mem_graph_pool_mb` gives the pool
(it is part of `mem_peak_reserved_mb`) and `mem_note` says so. A cell is one of these when the
allocator holds a private pool, which no other cell creates.

CPU (approximate): `mem_rss_delta_mb` is the peak resident set size sampled every few ms from
/proc/self/statm, minus the RSS right before the first step (compilation, warm-up and timing
included). It counts what glibc and oneDNN keep cached, misses spikes between samples, and is
Linux-only; `mem_note` says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from bench.columns import values
from bench.measure.sampler import BackgroundSampler

MB = float(2**20)
RSS_INTERVAL_S = 0.01
_STATM = Path("/proc/self/statm")


def weights_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _rss_bytes() -> int:
    """Current resident set size of this process (second field of statm, in pages)."""
    return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def graph_pool_bytes(device: torch.device) -> int:
    """Bytes the caching allocator holds on `device` in private pools, those of CUDA graphs
    (segments of the default pool have `segment_pool_id` (0, 0))."""
    return sum(segment["total_size"] for segment in torch.cuda.memory_snapshot()
               if segment["device"] == device.index and tuple(segment["segment_pool_id"]) != (0, 0))


class CudaPeak:
    """Peak CUDA memory of the timed loop against the memory held at rest right before it."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self.at_rest = 0
        self.peak_alloc = 0
        self.peak_reserved = 0
        self.graph_pool = 0

    def start(self, free_grads: Callable[[], None] | None) -> None:
        """Drop the gradients (`free_grads`, None for inference), release the cache, reset the
        peaks and read the memory at rest (see the module docstring for why, in this order)."""
        torch.cuda.synchronize(self._device)
        if free_grads is not None:
            free_grads()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self._device)
        self.at_rest = torch.cuda.memory_allocated(self._device)

    def stop(self) -> None:
        """Read the peaks and the graph pool once the loop's work has finished."""
        torch.cuda.synchronize(self._device)
        self.peak_alloc = torch.cuda.max_memory_allocated(self._device)
        self.peak_reserved = torch.cuda.max_memory_reserved(self._device)
        self.graph_pool = graph_pool_bytes(self._device)

    def columns(self, weights: int) -> dict:
        """Memory columns for a CUDA cell."""
        if self.graph_pool:
            note = ("CUDA graphs: replays allocate nothing, so no activation figure; the graphs' pool,"
                    " recorded in warm-up, is mem_graph_pool_mb and inside peak reserved")
        else:
            note = ("CUDA caching allocator, timed loop; activation = peak - allocated at rest,"
                    " gradients freed")
        return values(
            "memory",
            mem_peak_alloc_mb=self.peak_alloc / MB,
            mem_peak_reserved_mb=self.peak_reserved / MB,
            mem_weights_mb=weights / MB,
            mem_activation_mb=None if self.graph_pool else (self.peak_alloc - self.at_rest) / MB,
            mem_graph_pool_mb=self.graph_pool / MB,
            mem_note=note,
        )


class RssPeak:
    """Samples this process's RSS from `start()` (before the first step) to `stop()`."""

    def __init__(self) -> None:
        self._sampler = BackgroundSampler(_rss_bytes, RSS_INTERVAL_S, edges=True) if _STATM.exists() else None
        self._delta: int | None = None

    def start(self) -> None:
        """Take the baseline and start sampling."""
        if self._sampler is not None:
            self._sampler.start()

    def stop(self) -> None:
        """Stop sampling; the delta is the peak sample minus the first one."""
        if self._sampler is not None:
            values = [v for _, v in self._sampler.stop()]
            self._delta = max(values) - values[0]

    def columns(self, weights: int) -> dict:
        """Memory columns for a CPU cell."""
        if self._delta is None:
            note = "no /proc/self/statm: RSS not measured on this OS"
        else:
            note = (f"approximate: peak RSS growth, sampled every {RSS_INTERVAL_S * 1e3:g} ms"
                    " from the first step to the end of timing")
        return values(
            "memory",
            mem_weights_mb=weights / MB,
            mem_rss_delta_mb=None if self._delta is None else self._delta / MB,
            mem_note=note,
        )
