"""Prepare one cell for running, the one path every caller takes: measurement (bench.measure.cell),
profiling (bench.profiling.profile) and the pytest-benchmark gates all enter `prepared_cell`, so they
run exactly the same program.

`prepared_cell` validates the cell, resolves its (arch, impl) entry and precision plan, checks the
device can run it, sets the precision's global switches and Inductor's freezing switch, builds the
seeded model in its mode, precision and layout with a fixed random batch, the optimizer and the
step closure, and on exit releases the model, compile caches and CUDA cache and restores the
switches, whatever happened.

Every cell gets a new model object with its own storage, and the same initial weights every time:
those the library's constructor draws on the CPU right after `torch.manual_seed(SEED)`. The first
build of an (arch, impl, image size) in a process draws them and keeps a copy; later builds construct
the model on the meta device, allocate it on the cell's device and copy the kept weights in, which
costs a copy instead of the random numbers (most of a build, seconds for a large ViT).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from bench.config.backends import DEFAULT_BACKEND
from bench.config.cell import Cell, validate
from bench.config.precision import PrecisionPlan, numerics, plan_for
from bench.counting.flops import forward_flops, train_flops
from bench.execute.backends import deployed_step
from bench.execute.step import compile_model, inductor_freezing, make_step, uses_cudagraphs
from bench.hardware.device import check_capability, current_device
from bench.models import IMPLS, ModelEntry, get_entry
from bench.models.training import make_optimizer, prepare_mode

NUM_CLASSES = 1000
SEED = 0
# Initial weights (CPU copies) of the last (arch, impl, image size) keys built in this process. Sweeps
# interleave the impls of one arch, so one arch's worth of keys covers the cells that reuse them.
_INITIAL_WEIGHTS: OrderedDict[tuple[str, str, int], dict[str, torch.Tensor]] = OrderedDict()
_KEPT_KEYS = len(IMPLS)


@dataclass
class BuiltCell:
    """Everything a cell runs: `step()` is one inference forward or one training step."""

    cell: Cell
    entry: ModelEntry
    plan: PrecisionPlan
    device: torch.device
    model: nn.Module  # the eager model (also the one the compiled wrapper calls; a backend's is exported from it)
    runnable: nn.Module | Callable  # the model as the step calls it: compiled or eager (a backend cell: eager)
    optimizer: torch.optim.Optimizer | None  # None for inference
    x: torch.Tensor  # the fixed random input batch
    y: torch.Tensor  # the fixed random labels
    step: Callable[[], object]
    build_s: float  # seconds to construct the model, give it its initial weights and place it (see _build)
    deploy: dict  # a backend cell's `deploy` columns (bench.execute.backends); {} for eager cells

    def eager_step(self) -> Callable[[], object]:
        """The same step on the uncompiled model, for op-by-op accounting."""
        return make_step(self.model, self.cell.mode, self.x, self.y, self.plan, self.optimizer, cudagraph_steps=False)


def _tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter and buffer, non-persistent buffers included (a state dict omits those)."""
    return itertools.chain(model.named_parameters(), model.named_buffers())


def initial_model(entry: ModelEntry, image_size: int, device: torch.device) -> nn.Module:
    """A new model on `device` (train mode, as constructed) with the seeded initial weights of
    (entry, image_size): drawn on the CPU on the key's first build, copied from the kept ones after."""
    key = (entry.arch, entry.impl, image_size)
    weights = _INITIAL_WEIGHTS.get(key)
    if weights is None:
        torch.manual_seed(SEED)
        model = entry.build(num_classes=NUM_CLASSES, image_size=image_size)
        _INITIAL_WEIGHTS[key] = {name: t.detach().clone() for name, t in _tensors(model)}
        if len(_INITIAL_WEIGHTS) > _KEPT_KEYS:
            _INITIAL_WEIGHTS.popitem(last=False)
        return model.to(device)
    _INITIAL_WEIGHTS.move_to_end(key)
    with torch.device("meta"):
        model = entry.build(num_classes=NUM_CLASSES, image_size=image_size)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, t in _tensors(model):
            t.copy_(weights[name])
    return model


