"""The data-parallel training step of `rvbench scale`: a cell's train step on its model wrapped in
DistributedDataParallel.

The cell is built by `bench.execute.prepare.prepared_cell` like every other cell (same seeded
weights, batch, optimizer and precision switches); only the module the step calls changes, so a DDP
step is the sweep's train step plus DDP's gradient all-reduce. A communication hook wraps DDP's
default all-reduce (`allreduce_hook`) and counts the bytes of every bucket it reduces, which a run
checks against the gradient bytes (`grad_bytes`): every trainable parameter's gradient must travel
exactly once per step.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from bench.execute.prepare import BuiltCell
from bench.execute.step import Step, compile_model, make_step, uses_cudagraphs

# DDP's own default bucket size (MiB).
DEFAULT_BUCKET_MB = 25.0


@dataclass(frozen=True)
class DdpOptions:
    """DistributedDataParallel's knobs that change how gradients are reduced."""

    bucket_mb: float = DEFAULT_BUCKET_MB  # bucket_cap_mb: gradients per all-reduce
    static_graph: bool = False  # the graph is the same every step: DDP can skip per-step bookkeeping
    grad_as_bucket_view: bool = False  # gradients are views into the buckets: no copy in and out


class AllreduceCounter:
    """`hook` is a DDP communication hook: DDP's default all-reduce, adding each bucket's bytes to
    `bytes`. (No `from __future__ import annotations` in this module: DDP checks the hook's
    annotations as objects.)"""

    def __init__(self) -> None:
        self.bytes = 0

    def hook(self, process_group: dist.ProcessGroup | None,
             bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        buffer = bucket.buffer()
        self.bytes += buffer.numel() * buffer.element_size()
        return allreduce_hook(process_group, bucket)


def grad_bytes(model: nn.Module) -> int:
    """Bytes of one step's gradients: every trainable parameter, in its own dtype (gradients take it)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def ddp_step(built: BuiltCell, options: DdpOptions) -> tuple[Step, AllreduceCounter]:
    """The cell's train step on `built.model` wrapped in DDP (compiled as the cell says), and the
    counter of the bytes it all-reduces. Needs an initialised default process group."""
    device = built.device
    ddp = DistributedDataParallel(
        built.model, device_ids=[device.index] if device.type == "cuda" else None,
        bucket_cap_mb=options.bucket_mb, static_graph=options.static_graph,
        gradient_as_bucket_view=options.grad_as_bucket_view,
    )
    counter = AllreduceCounter()
    ddp.register_comm_hook(None, counter.hook)  # None: the default process group
    runnable = compile_model(ddp, built.cell.compile, device)
    step = make_step(runnable, built.cell.mode, built.x, built.y, built.plan, built.optimizer,
                     cudagraph_steps=uses_cudagraphs(built.cell.compile, device))
    return step, counter
