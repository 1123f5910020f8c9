"""A GPU slot measures on its own GPU: its worker sees that GPU alone, as cuda:0 (so the worker's
current device is the slot's, for its compile subprocesses too); a cell holds its device as torch's
current one; gpu-check makes the checked GPU current. CPU-only: torch.cuda and the worker process are faked."""

from __future__ import annotations

import contextlib
import json
import queue

import pytest
import torch

from bench.cli import main
from bench.config.cell import Cell
from bench.config.sweep import TimingConfig
from bench.errors import UsageError
from bench.execute import prepare
from bench.hardware.device import visible_device
from bench.runner import client
from bench.runner.runner import Runner, Slot


def test_visible_device_is_the_entry_of_our_own_visible_devices():
    assert visible_device("cuda:3", {}) == "3"
    assert visible_device("cuda:1", {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == "5"
    assert visible_device("cuda:0", {"CUDA_VISIBLE_DEVICES": "GPU-8f3c, GPU-11aa"}) == "GPU-8f3c"
    with pytest.raises(UsageError, match="not among CUDA_VISIBLE_DEVICES=4"):
        visible_device("cuda:1", {"CUDA_VISIBLE_DEVICES": "4"})


class _FakeWorkerProcess:
    """Stands in for `python -m bench.runner.worker`: records its environment and the requests it gets."""

    started: list[_FakeWorkerProcess] = []

    def __init__(self, args, *, env, **_):
        self.env, self.requests, self.pid = env, [], None
        self._out: queue.Queue[str | None] = queue.Queue()
        self._out.put(json.dumps({"ready": True}) + "\n")
        self.stdin, self.stdout = self, iter(self._out.get, None)
        _FakeWorkerProcess.started.append(self)

    def write(self, line: str) -> None:
        request = json.loads(line)
        self.requests.append(request)
        reply = {"env": {"env_host": "h"}} if request["op"] == "env" else {"status": "ok", "message": ""}
        self._out.put(json.dumps(reply) + "\n")

    def flush(self) -> None:
        pass

    def poll(self) -> None:
        return None


@pytest.mark.parametrize(("visible", "expected"), [(None, "3"), ("0,2,4,6", "6")])
def test_a_gpu_slot_worker_sees_the_slot_gpu_alone_as_its_current_device(tmp_path, monkeypatch, visible, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(_FakeWorkerProcess, "started", [])
    monkeypatch.setattr(client.subprocess, "Popen", _FakeWorkerProcess)
    runner = Runner(tmp_path, "run", TimingConfig(), None, Slot("cuda:3", "cuda:3"))
    runner.collect_env()
    cell = Cell(arch="resnet18", impl="rv", batch_size=8, image_size=224, device="cuda:0")
    runner.profile([cell], tmp_path / "profiles")
    (worker,) = _FakeWorkerProcess.started
    # The worker's only GPU, cuda:0 (its current device, and its compile subprocesses'), is the slot's GPU
    assert worker.env["CUDA_VISIBLE_DEVICES"] == expected
    assert [r.get("device") or r["cell"]["device"] for r in worker.requests] == ["cuda:0", "cuda:0"]


def test_a_cell_holds_its_gpu_as_the_current_device(monkeypatch):
    current = {"index": 0}

    class FakeDevice:  # torch.cuda.device: makes a device current, restores the previous one on exit
        def __init__(self, device: torch.device) -> None:
            self.index = device.index

        def __enter__(self) -> None:
            self.previous, current["index"] = current["index"], self.index

        def __exit__(self, *exc: object) -> None:
            current["index"] = self.previous

    monkeypatch.setattr(torch.cuda, "device", FakeDevice)
    monkeypatch.setattr(prepare, "check_cell", lambda cell: None)
    monkeypatch.setattr(prepare, "numerics", lambda plan, device: contextlib.nullcontext())
    monkeypatch.setattr(prepare, "_build", lambda cell, entry, plan, device: current["index"])
    monkeypatch.setattr(prepare, "_release", lambda compiled: None)
    cell = Cell(arch="resnet18", impl="rv", batch_size=8, image_size=224, device="cuda:1")
    with prepare.prepared_cell(cell) as current_while_built:
        assert current_while_built == 1 and current["index"] == 1  # built and run on the current device
    assert current["index"] == 0  # restored after the cell


def test_gpu_check_makes_the_checked_gpu_current_before_its_checks(tmp_path, monkeypatch):
    from bench.checks import gpu
    from bench.hardware import device
    from bench.measure import env

    current = {"index": 0}
    monkeypatch.setattr(device, "cuda_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.update(index=torch.device(d).index))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: "Fake GPU")
    monkeypatch.setattr(env, "collect_env", lambda d: {})
    seen = []
    monkeypatch.setitem(gpu.CHECKS, "seen", gpu.Check(lambda ctx: seen.append((ctx.device, current["index"])) or (None, "", {}), 1))
    assert main(["gpu-check", "--device", "cuda:1", "--only", "seen", "--out", str(tmp_path / "out")]) == 0
    assert seen == [("cuda:1", 1)]
