"""Shared set-up of the benchmark suite and the ratio gates: the CI model set and its workloads.

The CI set is small enough for two shared CPU cores: four archs at 64 px, batch 2, fp32, one
torch thread on CPU. ViTs are built for that size (their position embedding follows
`image_size`), so every impl runs the same network on the same input. A workload is one
synchronised step of the harness's own step code (`bench.execute.step`), so the gates time exactly what
a sweep times. The `--device` option (or $RVBENCH_DEVICE) is defined in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch

from bench.config.cell import Cell
from bench.counting.flops import count_params
from bench.execute.prepare import flops_per_image, prepared_cell
from bench.measure.env import collect_env
from bench.models import ModelEntry, list_entries

CI_IMAGE_SIZE: dict[str, int] = {
    "resnet18": 64,
    "resnet50": 64,
    "vit_tiny_patch16_224": 64,
    "vit_small_patch16_224": 64,
}
CI_BATCH = 2
CI_MODES = ("inference", "train")
# (arch, mode) pairs with a ratio gate: every CI arch's forward; a train step costs about five
# forwards, so within CI's time budget only the smallest ResNet and ViT gate one.
CI_GATES = [(arch, "inference") for arch in CI_IMAGE_SIZE] + [
    ("resnet18", "train"),
    ("vit_tiny_patch16_224", "train"),
]
CI_PRECISION = "fp32"
# Torch threads for every CPU workload here. On shared CI cores a multi-threaded step stalls
# whenever another job holds a core: 2-thread ViT-Small steps measured 25 ms and 950 ms minutes
# apart, for every impl alike. One thread gives times that mean something, and lets the gates
# time in process CPU time.
CPU_THREADS = 1

# env columns that change from run to run; kept out of machine_info, which pytest-benchmark
# compares against the baseline's (the commit is in its own commit_info).
_PER_RUN_ENV = ("env_git_commit", "env_git_dirty", "env_timestamp")


@dataclass(frozen=True)
class Workload:
    """One model in one mode, ready to step."""

    label: str  # e.g. "resnet50 train 64px bs2 fp32 cpu"
    step: Callable[[], None]  # one full step; returns when the device is done
    info: dict[str, object]  # what the benchmark records in extra_info


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise `ci_entry` (each registered impl of each CI arch) x `ci_mode`, and `ci_gate`."""
    if "ci_entry" in metafunc.fixturenames:
        entries = list_entries(archs=list(CI_IMAGE_SIZE))
        metafunc.parametrize("ci_entry", entries, ids=[f"{e.arch}-{e.impl}" for e in entries])
    if "ci_mode" in metafunc.fixturenames:
        metafunc.parametrize("ci_mode", CI_MODES)
    if "ci_gate" in metafunc.fixturenames:
        metafunc.parametrize("ci_gate", CI_GATES, ids=[f"{arch}-{mode}" for arch, mode in CI_GATES])


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Record torch/CUDA/cudnn versions, GPU name and driver, so a saved run says what it ran on."""
    device = config.getoption("--device")
    env = collect_env(device)
    machine_info.update({key: value for key, value in env.items() if key not in _PER_RUN_ENV})
    machine_info["rvbench_device"] = device


@pytest.fixture(scope="session")
def bench_device(pytestconfig: pytest.Config) -> torch.device:
    """The --device (already normalised to "cpu" or "cuda:N" by tests/conftest.py)."""
    return torch.device(pytestconfig.getoption("--device"))


def build_workload(entry: ModelEntry, mode: str, device: torch.device, stack: contextlib.ExitStack) -> Workload:
    """`entry` at its CI size on `device`, in one step of `mode` (untimed, not warmed up).

    The cell is prepared exactly as a sweep prepares it (`bench.execute.prepare.prepared_cell`) and
    stays prepared, precision switches included, until `stack` closes at the end of the test.
    """
    size = CI_IMAGE_SIZE[entry.arch]
    cell = Cell(entry.arch, entry.impl, CI_BATCH, size, precision=CI_PRECISION, mode=mode, device=str(device))
    built = stack.enter_context(prepared_cell(cell))
    step = built.step
    if device.type == "cuda":

        def synced_step() -> None:
            step()
            torch.cuda.synchronize(device)

    else:
        synced_step = step
    total, trainable = count_params(built.model)
    forward, per_image_step = flops_per_image(cell)
    info = {
        "arch": entry.arch,
        "impl": entry.impl,
        "mode": mode,
        "device": str(device),
        "precision": CI_PRECISION,
        "image_size": size,
        "batch_size": CI_BATCH,
        "threads": torch.get_num_threads(),
        "params_total": total,
        "params_trainable": trainable,
        "gflops_per_image": forward / 1e9,  # forward, as in the results table
        "gflops_per_step": per_image_step * CI_BATCH / 1e9,
    }
    label = f"{entry.arch} {mode} {size}px bs{CI_BATCH} {CI_PRECISION} {device}"
    return Workload(label, synced_step, info)


@pytest.fixture
def make_workload(bench_device: torch.device) -> Iterator[Callable[[ModelEntry, str], Workload]]:
    """Factory of workloads on the --device; on CPU torch is pinned to CPU_THREADS threads. The
    workloads' cells stay prepared for the test and are released, threads restored, after it."""
    saved_threads = torch.get_num_threads()
    if bench_device.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        with contextlib.ExitStack() as stack:
            yield lambda entry, mode: build_workload(entry, mode, bench_device, stack)
    finally:
        torch.set_num_threads(saved_threads)


@pytest.fixture
def gate_clock(bench_device: torch.device) -> Callable[[], float]:
    """The clock ratio gates time with: process CPU time on CPU, wall time on CUDA.

    A CPU workload runs on one thread (CPU_THREADS), so its CPU time is its cost without the
    time other jobs held the core: on a shared machine that preemption is most of the noise,
    and it does not cancel between impls. CUDA steps synchronise, so wall time is device time.
    """
    return time.process_time if bench_device.type == "cpu" else time.perf_counter