def _build(cell: Cell, entry: ModelEntry, plan: PrecisionPlan, device: torch.device) -> BuiltCell:
    """Build the seeded model, batch, optimizer and step of `cell` on `device`.

    `build_s` times the model alone: construction, initial weights, mode, device, dtype and layout. A cell of
    a backend other than eager builds the same (fp32, `prepared_cell`), then its step runs the backend
    (bench.execute.backends.deployed_step: export, load and parity, outside `build_s`).
    """
    start = time.perf_counter()
    model = initial_model(entry, cell.image_size, device)
    prepare_mode(model, cell.mode)
    model.to(device=device, dtype=plan.param_dtype)
    layout = torch.channels_last if cell.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    build_s = time.perf_counter() - start
    optimizer = None if cell.mode == "inference" else make_optimizer(model, entry.family, cell.optimizer)
    torch.manual_seed(SEED)  # the batch must not depend on whether the weights were drawn or copied
    x = torch.randn(cell.batch_size, 3, cell.image_size, cell.image_size, device=device, dtype=plan.param_dtype)
    x = x.contiguous(memory_format=layout)
    y = torch.randint(0, NUM_CLASSES, (cell.batch_size,), device=device)
    runnable = compile_model(model, cell.compile, device)
    if cell.backend == DEFAULT_BACKEND:
        step = make_step(runnable, cell.mode, x, y, plan, optimizer,
                         cudagraph_steps=uses_cudagraphs(cell.compile, device))
        deploy = {}
    else:
        step, deploy = deployed_step(cell, model, x)
    return BuiltCell(cell=cell, entry=entry, plan=plan, device=device, model=model, runnable=runnable,
                     optimizer=optimizer, x=x, y=y, step=step, build_s=build_s, deploy=deploy)


def flops_per_image(cell: Cell) -> tuple[int, int]:
    """(forward FLOPs per image, FLOPs per image of one step in this cell's mode).

    Finetune counts forward only: the frozen backbone runs no backward (see bench.measure.cell).
    """
    forward = forward_flops(cell.arch, cell.impl, cell.image_size)
    return forward, train_flops(cell.arch, cell.impl, cell.image_size) if cell.mode == "train" else forward


def free_cuda_memory() -> None:
    """Give back the CUDA memory nothing holds any more: collect garbage, drop torch's cuBLAS
    workspaces (kept per cuBLAS handle and stream for the life of the process, so one cell's would
    count in the next cell's peaks; the next cuBLAS call allocates its own again) and return the
    caching allocator's free blocks to the driver, where another process can use them. Only
    garbage collection where CUDA was never initialised."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()


def _release(compiled: bool) -> None:
    """Free what the cell left behind so the next cell starts from the same state."""
    if compiled:
        torch._dynamo.reset()
    free_cuda_memory()


def check_cell(cell: Cell) -> ModelEntry:
    """Everything that can refuse a cell before any work: names, numbers, the (arch, impl) pair, the
    image size the model takes, and the device. Returns the cell's registry entry."""
    validate(cell)
    entry = get_entry(cell.arch, cell.impl)
    check_capability(cell.device, cell.precision)
    return entry


@contextlib.contextmanager
def prepared_cell(cell: Cell) -> Iterator[BuiltCell]:
    """The cell checked (UsageError before anything is built), built, and released on exit.

    The precision's global switches (TF32, cudnn.benchmark) and Inductor's freezing switch hold for
    the whole block and are restored after it; so is the memory the cell held, compile caches included.
    The release frees only what nothing holds: a caller drops its `BuiltCell` (`del built`) before
    the block ends, or its model, batch and optimizer state stay allocated, and cached, after it.
    The cell's device is torch's current device for the block (`current_device`), so what synchronises
    without naming a device (CUDA-graph recording, torch.utils.benchmark) waits for the cell's GPU.
    A backend other than eager computes in its own precision; its model and batch are eager fp32 PyTorch's,
    which it is exported from and checked against, so its plan is fp32's.
    """
    entry = check_cell(cell)
    plan = plan_for(cell.precision if cell.backend == DEFAULT_BACKEND else "fp32")
    device = torch.device(cell.device)
    try:
        with current_device(cell.device), numerics(plan, device), inductor_freezing(cell.compile):
            yield _build(cell, entry, plan, device)
    finally:
        _release(cell.compile != "none")
