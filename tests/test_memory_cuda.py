"""CUDA memory columns and the order of the at-rest reading, against fake CUDA memory statistics.

This machine has no GPU, so torch.cuda's allocator statistics are replaced by a fake allocator
that keeps the same books (allocated bytes, their peak since the last reset, reserved bytes,
private pools) and logs every call, so the order of events around the timed loop is checked."""

from __future__ import annotations

import types

import pytest
import torch

from bench.execute.step import Step
from bench.measure import memory
from bench.measure.cell import _timed_window
from bench.measure.contention import ContentionMonitor
from bench.measure.memory import MB, CudaPeak
from bench.measure.power import PowerMonitor

CUDA0 = torch.device("cuda:0")
WEIGHTS, GRADS, ACTIVATIONS, WORKSPACE = 100 * 2**20, 40 * 2**20, 300 * 2**20, 500 * 2**20


class FakeAllocator:
    """Stand-in for torch.cuda's caching allocator statistics on cuda:0, with a call log."""

    def __init__(self, monkeypatch, pools: list[dict] | None = None) -> None:
        self.log: list[str] = []
        self.allocated = self.peak = 0
        self.cached = 0  # freed bytes the cache still holds (reserved = allocated + cached)
        self.peak_reserved = 0
        self.pools = pools or []
        fakes = {
            "synchronize": lambda device=None: self.log.append("synchronize"),
            "empty_cache": self.empty_cache,
            "reset_peak_memory_stats": self.reset_peak,
            "memory_allocated": self.read("memory_allocated", lambda: self.allocated),
            "max_memory_allocated": self.read("max_memory_allocated", lambda: self.peak),
            "max_memory_reserved": self.read("max_memory_reserved", lambda: self.peak_reserved),
            "memory_snapshot": lambda: self.pools,
        }
        for name, fake in fakes.items():
            monkeypatch.setattr(torch.cuda, name, fake)

    def read(self, name, value):
        def reader(device=None):
            self.log.append(name)
            return value()
        return reader

    def malloc(self, nbytes: int) -> None:
        reuse = min(self.cached, nbytes)
        self.cached -= reuse
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)
        self.peak_reserved = max(self.peak_reserved, self.allocated + self.cached)

    def free(self, nbytes: int) -> None:
        self.allocated -= nbytes
        self.cached += nbytes

    def empty_cache(self) -> None:
        self.log.append("empty_cache")
        self.cached = 0

    def reset_peak(self, device=None) -> None:
        self.log.append("reset_peak_memory_stats")
        self.peak = self.allocated
        self.peak_reserved = self.allocated + self.cached


def _train_cell(alloc: FakeAllocator) -> types.SimpleNamespace:
    """A built train cell after warm-up: weights and gradients held, a cuDNN workspace cached.

    Its step drops the gradients (set_to_none), allocates activations, then gradients in backward
    while the activations are freed, as a real training step does."""
    alloc.malloc(WEIGHTS)
    alloc.malloc(WORKSPACE)
    alloc.free(WORKSPACE)  # warm-up's autotuning workspace, now only cached
    alloc.malloc(GRADS)
    held = {"grads": True}

    def zero_grad(set_to_none: bool = False):
        assert set_to_none, "gradients must be freed, not zeroed in place"
        alloc.log.append("zero_grad")
        if held["grads"]:
            alloc.free(GRADS)
            held["grads"] = False

    def step():
        alloc.log.append("step")
        zero_grad(set_to_none=True)
        alloc.malloc(ACTIVATIONS)
        alloc.malloc(GRADS)
        alloc.free(ACTIVATIONS)
        held["grads"] = True

    optimizer = types.SimpleNamespace(zero_grad=zero_grad)
    return types.SimpleNamespace(device=CUDA0, optimizer=optimizer, step=Step(step, False, None, None))


