"""Compile modes and what a compiled cell records (issue 12, items 4 and 10): the modes accepted and
their labels, which ones replay CUDA graphs, cold compile caches, and dynamo's compile callbacks
(compiling notices for the runner, CUDA-graph recording time)."""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch._dynamo.callback import CallbackTrigger, callback_handler

from bench.config.cell import COMPILE_MODES, Cell, config_label, validate
from bench.errors import UsageError
from bench.execute.step import (
    cold_compile_caches, cudagraph_recording_s, on_compilation, uses_cudagraphs, watch_compilation,
)

CUDA, CPU = torch.device("cuda:0"), torch.device("cpu")


def test_every_torch_compile_mode_and_its_freezing_variants_are_accepted():
    assert set(COMPILE_MODES) == {
        "none", "default", "max-autotune", "reduce-overhead", "max-autotune-no-cudagraphs",
        "default-freeze", "max-autotune-freeze", "max-autotune-no-cudagraphs-freeze"}
    for mode in COMPILE_MODES:
        validate(Cell("resnet18", "rv", 1, 32, compile=mode, device="cuda:0"))
    for mode in set(COMPILE_MODES) - {"reduce-overhead"}:  # CUDA graphs need CUDA
        validate(Cell("resnet18", "rv", 1, 32, compile=mode))
    with pytest.raises(UsageError, match="'max-autotune-no-cudagraphs-freeze' freezes the weights"):
        validate(Cell("resnet18", "rv", 1, 32, compile="max-autotune-no-cudagraphs-freeze", mode="train"))


def test_no_cudagraphs_label_and_cudagraph_use():
    config = {"precision": "amp-bf16", "channels_last": True, "compile": "max-autotune-no-cudagraphs-freeze"}
    assert config_label(config) == "amp-bf16 +cl +compile:max-autotune-no-cudagraphs +freeze"
    graphs = {mode for mode in COMPILE_MODES if uses_cudagraphs(mode, CUDA)}
    assert graphs == {"reduce-overhead", "max-autotune", "max-autotune-freeze"}
    assert not any(uses_cudagraphs(mode, CPU) for mode in COMPILE_MODES)


def test_cold_caches_hold_a_real_compile_and_vanish_after_it():
    """One tiny real compile: Inductor writes its caches into the cell's own directory, which is
    deleted afterwards; the environment is restored; the compile is announced to listeners."""
    saved = {k: os.environ.get(k) for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    heard: list[bool] = []
    on_compilation(heard.append)
    with cold_compile_caches("default"):
        directory = os.environ["TORCHINDUCTOR_CACHE_DIR"]
        assert os.environ["TRITON_CACHE_DIR"] == os.path.join(directory, "triton")
        torch._dynamo.reset()
        watch_compilation()
        compiled = torch.compile(lambda x: torch.sin(x) * 2 + 1, dynamic=False)
        assert torch.allclose(compiled(torch.ones(4)), torch.sin(torch.ones(4)) * 2 + 1)
        written = [f for _, _, files in os.walk(directory) for f in files]
    torch._dynamo.reset()
    assert written, "Inductor wrote nothing to the cell's cache directory"
    assert not os.path.exists(directory)
    assert {k: os.environ.get(k) for k in saved} == saved
    assert heard[0] is True and heard[-1] is False and heard.count(True) == heard.count(False)


def test_eager_cells_keep_the_caches_alone():
    before = dict(os.environ)
    with cold_compile_caches("none"):
        assert dict(os.environ) == before


def test_cudagraph_recording_is_timed_and_is_not_compiling():
    """Dynamo's callback handler with the trigger cudagraph trees record under (no CUDA here to record)."""
    heard: list[bool] = []
    on_compilation(heard.append)
    watch_compilation()
    before = cudagraph_recording_s()
    with callback_handler.install_callbacks(CallbackTrigger.CUDAGRAPH_RECORDING, "0/0"):
        time.sleep(0.2)  # the recording
    assert cudagraph_recording_s() - before >= 0.2
    assert heard == []
    torch._dynamo.reset()  # clears the callbacks, as between cells
    with callback_handler.install_callbacks(CallbackTrigger.CUDAGRAPH_RECORDING, "0/1"):
        pass
    assert heard == []
