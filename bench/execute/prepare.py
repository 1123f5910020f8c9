"""Prepare one cell for running, the one path every caller takes: measurement (bench.measure.cell),
profiling (bench.profiling.profile) and the pytest-benchmark gates all enter `prepared_cell`, so they
run exactly the same program.

`prepared_cell` validates the cell, resolves its (arch, impl) entry and precision plan, checks the
device can run it, sets the precision's global switches and Inductor's freezing switch, builds the
seeded model in its mode, precision and layout with a fixed random batch, the optimizer and the
step closure, and on exit releases the model, compile caches and CUDA cache and restores the
switches, whatever happened.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from bench.config.cell import Cell, split_compile, validate
from bench.config.precision import PrecisionPlan, numerics, plan_for
from bench.counting.flops import forward_flops, train_flops
from bench.execute.step import compile_model, inductor_freezing, make_optimizer, make_step, prepare_mode
from bench.hardware.device import check_capability
from bench.models import ModelEntry, get_entry

NUM_CLASSES = 1000
SEED = 0


@dataclass
class BuiltCell:
    """Everything a cell runs: `step()` is one inference forward or one training step."""

    cell: Cell
    entry: ModelEntry
    plan: PrecisionPlan
    device: torch.device
    model: nn.Module  # the eager model (also the one the compiled wrapper calls)
    runnable: nn.Module | Callable  # the model as the step calls it: compiled or eager
    optimizer: torch.optim.Optimizer | None  # None for inference
    x: torch.Tensor  # the fixed random input batch
    y: torch.Tensor  # the fixed random labels
    step: Callable[[], object]

    def eager_step(self) -> Callable[[], object]:
        """The same step on the uncompiled model, for op-by-op accounting."""
        return make_step(self.model, self.cell.mode, self.x, self.y, self.plan, self.optimizer, cudagraph_steps=False)


def _build(cell: Cell, entry: ModelEntry, plan: PrecisionPlan, device: torch.device) -> BuiltCell:
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
    # Both modes (frozen or not) replay CUDA graphs on CUDA, so each step must be marked as a new graph iteration.
    cudagraphs = device.type == "cuda" and split_compile(cell.compile)[0] in ("reduce-overhead", "max-autotune")
    step = make_step(runnable, cell.mode, x, y, plan, optimizer, cudagraph_steps=cudagraphs)
    return BuiltCell(cell=cell, entry=entry, plan=plan, device=device, model=model, runnable=runnable,
                     optimizer=optimizer, x=x, y=y, step=step)


def flops_per_image(cell: Cell) -> tuple[int, int]:
    """(forward FLOPs per image, FLOPs per image of one step in this cell's mode).

    Finetune counts forward only: the frozen backbone runs no backward (see bench.measure.cell).
    """
    forward = forward_flops(cell.arch, cell.impl, cell.image_size)
    return forward, train_flops(cell.arch, cell.impl, cell.image_size) if cell.mode == "train" else forward


def _release(device: torch.device, compiled: bool) -> None:
    """Free what the cell left behind so the next cell starts from the same state."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def check_cell(cell: Cell) -> ModelEntry:
    """Everything that can refuse a cell before any work: names, numbers, the (arch, impl) pair, the
    image size the model takes, and the device. Returns the cell's registry entry."""
    validate(cell)
    entry = get_entry(cell.arch, cell.impl)
    entry.check_image_size(cell.image_size)
    check_capability(cell.device, cell.precision)
    return entry


@contextlib.contextmanager
def prepared_cell(cell: Cell) -> Iterator[BuiltCell]:
    """The cell checked (UsageError before anything is built), built, and released on exit.

    The precision's global switches (TF32, cudnn.benchmark) and Inductor's freezing switch hold for
    the whole block and are restored after it; so is the memory the cell held, compile caches included.
    """
    entry = check_cell(cell)
    plan = plan_for(cell.precision)
    device = torch.device(cell.device)
    try:
        with numerics(plan, device), inductor_freezing(cell.compile):
            yield _build(cell, entry, plan, device)
    finally:
        _release(device, cell.compile != "none")
