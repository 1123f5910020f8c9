"""Inductor's compile pool is up before a compiled CUDA cell's first step (bench.execute.step.ready_compile_pool),
so `compile_s` never includes its start-up, and it outlives the cold caches of the next cell; eager and CPU cells
never start it. The ordering with Inductor's pieces faked; the pool itself for real, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch._inductor import async_compile

from bench.execute.step import compile_model

ROOT = Path(__file__).resolve().parents[1]


class _Done:
    def __init__(self, calls: list[str]) -> None:
        self._calls = calls

    def result(self, timeout: float) -> int:
        self._calls.append("job done")
        return 0


@pytest.fixture
def pool_calls(monkeypatch) -> list[str]:
    """Inductor's pool start-up, faked: what was called, in order."""
    calls: list[str] = []

    class Pool:
        def submit(self, fn):
            calls.append("job")
            return _Done(calls)

    monkeypatch.setattr(async_compile, "maybe_warm_pool", lambda: calls.append("warm"))
    monkeypatch.setattr(async_compile.AsyncCompile, "wait_pool_ready", classmethod(lambda cls, t: calls.append("wait")))
    monkeypatch.setattr(async_compile.AsyncCompile, "use_process_pool", classmethod(lambda cls: True))
    monkeypatch.setattr(async_compile.AsyncCompile, "process_pool", staticmethod(Pool))
    return calls


def test_a_compiled_cuda_cell_gets_a_ready_pool_before_its_first_step(pool_calls, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(list(pool_calls)) or model)
    compile_model(nn.Linear(2, 2), "default", torch.device("cuda", 0))
    # the pool started, Inductor's ready flag waited for and one job run in it, all before the model is
    # wrapped: the first step (compile_s) compiles with the pool, as every later cell does
    assert compiled == [["warm", "wait", "job", "job done"]]


def test_eager_and_cpu_cells_never_start_the_pool(pool_calls):
    compile_model(nn.Linear(2, 2), "none", torch.device("cuda", 0))
    compile_model(nn.Linear(2, 2), "default", torch.device("cpu"))
    assert pool_calls == []


SCRIPT = textwrap.dedent("""
    import os, torch
    from torch._inductor.async_compile import AsyncCompile
    from bench.execute.step import cold_compile_caches, ready_compile_pool

    with cold_compile_caches("default"):
        ready_compile_pool(torch.device("cuda"))
        pool = AsyncCompile.process_pool()
        ready = AsyncCompile.use_process_pool()
    with cold_compile_caches("default"):  # the next compiled cell
        ready_compile_pool(torch.device("cuda"))
        same = AsyncCompile.process_pool() is pool and AsyncCompile.use_process_pool()
        elsewhere = pool.submit(os.getpid).result(timeout=60) != os.getpid()
    print(ready, same, elsewhere)
""")


def test_the_pool_is_ready_and_survives_cold_caches():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHINDUCTOR_COMPILE_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Inductor sends kernels to the pool from the first one; the same pool serves the next cell; its jobs
    # run in other processes
    assert done.stdout.split() == ["True", "True", "True"]