class LoggingMonitor(PowerMonitor):
    """A power monitor that only logs when it starts and stops (NVML is tested in test_power_nvml.py)."""

    def __init__(self, log: list[str]) -> None:
        self._log = log

    def start(self) -> None:
        self._log.append("power start")

    def stop(self) -> None:
        self._log.append("power stop")


def test_train_at_rest_is_read_after_the_gradients_are_freed(monkeypatch):
    alloc = FakeAllocator(monkeypatch)
    built = _train_cell(alloc)
    window: dict = {}
    with _timed_window(built, LoggingMonitor(alloc.log), ContentionMonitor(None), window):
        alloc.log.append("timed loop")
        built.step()
    assert alloc.log == [
        "synchronize", "zero_grad", "empty_cache", "reset_peak_memory_stats", "memory_allocated",
        "step", "zero_grad", "synchronize",  # the untimed step that refills the emptied cache
        "power start", "timed loop", "step", "zero_grad", "power stop",  # power sees the loop only
        "synchronize", "max_memory_allocated", "max_memory_reserved",
    ]  # fmt: skip
    cols = window["cuda"].columns(WEIGHTS)
    # At rest: the weights only. The step's peak: weights + activations + the gradients' first half
    # of backward (here all of them, allocated before the activations are freed).
    assert cols["mem_activation_mb"] == (ACTIVATIONS + GRADS) / MB
    assert cols["mem_peak_alloc_mb"] == (WEIGHTS + ACTIVATIONS + GRADS) / MB
    # The warm-up workspace was released before the reset, so it does not inflate peak reserved.
    assert cols["mem_peak_reserved_mb"] == (WEIGHTS + ACTIVATIONS + GRADS) / MB
    assert cols["mem_graph_pool_mb"] == 0 and "gradients freed" in cols["mem_note"]


def test_inference_has_no_gradients_to_free(monkeypatch):
    alloc = FakeAllocator(monkeypatch)
    alloc.malloc(WEIGHTS)

    def step():
        alloc.log.append("step")
        alloc.malloc(ACTIVATIONS)
        alloc.free(ACTIVATIONS)

    built = types.SimpleNamespace(device=CUDA0, optimizer=None, step=Step(step, False, None, None))
    window: dict = {}
    with _timed_window(built, "no power in this test", ContentionMonitor(None), window):
        step()
    assert "zero_grad" not in alloc.log
    assert window["cuda"].columns(WEIGHTS)["mem_activation_mb"] == ACTIVATIONS / MB


def test_peaks_are_not_read_after_a_failed_loop(monkeypatch):
    alloc = FakeAllocator(monkeypatch)
    built = types.SimpleNamespace(device=CUDA0, optimizer=None, step=Step(lambda: None, False, None, None))
    with pytest.raises(torch.OutOfMemoryError):
        with _timed_window(built, "no power in this test", ContentionMonitor(None), {}):
            raise torch.OutOfMemoryError("fake")
    assert "max_memory_allocated" not in alloc.log


def _segment(device: int, pool: tuple[int, int], mb: int) -> dict:
    return {"device": device, "segment_pool_id": pool, "total_size": mb * 2**20}


def test_cuda_graph_cell_reports_its_pool_and_no_activation(monkeypatch):
    pools = [_segment(0, (0, 0), 64), _segment(0, (0, 1), 20), _segment(0, (0, 1), 12),
             _segment(1, (0, 2), 99)]
    alloc = FakeAllocator(monkeypatch, pools)
    alloc.malloc(WEIGHTS)
    peak = CudaPeak(CUDA0)
    peak.start(free_grads=None)
    peak.stop()  # replays allocate nothing: peak == at rest
    cols = peak.columns(WEIGHTS)
    assert memory.graph_pool_bytes(CUDA0) == 32 * 2**20  # cuda:0's private pools only
    assert cols["mem_graph_pool_mb"] == 32
    assert cols["mem_activation_mb"] is None
    assert cols["mem_peak_alloc_mb"] == WEIGHTS / MB
    assert "CUDA graphs" in cols["mem_note"]
