"""Arithmetic intensity and the roofline: is a step bound by compute or by memory bandwidth?

Bytes moved are estimated, not measured (no hardware counters are read): one step is run under a
dispatch mode that sees every aten op with its real input and output tensors (shapes, dtypes,
after autocast), and each op is charged for reading all its tensor inputs and writing all its
outputs. Views and allocations move nothing and are not charged. This is the unfused, cache-less
traffic: real kernels fuse ops and hit in cache, so the estimate over-counts bytes and the
intensity is a lower bound. FLOPs come from the measurement core (bench.counting.flops); the roofline
ceilings come from the known-device table (bench.hardware.gpus). Unknown devices, and the CPU, get no
roofline rather than a guessed one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bench.hardware.gpus import match_device, peak_tflops_for

BYTES_METHOD = (
    "unfused estimate: every aten op reads its tensor inputs and writes its outputs once "
    "(views and allocations are free); fusion and caches make real traffic lower"
)

# Ops that only allocate: no bytes move until something writes the new tensor.
_ALLOCATING_OPS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})


def _tensor_bytes(tree: object) -> int:
    return sum(t.numel() * t.element_size() for t in tree_leaves(tree) if isinstance(t, torch.Tensor))


class _ByteCounter(TorchDispatchMode):
    """Sums the input + output bytes of every data-moving aten op run while active."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch protocol
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not func.is_view and func.overloadpacket.__name__ not in _ALLOCATING_OPS:
            self.bytes += _tensor_bytes((args, kwargs)) + _tensor_bytes(out)
        return out


def count_bytes(step: Callable[[], object]) -> int:
    """Estimated bytes moved by one call of `step` (see the module docstring for the model).

    `step` must be eager (not torch.compile'd): the count is of the op-by-op program.
    """
    counter = _ByteCounter()
    with counter:
        step()
    return counter.bytes


def point(flops: float, bytes_moved: float, seconds: float) -> dict:
    """One step as a point in roofline space: intensity (FLOP/byte) and achieved TFLOP/s."""
    return {
        "flops_per_step": flops,
        "bytes_per_step": bytes_moved,
        "intensity": flops / bytes_moved if bytes_moved > 0 else None,
        "achieved_tflops": flops / seconds / 1e12 if seconds > 0 else None,
    }


def place(pt: dict, gpu_name: str | None, precision: str) -> dict | None:
    """Put a point on the device's roofline; None when the device (or its precision) is unknown.

    Returns the point plus the ceilings: peak_tflops for the precision, mem_bw_gbs, the ridge
    intensity where the two meet, the attainable TFLOP/s at this intensity, which ceiling binds
    ("compute" or "memory"), and the achieved share of the attainable rate in percent.
    """
    if gpu_name is None or pt["intensity"] is None or pt["achieved_tflops"] is None:
        return None
    spec = match_device(gpu_name)
    peak = peak_tflops_for(gpu_name, precision)
    if spec is None or peak is None or not spec.mem_bw_gbs:
        return None
    bw_tbs = spec.mem_bw_gbs / 1000.0
    ridge = peak / bw_tbs
    attainable = min(peak, pt["intensity"] * bw_tbs)
    return {
        **pt,
        "device": spec.name,
        "peak_tflops": peak,
        "mem_bw_gbs": spec.mem_bw_gbs,
        "ridge_intensity": ridge,
        "attainable_tflops": attainable,
        "bound": "compute" if pt["intensity"] >= ridge else "memory",
        "pct_of_attainable": 100.0 * pt["achieved_tflops"] / attainable,
    }
