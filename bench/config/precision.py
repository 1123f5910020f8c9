"""Numeric precision of a cell realised in torch: dtypes, autocast, and the global TF32/cudnn switches.

What each precision means is declared once in `bench.precisions`; this module turns a declaration into torch
objects. CUDA cells run with `cudnn.benchmark` on (the autotuned algorithms are picked during warm-up). The switches
are process-global, so `numerics` restores them when the cell ends; their effective state is recorded in the row.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from bench.precisions import precision


@dataclass(frozen=True)
class PrecisionPlan:
    """How to realise one precision name in torch (its `bench.precisions.Precision` with dtypes resolved)."""

    param_dtype: torch.dtype  # dtype of weights and of the input batch
    autocast_dtype: torch.dtype | None  # autocast region dtype, None for no autocast
    tf32_matmul: bool  # allow TF32 in fp32 matmuls (float32_matmul_precision "high")
    tf32_cudnn: bool  # allow TF32 in cudnn convolutions (cudnn.allow_tf32)


def plan_for(name: str) -> PrecisionPlan:
    """The plan for a precision name; UsageError naming the valid ones otherwise."""
    spec = precision(name)
    return PrecisionPlan(getattr(torch, spec.weights), spec.autocast and getattr(torch, spec.autocast),
                         spec.tf32_matmul, spec.tf32_cudnn)


def autocast(plan: PrecisionPlan, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast region for a step (a no-op context when the plan has none)."""
    if plan.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=plan.autocast_dtype)


def numerics_state() -> dict[str, bool]:
    """Effective TF32 and cudnn.benchmark switches, as results-row columns."""
    return {
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


@contextlib.contextmanager
def numerics(plan: PrecisionPlan, device: torch.device) -> Iterator[None]:
    """Set the global switches for a cell and restore them (whatever happens) when it ends."""
    saved_precision = torch.get_float32_matmul_precision()
    saved_cudnn_tf32 = torch.backends.cudnn.allow_tf32
    saved_benchmark = torch.backends.cudnn.benchmark
    try:
        # "high" is PyTorch's switch for TF32 matmuls, "highest" keeps them IEEE fp32.
        torch.set_float32_matmul_precision("high" if plan.tf32_matmul else "highest")
        torch.backends.cudnn.allow_tf32 = plan.tf32_cudnn
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.set_float32_matmul_precision(saved_precision)
        torch.backends.cudnn.allow_tf32 = saved_cudnn_tf32
        torch.backends.cudnn.benchmark = saved_benchmark
