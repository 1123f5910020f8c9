"""Peak GPU memory of one steady-state step of a cell, predicted on any machine, without a GPU.

What is predicted: `torch.cuda.max_memory_allocated` over one steady-state step (gradients dropped
at its start, optimizer state already made), the figure `mem_peak_alloc_mb` measures on CUDA.
How: the cell's model is built on the meta device and run as fake tensors (FakeTensorMode: shapes
and dtypes, no data, no kernels) for a warm step and a traced step, mirroring
bench.execute.step.make_step: zero_grad(set_to_none), forward + cross-entropy under autocast,
backward, optimizer.step (inference: one forward under inference_mode). A TorchDispatchMode
(`_LiveBytes`) sees every aten op, counts the storage of each new output once, rounded as the CUDA
caching allocator rounds a block (`allocated_bytes`), and takes it off when its storage dies, so
the live total after every op is what the allocator would report as allocated.

Why fake CPU tensors stand in for CUDA ones: on CPU-only torch, fake CUDA tensors run forward but
the autograd engine refuses them. So the step runs on fake CPU tensors with three CUDA behaviours
put back: optimizers take torch's CUDA default, the foreach implementation (its whole-model
temporaries count); autocast uses the CPU policy, which casts the same ops for these models
(tests/test_memory_predict.py compares the forward under both policies); scaled_dot_product_attention
takes the CPU flash kernel, which keeps output and logsumexp for backward like CUDA's flash and
memory-efficient kernels (CUDA's math fallback, which keeps the attention matrix, is not modelled).
The optimizer's `step` counters are host tensors on CUDA (unless capturable or fused) and are not
counted. amp-fp16's GradScaler (a few scalars, in-place unscaling) is left out.

The peak is broken down by what each live storage is: weights (parameters and buffers), batch
(input and labels), gradients, optimizer state, activations (made in the forward and still alive
when it ends: the tensors saved for backward, autocast's low-precision weight copies that backward
keeps, the logits and loss), transient (everything else: temporaries, gradients of activations,
the optimizer's foreach temporaries) and workspace, below.

cuBLAS workspaces (`workspace`): what bench.counting.workspace says a step holds on the cell's GPU.

Not modelled, so a real peak is higher: cuDNN's workspaces (cuDNN's choice with cudnn.benchmark can
take hundreds of MB during a convolution), blocks the allocator hands out unsplit (a request over
1 MiB that finds a cached block at most 1 MiB larger is charged the whole block:
`MemoryPrediction.slack` bounds that at the peak) and other fragmentation, and torch.compile
(Inductor fuses and recomputes, CUDA graphs keep private pools): compiled cells are predicted as
their eager program. Outside allocated memory altogether: the CUDA context (about 300-500 MB per
process) and reserved-but-free cache; `max_batch` keeps `CUDA_CONTEXT_BYTES` aside for them.

Cost: fake execution does not depend on the batch size. Within one step the same ops run for
every batch size and each storage is either fixed or proportional to the batch, so the live bytes
after each op are affine in the batch: `step_curve` traces two batch sizes once and gives the peak
at any batch, and the largest batch that fits, without another trace.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.config.cell import MODES, Cell
from bench.config.precision import PrecisionPlan, plan_for
from bench.counting.workspace import DEFAULT_CAPABILITY, MB, cublas_workspaces
from bench.errors import UsageError
from bench.hardware.device import cuda_capability
from bench.models import get_entry
from bench.models.training import DEFAULT_OPTIMIZER, make_optimizer, prepare_mode

ALLOCATOR_BLOCK = 512  # c10/cuda/CUDACachingAllocator.cpp kMinBlockSize: every block is a multiple of it
# kSmallSize: a cached block over 1 MiB is split only when more than 1 MiB would remain, and the
# allocator counts the whole block as allocated, so a request over 1 MiB may be charged up to 1 MiB more.
SPLIT_MIN = 2**20
CUDA_CONTEXT_BYTES = 512 * MB  # kept aside by `max_batch`: CUDA context, cuDNN's handle and workspaces
NUM_CLASSES = 1000  # as bench.execute.prepare builds every cell
CATEGORIES = ("weights", "batch", "gradients", "optimizer_state", "activations", "transient", "workspace")
PHASES = ("forward", "backward", "optimizer")
CURVE_BATCHES = (2, 66)  # far apart, so per-tensor rounding barely moves the fitted slope
NOT_MODELLED = ("not modelled: cuDNN workspaces, fragmentation, the CUDA context (~300-500 MB), "
                "torch.compile (compiled cells are predicted as eager); cuBLAS workspaces are sized for "
                "the cell's GPU, or for Hopper (sm90) without one")

# (card, bytes of memory as nvidia-smi reports it) for the largest-batch table.
CARDS = (
    ("A100 40GB", 40960 * MB),
    ("A100 80GB", 81920 * MB),
    ("H100 80GB", 81559 * MB),
    ("H200 141GB", 143771 * MB),
    ("L4 24GB", 23034 * MB),
    ("RTX 4090 24GB", 24564 * MB),
)



def allocated_bytes(nbytes: int) -> int:
    """Bytes the CUDA caching allocator counts as allocated for a request of `nbytes`: rounded up to
    a multiple of 512 (`round_size`); a zero-byte request allocates nothing."""
    return -(-nbytes // ALLOCATOR_BLOCK) * ALLOCATOR_BLOCK


class _LiveBytes(TorchDispatchMode):
    """Live storage bytes after every aten op, each storage counted once (views share it) from the
    op that made it until it is freed (a weakref on the storage, which torch keeps alive exactly as
    long as some tensor, autograd's saved ones included, holds it)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.ops = 0  # ops run so far; storage lifetimes are in these units
        self.phase = "setup"
        self._serials: dict[int, int] = {}  # id(storage) -> serial, while it lives
        self.sizes: list[int] = []  # serial -> allocated bytes
        self.born: list[int] = []  # serial -> op that made it
        self.died: list[float] = []  # serial -> op during or after which it was freed (inf: alive)
        self.trace: list[tuple[str, int]] = []  # (phase, live bytes) after each op, while recording
        self.recording = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        if self.recording:
            self.trace.append((self.phase, self.now))
        self.ops += 1
        return out

    def add(self, t: torch.Tensor) -> None:
        """Count a tensor's storage from now on, unless it is counted already."""
        storage = t.untyped_storage()
        if id(storage) in self._serials:
            return
        serial = len(self.sizes)
        self._serials[id(storage)] = serial
        self.sizes.append(allocated_bytes(storage.nbytes()))
        self.born.append(self.ops)
        self.died.append(math.inf)
        self.now += self.sizes[serial]
        weakref.finalize(storage, self._free, id(storage))

    def _free(self, key: int) -> None:
        serial = self._serials.pop(key)
        self.now -= self.sizes[serial]
        self.died[serial] = self.ops

    def serial(self, t: torch.Tensor) -> int:
        """The serial of a live tensor's storage."""
        return self._serials[id(t.untyped_storage())]

    def forget(self, t: torch.Tensor) -> None:
        """Stop counting a tensor that lives on the host on CUDA (an optimizer's step counter)."""
        serial = self.serial(t)
        self.now -= self.sizes[serial]
        self.sizes[serial] = 0


@dataclass(frozen=True)
class MemoryPrediction:
    """Predicted CUDA memory of one steady-state step, in bytes (allocator-rounded)."""

    peak: int  # max allocated over the step
    peak_phase: str  # "forward", "backward" or "optimizer": where the peak is
    at_peak: dict[str, int]  # CATEGORIES -> bytes live at the peak; sums to `peak`
    weights: int  # parameters and buffers, in full
    gradients: int  # every gradient the step makes, in full
    optimizer_state: int  # in full (momentum buffers, Adam moments)
    activations: int  # alive at the end of the forward (see the module docstring)
    workspace: int  # cuBLAS workspaces, held throughout the step (`cublas_workspaces`)
    slack: int  # up to this much more may be charged at the peak: 1 MiB per live block over 1 MiB (`SPLIT_MIN`)


def _check(arch: str, impl: str, image_size: int, batch_size: int, precision: str, mode: str) -> None:
    entry = get_entry(arch, impl)
    entry.check_image_size(image_size)
    plan_for(precision)
    if mode not in MODES:
        raise UsageError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")


class _Traced(NamedTuple):
    """One recorded step: live bytes after each of its ops, and where its forward ends."""

    trace: list[tuple[str, int]]  # (phase, live bytes) after each op
    start: int  # the tracker's op count at the step's first op
    forward_end: int  # ... and right after its forward (loss included)
    known: dict[str, set[int]]  # category -> serials of the storages the model and optimizer name


def _trace(arch: str, impl: str, image_size: int, batch_sizes: tuple[int, ...], precision: str, mode: str,
           optimizer: str, channels_last: bool) -> tuple[_LiveBytes, list[_Traced]]:
    """Build the cell once on fake tensors and record one steady-state step per batch size (train
    and finetune run a warm step first, which makes the optimizer state)."""
    entry = get_entry(arch, impl)
    plan = plan_for(precision)
    with torch.device("meta"):
        model = entry.build(num_classes=NUM_CLASSES, image_size=image_size)
    prepare_mode(model, mode)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(dtype=plan.param_dtype, memory_format=layout)
    tracker = _LiveBytes()
    with FakeTensorMode():
        _materialise(model)
        for t in [*model.parameters(), *model.buffers()]:
            tracker.add(t)
        with tracker:
            opt = None
            if mode != "inference":
                opt = make_optimizer(model, entry.family, optimizer)
                for group in opt.param_groups:
                    if group.get("foreach") is None and not group.get("fused"):
                        group["foreach"] = True  # torch's default for CUDA parameters
            return tracker, [_record(model, opt, tracker, plan, b, image_size, layout, warm=i == 0)
                             for i, b in enumerate(batch_sizes)]


def _materialise(model: nn.Module) -> None:
    """Replace the meta parameters and buffers with fake tensors of the same shapes, dtypes and
    strides (cheaper than `to_empty`, which runs two ops per tensor)."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                fake = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype)
                module._parameters[name] = nn.Parameter(fake, requires_grad=p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = torch.empty_strided(b.shape, b.stride(), dtype=b.dtype)


def _record(model: nn.Module, opt: torch.optim.Optimizer | None, tracker: _LiveBytes, plan: PrecisionPlan,
            batch_size: int, image_size: int, layout: torch.memory_format, warm: bool) -> _Traced:
    """Record one step at `batch_size` (after a warm step if `warm` and training)."""
    x = torch.empty(batch_size, 3, image_size, image_size, dtype=plan.param_dtype).contiguous(memory_format=layout)
    y = torch.zeros(batch_size, dtype=torch.long)
    cast = torch.autocast("cpu", dtype=plan.autocast_dtype) if plan.autocast_dtype else contextlib.nullcontext()
    if opt is not None and warm:
        _step(model, opt, tracker, x, y, cast)
        if not any(group.get("capturable") or group.get("fused") for group in opt.param_groups):
            for state in opt.state.values():
                if isinstance(state.get("step"), torch.Tensor):
                    tracker.forget(state["step"])
    tracker.trace, tracker.recording = [], True
    start = tracker.ops
    forward_end = _step(model, opt, tracker, x, y, cast)
    tracker.recording = False
    return _Traced(tracker.trace, start, forward_end, _known(tracker, model, x, y, opt))


def _step(model: nn.Module, opt: torch.optim.Optimizer | None, tracker: _LiveBytes, x: torch.Tensor,
          y: torch.Tensor, cast: contextlib.AbstractContextManager) -> int:
    """One step as bench.execute.step.make_step runs it (no GradScaler); returns the op count
    when the forward ended."""
    tracker.phase = "forward"
    if opt is None:
        with torch.inference_mode(), cast:
            model(x)
        return tracker.ops
    opt.zero_grad(set_to_none=True)
    with cast:
        loss = F.cross_entropy(model(x), y)
    forward_end = tracker.ops
    tracker.phase = "backward"
    loss.backward()
    del loss
    tracker.phase = "optimizer"
    opt.step()
    return forward_end


def _known(tracker: _LiveBytes, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
           opt: torch.optim.Optimizer | None) -> dict[str, set[int]]:
    """Serials of the storages whose category the model and optimizer tell (0-dim `step` counters excluded)."""
    return {
        "weights": {tracker.serial(t) for t in [*model.parameters(), *model.buffers()]},
        "batch": {tracker.serial(x), tracker.serial(y)},
        "gradients": {tracker.serial(p.grad) for p in model.parameters() if p.grad is not None},
        "optimizer_state": {tracker.serial(t) for state in (opt.state.values() if opt else ())
                            for t in state.values() if isinstance(t, torch.Tensor) and t.dim() > 0},
    }


def predict_step_memory(arch: str, impl: str, image_size: int, batch_size: int, precision: str, mode: str,
                        optimizer: str = DEFAULT_OPTIMIZER, channels_last: bool = False,
                        capability: tuple[int, int] = DEFAULT_CAPABILITY) -> MemoryPrediction:
    """Predict the CUDA memory of one steady-state step of an eager cell (see the module docstring).

    `optimizer` is the cell's choice (bench.models.training.OPTIMIZERS); `capability` the GPU's,
    which sizes the cuBLAS workspaces. UsageError for names or numbers that do not exist.
    """
    _check(arch, impl, image_size, batch_size, precision, mode)
    tracker, (step,) = _trace(arch, impl, image_size, (batch_size,), precision, mode, optimizer, channels_last)
    k = max(range(len(step.trace)), key=lambda i: step.trace[i][1])
    category = {serial: name for name, serials in step.known.items() for serial in serials}
    at_peak = dict.fromkeys(CATEGORIES, 0)
    workspaces = cublas_workspaces(mode, capability)
    at_peak["workspace"] = sum(workspaces)
    activations = 0
    slack = sum(SPLIT_MIN for size in workspaces if size > SPLIT_MIN)
    for serial, size in enumerate(tracker.sizes):
        name = category.get(serial)
        if (name is None and mode != "inference"
                and step.start <= tracker.born[serial] < step.forward_end <= tracker.died[serial]):
            name = "activations"
            activations += size
        if tracker.born[serial] <= step.start + k < tracker.died[serial]:
            at_peak[name or "transient"] += size
            slack += SPLIT_MIN if size > SPLIT_MIN else 0
    total = {name: sum(tracker.sizes[s] for s in serials) for name, serials in step.known.items()}
    return MemoryPrediction(peak=step.trace[k][1] + at_peak["workspace"], peak_phase=step.trace[k][0],
                            at_peak=at_peak, weights=total["weights"], gradients=total["gradients"],
                            optimizer_state=total["optimizer_state"], activations=activations,
                            workspace=at_peak["workspace"], slack=slack)


class StepCurve(NamedTuple):
    """Live tensor bytes after each op of a step as `fixed + per_image * batch` (the cuBLAS
    workspaces, which depend on the GPU, come on top: `predict_cell_peak`, `max_batch`)."""

    fixed: tuple[float, ...]
    per_image: tuple[float, ...]

    def peak(self, batch_size: int) -> int:
        """Predicted peak bytes of tensors at a batch size."""
        return round(max(a + b * batch_size for a, b in zip(self.fixed, self.per_image)))

    def max_batch(self, capacity: int) -> int:
        """The largest batch whose peak stays within `capacity` bytes (0 if none does)."""
        limit = math.inf
        for a, b in zip(self.fixed, self.per_image):
            if b > 0:
                limit = min(limit, math.floor((capacity - a) / b))
            elif a > capacity:
                return 0
        return max(int(limit), 0)


_CURVES: dict[tuple, StepCurve] = {}


def step_curve(arch: str, impl: str, image_size: int, precision: str, mode: str,
               optimizer: str = DEFAULT_OPTIMIZER, channels_last: bool = False) -> StepCurve:
    """The step's live bytes as an affine function of the batch, from traces at `CURVE_BATCHES`,
    cached per process by configuration."""
    _check(arch, impl, image_size, 1, precision, mode)
    key = (arch, impl, image_size, precision, mode, optimizer, channels_last)
    if key not in _CURVES:
        traces = [step.trace for step in
                  _trace(arch, impl, image_size, CURVE_BATCHES, precision, mode, optimizer, channels_last)[1]]
        if [p for p, _ in traces[0]] != [p for p, _ in traces[1]]:
            raise RuntimeError(f"{arch} {impl}: the step runs different ops at batches {CURVE_BATCHES}")
        (b1, b2), (t1, t2) = CURVE_BATCHES, traces
        slopes = tuple((v2 - v1) / (b2 - b1) for (_, v1), (_, v2) in zip(t1, t2))
        fixed = tuple(v1 - s * b1 for (_, v1), s in zip(t1, slopes))
        _CURVES[key] = StepCurve(fixed, slopes)
    return _CURVES[key]


def predict_cell_peak(cell: Cell) -> int:
    """Predicted `torch.cuda.max_memory_allocated` of one steady-state step of `cell`, in bytes.

    Cheap after the first cell of a configuration (arch, impl, image size, precision, mode,
    optimizer, layout): it reads the cached `step_curve`. The compile mode of the cell is ignored
    (the prediction is the eager program on CUDA); its device gives the GPU that sizes the cuBLAS
    workspaces when it is a CUDA device present here, else `DEFAULT_CAPABILITY` is assumed.
    """
    curve = step_curve(cell.arch, cell.impl, cell.image_size, cell.precision, cell.mode,
                       cell.optimizer, cell.channels_last)
    capability = cuda_capability(cell.device) or DEFAULT_CAPABILITY
    return curve.peak(cell.batch_size) + sum(cublas_workspaces(cell.mode, capability))


def max_batch(arch: str, impl: str, image_size: int, precision: str, mode: str, gpu_mem: int,
              optimizer: str = DEFAULT_OPTIMIZER, channels_last: bool = False,
              capability: tuple[int, int] = DEFAULT_CAPABILITY) -> int:
    """Largest batch predicted to fit a card of `gpu_mem` bytes and compute `capability`, with
    `CUDA_CONTEXT_BYTES` and the step's cuBLAS workspaces kept aside."""
    return step_curve(arch, impl, image_size, precision, mode, optimizer, channels_last).max_batch(
        gpu_mem - CUDA_CONTEXT_BYTES - sum(cublas_workspaces(mode, capability)))


def card_batches(arch: str, impl: str, image_size: int, precision: str, mode: str) -> dict[str, int]:
    """The largest batch predicted to fit each card of `CARDS`, with the family's optimizer."""
    return {card: max_batch(arch, impl, image_size, precision, mode, mem) for card, mem in CARDS}
