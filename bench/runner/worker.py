"""Worker process: measures cells sent by the runner, one at a time, on one device.

Run as `python -m bench.runner.worker`. Protocol: one JSON request per line on stdin, one JSON reply
per line on the original stdout (library prints are redirected to stderr so they cannot corrupt
the protocol). After start-up the worker says {"ready": true}. Requests:
    {"op": "env", "device": D}                        -> {"env": {...}}
    {"op": "cell", "cell": {...}, "timing": {...}}    -> {"status", "message", "result", "samples_ms"}
    {"op": "profile", "cell": {...}, "out_dir": P}    -> {"status", "message"}
While a request runs, the worker also writes {"compiling": true} when it starts compiling and
{"compiling": false} when it stops (bench.execute.step.on_compilation), so the runner can keep
compilation off a cell's running time (see Runner). Each cell builds its model fresh, and a compiled
cell compiles with empty caches (`cold_compile_caches`), so nothing (weights, compile caches) leaks
between cells.
A crash of this process only costs the cell in flight: the runner records it and restarts us.
A CUDA error that poisons the context (illegal memory access, device-side assert) fails every
later CUDA call of the process, so after replying to such a cell the reply carries
"worker_exits": true and the worker exits; the runner starts a fresh one for the next cell.
An OOM does not poison the context (its memory is released), so the worker carries on.
What outlives a request (modules, caches) is frozen out of the garbage collector (`gc.freeze`, after
a collection, so no garbage is frozen with it) after start-up and after every request: a cell's release collects garbage so that its model's memory is
gone before the next cell, and without the freeze each such full collection walks every object torch
and the model libraries ever made (about 0.2 s a cell on a CPU, measured); with it, only the cell's own.
The runner starts the worker in its own session and kills its whole process group, so Inductor's
compile subprocesses die with it; if the runner itself dies, the worker kills its group too.
A slot with cores of its own (bench.runner.runner.Slot) starts the worker with RVBENCH_WORKER_CPUS:
the worker pins itself to them before it imports torch (`pin_cpus`), so torch's threads, Inductor's
compile subprocesses and everything else it starts stay on them, and torch's thread count is theirs.

Test hook: RVBENCH_FAULT="KIND:SUBSTRING[@MINBATCH];..." injects a failure into every cell whose
label contains SUBSTRING (and whose batch size is >= MINBATCH, if given). KIND is one of
    crash  the worker kills itself with SIGKILL (a hard crash)
    oom    raises torch.cuda.OutOfMemoryError
    error  raises RuntimeError
    hang   starts a child process (as Inductor starts its compile workers), logs its pid, sleeps forever
    compile  spends FAULT_COMPILE_S in a simulated compilation (through dynamo's compile callbacks)
             before measuring the cell as usual
    cudaerror  raises the RuntimeError of an illegal memory access (a sticky CUDA error)
Only this module reads the variable; it exists for the runner's tests.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import IO, TYPE_CHECKING

from bench.errors import ExitCode, UsageError
from bench.hardware.topology import parse_cpulist

if TYPE_CHECKING:
    from bench.config.cell import Cell

# The CPUs the worker pins itself to (a list such as "0-7,64-71"), set by its runner for a slot of its own.
CPUS_ENV = "RVBENCH_WORKER_CPUS"
FAULT_ENV = "RVBENCH_FAULT"
FAULT_KINDS = ("crash", "oom", "error", "hang", "cudaerror", "compile")
FAULT_COMPILE_S = 11.0
PARENT_POLL_S = 1.0
# Messages of CUDA errors after which the process's CUDA context is unusable.
STICKY_CUDA_ERRORS = ("cuda error", "illegal memory access", "device-side assert")
# Messages of an allocation that failed, lower-cased, wherever it failed. Besides the caching
# allocator's "out of memory" (and a CPU allocator's errno text): torch's cuDNN convolution skips each
# algorithm whose workspace it cannot allocate and, when none is left, says it found no valid one;
# cuBLAS fails to allocate its handle or workspace with CUBLAS_STATUS_ALLOC_FAILED (a RuntimeError
# "CUDA error: ...", yet the context is fine). Both are how an over-large batch ends on a full card.
OOM_MARKERS = ("out of memory", "can't allocate memory", "unable to find a valid cudnn algorithm",
               "cublas_status_alloc_failed")
TRACEBACK_CHARS = 2000


def _injected_fault(cell: Cell) -> str | None:
    """The fault kind RVBENCH_FAULT asks for on this cell, if any."""
    for spec in filter(None, os.environ.get(FAULT_ENV, "").split(";")):
        kind, _, target = spec.partition(":")
        target, _, min_batch = target.partition("@")
        if kind not in FAULT_KINDS:
            raise UsageError(f"{FAULT_ENV}: unknown fault {kind!r}; valid: {', '.join(FAULT_KINDS)}")
        if target in cell.label() and cell.batch_size >= int(min_batch or 1):
            return kind
    return None


def _inject(kind: str, cell: Cell) -> None:
    import torch

    if kind == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "oom":
        raise torch.cuda.OutOfMemoryError(f"injected: CUDA out of memory (batch size {cell.batch_size})")
    if kind == "error":
        raise RuntimeError(f"injected error in {cell.label()}")
    if kind == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10**6)"])
        print(f"worker {os.getpid()}: injected hang, child {child.pid}", file=sys.stderr, flush=True)
        time.sleep(10**6)
    if kind == "cudaerror":
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    if kind == "compile":
        from torch._dynamo.callback import CallbackTrigger, callback_handler

        from bench.execute.step import watch_compilation

        watch_compilation()
        with callback_handler.install_callbacks(CallbackTrigger.DYNAMO, "injected"):
            time.sleep(FAULT_COMPILE_S)


def is_oom(exc: BaseException) -> bool:
    """Out of memory on GPU (OutOfMemoryError, or a library's failed allocation: `OOM_MARKERS`) or
    CPU (allocator failure). The max-batch search (bench.runner.runner) stops at such a batch as "oom"."""
    import torch

    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or any(marker in text for marker in OOM_MARKERS)


def is_sticky_cuda_error(exc: BaseException) -> bool:
    """A CUDA error that leaves the context unusable (torch.AcceleratorError where torch has it)."""
    import torch

    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and not is_oom(exc) and any(s in text for s in STICKY_CUDA_ERRORS)


def _free_memory() -> None:
    """Release what a failed cell left behind so the next cell starts clean."""
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _short_traceback(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return text if len(text) <= TRACEBACK_CHARS else "..." + text[-TRACEBACK_CHARS:]


def measure(cell: Cell, timing: dict) -> dict:
    """Measure one cell and classify the outcome as ok / oom / skipped / error.

    A backend row whose logits fail parity stays ok (its times are the backend's, measured as any other) with
    parity_ok false and its message "parity_fail: ..." (bench.execute.backends.parity_message)."""
    try:
        fault = _injected_fault(cell)
        if fault:
            _inject(fault, cell)
        from bench.config.sweep import TimingConfig
        from bench.execute.step import cold_compile_caches
        from bench.measure.cell import measure_cell

        with cold_compile_caches(cell.compile):
            result = measure_cell(cell, TimingConfig(**timing))
    except UsageError as exc:
        return {"status": "skipped", "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row, the sweep goes on
        failure = _classify(exc, cell)
    else:
        from bench.execute.backends import parity_message

        samples = result.pop("samples_ms", [])
        return {"status": "ok", "message": parity_message(result, cell.precision), "result": result,
                "samples_ms": samples}
    # Outside the except block, so the traceback (and the tensors its frames hold) is gone. A
    # poisoned CUDA context would fail even this; the process exits instead.
    if not failure.get("worker_exits"):
        _free_memory()
    return failure


def _classify(exc: Exception, cell: Cell) -> dict:
    if is_oom(exc):
        first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        return {"status": "oom", "message": f"out of memory at batch size {cell.batch_size}: {first_line}"}
    return _error_reply(exc)


def _error_reply(exc: Exception) -> dict:
    """Status error with the traceback; flags a sticky CUDA error so the worker exits after replying."""
    reply = {"status": "error", "message": _short_traceback(exc)}
    if is_sticky_cuda_error(exc):
        reply["worker_exits"] = True
    return reply


def profile(cell: Cell, out_dir: str) -> dict:
    """Profile one cell into out_dir with bench.profiling.profile (engineer G's module)."""
    from bench.profiling.profile import profile_cell

    try:
        profile_cell(cell, Path(out_dir))
    except Exception as exc:  # noqa: BLE001 - a failed profile must not end the run
        return _error_reply(exc)
    return {"status": "ok", "message": ""}


def handle(request: dict) -> dict:
    """Dispatch one request."""
    from bench.config.cell import Cell

    if request["op"] == "env":
        from bench.measure.env import collect_env

        return {"env": collect_env(request["device"])}
    cell = Cell(**request["cell"])
    if request["op"] == "profile":
        return profile(cell, request["out_dir"])
    return measure(cell, request["timing"])


def _send(replies: IO[str], message: dict) -> None:
    replies.write(json.dumps(message, default=str) + "\n")
    replies.flush()


def exit_with_parent(parent: int) -> None:
    """Kill this process's group (itself and its compile subprocesses), if it leads one, once its parent
    is gone: a runner (or torchrun) killed with SIGKILL cannot kill us, and a hung cell never reads the
    closed stdin. Run it in a daemon thread; the sweep worker and the DDP ranks of `rvbench scale` do."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    if os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os._exit(ExitCode.FAILED)


def pin_cpus() -> None:
    """Run this process, and all it starts, on the CPUs RVBENCH_WORKER_CPUS lists (none: as started).

    Called before torch is imported: OpenMP sizes torch's thread pool from the CPUs it may use."""
    cpus = os.environ.get(CPUS_ENV)
    if cpus:
        os.sched_setaffinity(0, parse_cpulist(cpus))


def main() -> None:
    """Serve requests until stdin closes. Ctrl-C is the runner's to handle, not ours."""
    pin_cpus()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # Imported before "ready" so start-up is not billed to a cell's timeout.
    from bench.execute.step import on_compilation

    on_compilation(lambda compiling: _send(replies, {"compiling": compiling}))
    print(f"worker {os.getpid()} started", file=sys.stderr, flush=True)
    gc.collect()
    gc.freeze()
    _send(replies, {"ready": True})
    for line in sys.stdin:
        reply = handle(json.loads(line))
        gc.collect()  # what the request left in cycles (a failed profile's traceback) must not be frozen for good
        gc.freeze()
        if reply.get("worker_exits"):
            # Logged before the reply: once the runner reads the reply it may kill us at any moment.
            print(f"worker {os.getpid()}: sticky CUDA error, exiting for a fresh context", file=sys.stderr, flush=True)
        _send(replies, reply)
        if reply.get("worker_exits"):
            os._exit(ExitCode.FAILED)


if __name__ == "__main__":
    main()
