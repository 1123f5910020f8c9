"""Memory of one cell, as results-row columns (MB = 2**20 bytes).

CUDA (exact, from the caching allocator), over the timed loop:
- `mem_peak_alloc_mb`: peak bytes held by tensors (peak statistics reset right before the loop);
- `mem_peak_reserved_mb`: peak bytes the caching allocator held from the driver (what really has
  to fit on the card; includes fragmentation and cached free blocks);
- `mem_weights_mb`: parameters + buffers, in the cell's dtype (also reported on CPU: it is exact);
- `mem_activation_mb`: peak allocated minus the memory allocated at rest right before the loop.
  At rest, after warm-up, the allocator holds the weights and buffers, the input batch and labels
  and, for train/finetune, the gradients and optimizer state (both persist between steps). So this
  is the transient memory of one step: activations saved for backward, temporaries, workspaces.

CPU (approximate): `mem_rss_delta_mb` is the peak resident set size sampled every few ms from
/proc/self/statm, minus the RSS right before the first step (compilation, warm-up and timing
included). It counts what glibc and oneDNN keep cached, misses spikes between samples, and is
Linux-only; `mem_note` says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

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


class CudaPeak:
    """Context manager around the timed loop: resets the peak statistics, reads them on exit."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self.at_rest = 0
        self.peak_alloc = 0
        self.peak_reserved = 0

    def __enter__(self) -> "CudaPeak":
        torch.cuda.synchronize(self._device)
        torch.cuda.reset_peak_memory_stats(self._device)
        self.at_rest = torch.cuda.memory_allocated(self._device)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.synchronize(self._device)
        self.peak_alloc = torch.cuda.max_memory_allocated(self._device)
        self.peak_reserved = torch.cuda.max_memory_reserved(self._device)

    def columns(self, weights: int) -> dict:
        """Memory columns for a CUDA cell."""
        return {
            "mem_peak_alloc_mb": self.peak_alloc / MB,
            "mem_peak_reserved_mb": self.peak_reserved / MB,
            "mem_weights_mb": weights / MB,
            "mem_activation_mb": (self.peak_alloc - self.at_rest) / MB,
            "mem_rss_delta_mb": None,
            "mem_note": "CUDA caching allocator, timed loop; activation = peak - allocated at rest",
        }


class RssPeak:
    """Samples this process's RSS from `start()` (before the first step) to `stop()`."""

    def __init__(self) -> None:
        self._sampler = BackgroundSampler(_rss_bytes, RSS_INTERVAL_S) if _STATM.exists() else None
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
        return {
            "mem_peak_alloc_mb": None,
            "mem_peak_reserved_mb": None,
            "mem_weights_mb": weights / MB,
            "mem_activation_mb": None,
            "mem_rss_delta_mb": None if self._delta is None else self._delta / MB,
            "mem_note": note,
        }
