"""Set up one cell for running: the model in its mode, precision and layout, a fixed random batch,
the optimizer and the step closure. Shared by measurement (bench.measure.cell) and profiling
(bench.profiling.profile) so both run exactly the same program."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bench.config.cell import Cell
from bench.errors import UsageError
from bench.counting.flops import forward_flops, train_flops
from bench.models import ModelEntry
from bench.config.precision import PrecisionPlan
from bench.execute.step import compile_model, make_optimizer, make_step, prepare_mode

NUM_CLASSES = 1000
SEED = 0


@dataclass
class BuiltCell:
    """Everything a cell runs: `step()` is one inference forward or one training step."""

    model: nn.Module  # the eager model (also the one the compiled wrapper calls)
    runnable: nn.Module | Callable  # the model as the step calls it: compiled or eager
    optimizer: torch.optim.Optimizer | None  # None for inference
    x: torch.Tensor  # the fixed random input batch
    y: torch.Tensor  # the fixed random labels
    step: Callable[[], object]

    def eager_step(self, cell: Cell, plan: PrecisionPlan) -> Callable[[], object]:
        """The same step on the uncompiled model, for op-by-op accounting."""
        return make_step(self.model, cell.mode, self.x, self.y, plan, self.optimizer, cudagraph_steps=False)


def check_device(device: torch.device, precision: str) -> None:
    """UsageError when the device is not there or cannot run the precision."""
    if device.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.index >= count:
        raise UsageError(f"device {device} is not available; this machine has {count} CUDA device(s)")
    # bf16 and TF32 tensor cores start with Ampere (sm80); older GPUs emulate bf16 and ignore TF32,
    # so such a row would be mislabelled.
    if ("bf16" in precision or precision == "tf32") and torch.cuda.get_device_capability(device) < (8, 0):
        raise UsageError(
            f"{torch.cuda.get_device_name(device)} (sm{''.join(map(str, torch.cuda.get_device_capability(device)))}) "
            f"has no {precision} tensor cores (needs sm80+); use fp32, amp-fp16 or fp16"
        )


def build_cell(cell: Cell, entry: ModelEntry, plan: PrecisionPlan, device: torch.device) -> BuiltCell:
    """Build the seeded model, batch, optimizer and step of `cell` on `device`."""
    torch.manual_seed(SEED)
    model = entry.build(num_classes=NUM_CLASSES, image_size=cell.image_size)
    prepare_mode(model, cell.mode)
    model.to(device=device, dtype=plan.param_dtype)
    layout = torch.channels_last if cell.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    optimizer = None if cell.mode == "inference" else make_optimizer(model, entry.family)
    x = torch.randn(cell.batch_size, 3, cell.image_size, cell.image_size, device=device, dtype=plan.param_dtype)
    x = x.contiguous(memory_format=layout)
    y = torch.randint(0, NUM_CLASSES, (cell.batch_size,), device=device)
    runnable = compile_model(model, cell.compile)
    # Both modes replay CUDA graphs on CUDA, so each step must be marked as a new graph iteration.
    cudagraphs = device.type == "cuda" and cell.compile in ("reduce-overhead", "max-autotune")
    step = make_step(runnable, cell.mode, x, y, plan, optimizer, cudagraph_steps=cudagraphs)
    return BuiltCell(model=model, runnable=runnable, optimizer=optimizer, x=x, y=y, step=step)


def flops_per_image(cell: Cell) -> tuple[int, int]:
    """(forward FLOPs per image, FLOPs per image of one step in this cell's mode).

    Finetune counts forward only: the frozen backbone runs no backward (see bench.measure.cell).
    """
    forward = forward_flops(cell.arch, cell.impl, cell.image_size)
    return forward, train_flops(cell.arch, cell.impl, cell.image_size) if cell.mode == "train" else forward


def release(device: torch.device, compiled: bool) -> None:
    """Free what the cell left behind so the next cell starts from the same state."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
