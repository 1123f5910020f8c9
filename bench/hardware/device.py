"""The one place devices are named, resolved and checked: the CLI, the sweep, cell set-up and the
tests all go through these functions, so a device means the same thing everywhere.

A device is "cpu" or "cuda:N". `resolve_device` turns what a user typed ("auto", "cuda") into one
that exists here; `validate_device` checks the spelling only (a cell may be written on one machine
and run on another); `check_support` refuses what the device kind can never run (fp16 on a CPU);
`check_capability` asks the CUDA device itself (is it there, has it bf16/TF32 tensor cores);
`cuda_capability` reads its compute capability where it is present. `visible_device` names a device
for a child process's CUDA_VISIBLE_DEVICES, and `current_device` makes a device the one torch's
device-less calls act on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from bench.errors import UsageError
from bench.precisions import CUDA_ONLY_PRECISIONS, PRECISIONS
from bench.precisions import precision as precision_spec

# Compile modes that need CUDA (precisions say so in bench.precisions): reduce-overhead means CUDA graphs.
CUDA_ONLY_COMPILE = ("reduce-overhead",)


def validate_device(device: str) -> None:
    """Accept "cpu" or "cuda:N" (N >= 0); a bare "cuda" must be resolved to an index first."""
    if device == "cpu":
        return
    if device.startswith("cuda:") and device[5:].isdigit():
        return
    raise UsageError(f"unknown device {device!r}; valid: cpu, cuda:N (N = GPU index)")


def cuda_count() -> int:
    """CUDA devices visible to this process (0 without a driver or a CUDA build of torch)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cuda_capability(device: str) -> tuple[int, int] | None:
    """The compute capability of CUDA device `device` ("cuda:N") when it is present here; None for
    the CPU and for a device this machine lacks (a cell may be written on one machine, run on another)."""
    if device == "cpu":
        return None
    index = int(device.split(":")[1])
    if index >= cuda_count():
        return None
    import torch

    return torch.cuda.get_device_capability(index)


def resolve_device(device: str) -> str:
    """Turn "auto", "cuda" or "cuda:N" into a concrete device that exists here, or raise UsageError."""
    n_gpus = cuda_count()
    if device == "auto":
        return "cuda:0" if n_gpus else "cpu"
    if device == "cuda":
        device = "cuda:0"
    validate_device(device)
    if device != "cpu" and int(device[5:]) >= n_gpus:
        have = f"GPUs 0..{n_gpus - 1}" if n_gpus else "no GPU"
        raise UsageError(f"device {device!r} does not exist: this machine has {have}; valid: cpu"
                         + "".join(f", cuda:{i}" for i in range(n_gpus)))
    return device


def check_support(device: str, precision: str, compile_mode: str, compile_modes: tuple[str, ...],
                  allowed: tuple[str, ...] = PRECISIONS) -> None:
    """UsageError when the device kind can never run this precision or compile mode.

    `compile_modes` and the `allowed` precisions are the valid choices, so the message can list the ones that run.
    """
    if device != "cpu":
        return
    if precision in CUDA_ONLY_PRECISIONS:
        raise UsageError(
            f"precision {precision!r} needs CUDA; on cpu use one of: "
            + ", ".join(p for p in allowed if p not in CUDA_ONLY_PRECISIONS)
        )
    if compile_mode in CUDA_ONLY_COMPILE:
        raise UsageError(
            f"compile mode {compile_mode!r} uses CUDA graphs and needs CUDA; on cpu use one of: "
            + ", ".join(c for c in compile_modes if c not in CUDA_ONLY_COMPILE)
        )


def check_capability(device: str, precision: str, allowed: tuple[str, ...] = PRECISIONS) -> None:
    """UsageError when a CUDA device is not there or its hardware cannot run the precision.

    bf16 and TF32 tensor cores start with Ampere (sm80); older GPUs emulate bf16 and ignore TF32,
    so such a row would be mislabelled (`Precision.needs_ampere`). The message suggests the `allowed`
    precisions the device can run. A no-op for the CPU.
    """
    if device == "cpu":
        return
    import torch

    count = cuda_count()
    index = int(device.split(":")[1])
    if index >= count:
        raise UsageError(f"device {device} is not available; this machine has {count} CUDA device(s)")
    capability = torch.cuda.get_device_capability(index)
    if precision_spec(precision).needs_ampere and capability < (8, 0):
        raise UsageError(
            f"{torch.cuda.get_device_name(index)} (sm{''.join(map(str, capability))}) has no {precision} tensor cores "
            f"(needs sm80+); use one of: {', '.join(p for p in allowed if not precision_spec(p).needs_ampere)}"
        )


def visible_device(device: str, environ: Mapping[str, str] = os.environ) -> str:
    """What a child's CUDA_VISIBLE_DEVICES says to show it only this process's `device` ("cuda:N"),
    which the child then sees as cuda:0: the Nth entry of this process's own CUDA_VISIBLE_DEVICES (an
    index, a GPU UUID or a MIG id), or N when it sets none. The child inherits CUDA_DEVICE_ORDER, so
    both number the GPUs alike."""
    validate_device(device)
    if device == "cpu":
        raise UsageError("visible_device: the CPU is not a CUDA device")
    index = int(device[5:])
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(index)
    entries = [e.strip() for e in visible.split(",")]
    if index >= len(entries):
        raise UsageError(f"device {device} is not among CUDA_VISIBLE_DEVICES={visible}")
    return entries[index]


@contextlib.contextmanager
def current_device(device: str) -> Iterator[None]:
    """`device` as torch's current CUDA device while the block runs, the previous one after.

    Calls that take no device act on the current one: torch.cuda.synchronize() in CUDA-graph
    recording, torch.utils.benchmark.Timer's synchronisation, a new stream. Without this, a cell on
    cuda:1 would have them synchronise (and open a context on) cuda:0. A no-op for the CPU.
    """
    if device == "cpu":
        yield
        return
    import torch

    with torch.cuda.device(torch.device(device)):
        yield
