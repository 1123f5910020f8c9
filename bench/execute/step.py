"""Build the callable that one timed iteration runs, for each mode.

- inference: `eval()` and `torch.inference_mode`, forward only, eager and compiled alike. Inductor
  freezes when grad mode is off at compile time (`torch.is_grad_enabled()`, False under both
  inference_mode and no_grad); on torch 2.14 a frozen model compiled under inference_mode runs the
  freeze pass and is as fast as one compiled under no_grad, so freezing cells keep the
  inference_mode of every other inference cell and the eager baseline.
- train: `train()`, forward + cross-entropy on fixed random labels + backward + optimizer step
  over every parameter, with the cell's optimizer (bench.models.training.make_optimizer).
- finetune: the transfer-learning setup (bench.models.training.prepare_mode): only the head
  trains. Because no backbone parameter requires grad and the input does not either, autograd
  records nothing until the head: the backbone runs without building a graph, with the same
  outputs it would give inside one.

Gradients are dropped (`set_to_none`) at the start of each step, as a modern training loop does.
amp-fp16 steps use a GradScaler as real fp16 training must (its inf check costs one host sync per
step; timm's benchmark.py uses none). The scaler starts at 2**16 and halves on every step whose
gradients overflow, and such a step skips the optimizer (a faster step): `Step.settle` runs steps
until one is applied, and `Step.skipped_steps` counts the skipped ones, so the timed loop's can be
reported. fp16/bf16 cast weights and train them directly.

torch.compile wraps the model only (the loss and optimizer stay eager), with `dynamic=False`: every
cell has one fixed shape, so a shape change must recompile (counted) rather than turn dynamic.
CUDA-graph modes (`uses_cudagraphs`) mark a step boundary each step; the `-freeze` modes set
Inductor's freezing switch for the cell (`inductor_freezing`). `cold_compile_caches` gives a
compiled cell empty Inductor/Triton caches, so its compile time does not depend on what compiled
before it; Inductor's compile pool is up before a cell compiles (`ready_compile_pool`), so no
cell's `compile_s` holds its start-up. `watch_compilation` follows dynamo's compile callbacks: when
the process is compiling (for the runner's timeout) and how long CUDA graphs took to record
(`cudagraph_recording_s`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bench.config.cell import split_compile
from bench.config.precision import PrecisionPlan, autocast

# Most steps `Step.settle` runs: 30 halvings take the scale from 2**16 to 2**-14; overflowing still,
# the gradients are inf unscaled, and the skipped steps are left for `amp_skipped_steps` to show.
SETTLE_MAX_STEPS = 30
# Longest wait for Inductor's compile pool to start (Inductor's own default); past it the cell fails.
POOL_READY_TIMEOUT_S = 120.0


def uses_cudagraphs(compile_mode: str, device: torch.device) -> bool:
    """Whether a cell replays CUDA graphs: reduce-overhead and max-autotune (frozen or not) on CUDA;
    max-autotune-no-cudagraphs is max-autotune without them."""
    return device.type == "cuda" and split_compile(compile_mode)[0] in ("reduce-overhead", "max-autotune")


def compile_model(model: nn.Module, compile_mode: str, device: torch.device) -> nn.Module:
    """Wrap in torch.compile (static shapes) with a fresh dynamo state (stale caches from earlier
    cells in the same process would count against the recompile limit); "none" returns the model
    unchanged. The reset clears dynamo's callbacks, so `watch_compilation` registers ours again.
    Inductor's compile pool is ready before this returns (`ready_compile_pool`), so the first step,
    which `compile_s` times, compiles as every later cell does."""
    if compile_mode == "none":
        return model
    torch._dynamo.reset()
    watch_compilation()
    ready_compile_pool(device)
    mode, _ = split_compile(compile_mode)
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)


def ready_compile_pool(device: torch.device, timeout_s: float = POOL_READY_TIMEOUT_S) -> None:
    """Start Inductor's compile subprocess pool, and wait until it takes jobs, before a cell on
    `device` compiles; returns at once when it is up already.

    Inductor compiles Triton kernels (CUDA) in that pool, and until the pool says it is ready, it
    compiles them one by one in this process: started by the first compilation, as Inductor does
    by itself, the pool would leave the first compiled cell of each worker with a `compile_s` several
    times the others'. Ready here, start-up is no cell's compile time (the row's `overhead_s` holds
    it). `maybe_warm_pool` is Inductor's own start-up (the pool process, and its workers woken, also
    after Inductor quiesced them when idle); `wait_pool_ready` waits for Inductor's readiness flag, so
    jobs go to the pool from the first kernel; and one job run there waits for its workers. The pool
    outlives `cold_compile_caches` (it clears caches, not the pool) and `torch._dynamo.reset()`.
    CPU cells compile C++ on threads, with no pool: nothing to do, and eager cells never get here.
    With one compile thread (TORCHINDUCTOR_COMPILE_THREADS=1) Inductor uses no pool either.
    """
    if device.type != "cuda":
        return
    from torch._inductor import async_compile

    AsyncCompile = async_compile.AsyncCompile
    getattr(async_compile, "maybe_warm_pool", AsyncCompile.warm_pool)()  # the latter where torch lacks the former
    AsyncCompile.wait_pool_ready(timeout_s)
    if AsyncCompile.use_process_pool():
        AsyncCompile.process_pool().submit(os.getpid).result(timeout=timeout_s)


@contextlib.contextmanager
def cold_compile_caches(compile_mode: str) -> Iterator[None]:
    """A compiled cell's Inductor and Triton caches: empty on entry, deleted on exit.

    Inductor's on-disk caches (FX graphs, AOTAutograd, autotuning, Triton kernels under
    TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR) would let a cell reuse what an earlier round or an
    identical graph (rv vs torchvision ResNet) compiled, and its in-memory caches
    (`torch._inductor.utils.clear_caches`) the kernels loaded in this process; so the directories
    point at a new temporary one and the memory caches are cleared, for a cold `compile_s` every time.
    Inductor passes both variables to its compile subprocesses with every job. Eager cells: no-op.
    """
    if compile_mode == "none":
        yield
        return
    from torch._inductor.utils import clear_caches

    directory = tempfile.mkdtemp(prefix="rvbench-inductor-")
    env = {"TORCHINDUCTOR_CACHE_DIR": directory, "TRITON_CACHE_DIR": os.path.join(directory, "triton")}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    clear_caches()
    try:
        yield
    finally:
        clear_caches()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(directory, ignore_errors=True)


_compile_listeners: list[Callable[[bool], None]] = []
_recording = {"total_s": 0.0, "since": 0.0}


def on_compilation(listener: Callable[[bool], None]) -> None:
    """Call `listener(True)` when this process starts compiling (dynamo tracing a frame, or a lazily
    compiled backward) and `listener(False)` when it stops; CUDA-graph recording is not compiling."""
    _compile_listeners.append(listener)


def cudagraph_recording_s() -> float:
    """Seconds this process has spent recording CUDA graphs so far (cudagraph trees' record phase,
    host time, from the synchronize before capture to the recorded graph), read before and after a
    cell like `graphs_compiled`."""
    return _recording["total_s"]


def _started(args) -> None:
    from torch._dynamo.callback import CallbackTrigger

    if args.callback_trigger == CallbackTrigger.CUDAGRAPH_RECORDING:
        _recording["since"] = time.perf_counter()
    else:
        for listener in _compile_listeners:
            listener(True)


def _ended(args) -> None:
    from torch._dynamo.callback import CallbackTrigger

    if args.callback_trigger == CallbackTrigger.CUDAGRAPH_RECORDING:
        _recording["total_s"] += time.perf_counter() - _recording["since"]
    else:
        for listener in _compile_listeners:
            listener(False)


def watch_compilation() -> None:
    """Register this module's callbacks with dynamo's callback handler, unless they are there.

    torch._dynamo.callback_handler runs start callbacks when the outermost of (possibly nested)
    compilation, lazy-backward compilation or CUDA-graph recording begins, and end callbacks with
    the same arguments when it ends; `torch._dynamo.reset()` clears them, so call this after a reset.
    """
    from torch._dynamo.callback import callback_handler

    if _started not in callback_handler.start_callbacks:
        callback_handler.register_start_callback(_started)
        callback_handler.register_end_callback(_ended)


def inductor_freezing(compile_mode: str) -> contextlib.AbstractContextManager:
    """Inductor's process-global freezing switch set to what a compiled cell's mode asks for, and
    restored on exit (the worker measures many cells in one process).

    It must hold for the cell's whole life, not just the `torch.compile` call: dynamo reads it
    while tracing (parameters become static inputs) and Inductor while compiling, at the first step
    and at any recompilation. `torch.compile(options=...)` would reach Inductor only. Plain compile
    cells set it off, so TORCHINDUCTOR_FREEZING=1 cannot turn them into frozen ones. Eager cells
    leave it alone (importing Inductor's config costs seconds).
    """
    if compile_mode == "none":
        return contextlib.nullcontext()
    from torch._inductor import config

    return config.patch(freezing=split_compile(compile_mode)[1])


def freezing_enabled(compile_mode: str) -> bool:
    """Whether a cell compiled in `compile_mode` freezes: Inductor's switch as it stands now, for the
    results row (read inside `inductor_freezing`, so it is the state the cell ran with)."""
    if compile_mode == "none":
        return False
    from torch._inductor import config

    return bool(config.freezing)


def graphs_compiled() -> int:
    """Dynamo graphs compiled so far in this process (a recompilation adds one).

    `counters["stats"]["unique_graphs"]` is bumped once per compiled graph on every torch >= 2.0.
    """
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class Step:
    """One timed iteration (call it), and what the step counts about itself.

    `cudagraphs`: whether each call marks a CUDA-graph step boundary. For amp-fp16 training (a
    GradScaler), the optimizer steps the scaler skipped are counted with an optimizer step hook,
    at no cost: the scaler already synchronises to decide.
    """

    def __init__(self, run: Callable[[], None], cudagraphs: bool,
                 optimizer: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler | None) -> None:
        self._run = run
        self.cudagraphs = cudagraphs
        self._scaler = scaler
        self._scaled = scaler is not None
        self._attempted = 0  # scaler steps tried
        self._applied = 0  # optimizer steps that ran
        self._calling = False  # another Step on the same optimizer (`eager_step`) must not count here
        if self._scaled:
            optimizer.register_step_post_hook(self._count_applied)

    def _count_applied(self, *_: object) -> None:
        self._applied += self._calling

    def __call__(self) -> None:
        self._calling = True
        try:
            self._run()
        finally:
            self._calling = False
        self._attempted += 1

    def skipped_steps(self) -> int | None:
        """Optimizer steps the GradScaler has skipped so far (gradients with inf/NaN); None without a scaler."""
        return self._attempted - self._applied if self._scaled else None

    def grad_scale(self) -> float | None:
        """The GradScaler's current scale (reading it synchronises the device); None without a scaler."""
        return None if self._scaler is None else float(self._scaler.get_scale())

    def settle(self) -> int:
        """Run steps until the GradScaler applies one (its scale no longer overflows), at most
        SETTLE_MAX_STEPS; returns the steps run (0 without a scaler, or once one was applied)."""
        ran = 0
        while self._scaled and self._applied == 0 and ran < SETTLE_MAX_STEPS:
            self()
            ran += 1
        return ran


def make_step(model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor,
              plan: PrecisionPlan, optimizer: torch.optim.Optimizer | None,
              cudagraph_steps: bool) -> Step:
    """The step: one forward (inference) or one full optimisation step (train/finetune)."""
    device = x.device

    def begin() -> None:
        if cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()

    if mode == "inference":
        def infer() -> None:
            begin()
            with torch.inference_mode(), autocast(plan, device):
                model(x)

        return Step(infer, cudagraph_steps, None, None)

    assert optimizer is not None, "train and finetune steps need an optimizer"
    scaler = torch.amp.GradScaler(device.type) if plan.autocast_dtype == torch.float16 else None

    def train_step() -> None:
        begin()
        optimizer.zero_grad(set_to_none=True)
        with autocast(plan, device):
            loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    return Step(train_step, cudagraph_steps, optimizer, scaler)
