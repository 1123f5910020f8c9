"""The CUDA memory predictor (bench.counting.memory) on the CPU: its exact parts equal the analytic
count, activations grow linearly with the batch, the batch curve agrees with direct traces, the CPU
autocast policy it runs under casts as CUDA's does, `rvbench memory` rejects bad input with exit 2, and the
report's Memory plots and largest-batch table hold what they claim.

Everything runs on fake tensors (no data, no kernels), at small image sizes.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.cli import main
from bench.config.cell import Cell, variant_label
from bench.config.precision import plan_for
from bench.counting import memory
from bench.counting.workspace import cublas_workspace_bytes
from bench.counting.memory import (ALLOCATOR_BLOCK, CARDS, CATEGORIES, MB, PHASES, SPLIT_MIN, _LiveBytes, _materialise,
                                   allocated_bytes, max_batch, predict_cell_peak,
                                   predict_step_memory, step_curve)
from bench.models import get_entry
from bench.report.sections import memory as plots_memory

SIZE = 32


def test_allocated_bytes_rounds_up_to_allocator_blocks():
    assert [allocated_bytes(n) for n in (0, 1, 511, 512, 513, 3 * MB + 1)] == [
        0, ALLOCATOR_BLOCK, ALLOCATOR_BLOCK, ALLOCATOR_BLOCK, 2 * ALLOCATOR_BLOCK, 3 * MB + ALLOCATOR_BLOCK]


def _analytic(arch: str, impl: str, precision: str, mode: str, moments: int) -> tuple[int, int, int]:
    """(weights, gradients, optimizer state) bytes counted from the model's shapes: one allocator
    block-rounded tensor per parameter and buffer, a gradient per trainable parameter in its dtype,
    and `moments` state tensors like it (AdamW 2, SGD momentum 1)."""
    with torch.device("meta"):
        model = get_entry(arch, impl).build(image_size=SIZE).to(plan_for(precision).param_dtype)
    if mode == "finetune":
        from rv_models.transfer import freeze_backbone

        freeze_backbone(model)
    size = [allocated_bytes(t.numel() * t.element_size()) for t in [*model.parameters(), *model.buffers()]]
    trainable = sum(allocated_bytes(p.numel() * p.element_size()) for p in model.parameters() if p.requires_grad)
    return sum(size), trainable, moments * trainable


@pytest.mark.parametrize("arch, precision, mode, optimizer, moments", [
    ("resnet18", "fp32", "train", "default", 1),  # SGD with momentum
    ("resnet18", "bf16", "train", "sgd", 1),  # timm's SGD with Nesterov momentum
    ("resnet18", "amp-fp16", "train", "adamw", 2),
    ("vit_tiny_patch16_224", "fp32", "train", "default", 2),  # AdamW
    ("vit_tiny_patch16_224", "fp16", "train", "adamw", 2),
    ("vit_tiny_patch16_224", "amp-bf16", "train", "sgd", 1),
    ("vit_tiny_patch16_224", "tf32", "finetune", "adamw", 2),
])
def test_weights_gradients_and_optimizer_state_equal_the_analytic_count(arch, precision, mode, optimizer, moments):
    p = predict_step_memory(arch, "rv", SIZE, 2, precision, mode, optimizer)
    assert (p.weights, p.gradients, p.optimizer_state) == _analytic(arch, "rv", precision, mode, moments)
    assert sum(p.at_peak.values()) == p.peak and p.peak_phase in PHASES


def test_inference_holds_no_gradients_state_or_activations():
    p = predict_step_memory("resnet18", "torchvision", SIZE, 4, "amp-bf16", "inference")
    assert p.gradients == p.optimizer_state == p.activations == 0
    assert p.at_peak["weights"] == p.weights == _analytic("resnet18", "torchvision", "fp32", "inference", 0)[0]


@pytest.mark.parametrize("arch, impl", [("resnet18", "rv"), ("vit_tiny_patch16_224", "timm")])
def test_activations_grow_linearly_with_batch(arch, impl):
    act = {b: predict_step_memory(arch, impl, SIZE, b, "fp32", "train").activations for b in (2, 4, 8)}
    assert act[4] - act[2] > 0
    # Per-tensor rounding to 512-byte blocks is the only departure from a straight line.
    assert act[8] - act[4] == pytest.approx(2 * (act[4] - act[2]), rel=1e-3)


@pytest.mark.parametrize("arch, mode", [("resnet18", "train"), ("vit_tiny_patch16_224", "inference")])
def test_batch_curve_agrees_with_a_direct_trace_and_gives_the_largest_batch(arch, mode):
    curve = step_curve(arch, "rv", SIZE, "fp32", mode)
    direct = predict_step_memory(arch, "rv", SIZE, 24, "fp32", mode)
    assert curve.peak(24) + direct.workspace == pytest.approx(direct.peak, rel=1e-3)
    assert predict_cell_peak(Cell(arch, "rv", 24, SIZE, mode=mode)) == curve.peak(24) + direct.workspace
    direct = direct.peak - direct.workspace
    capacity = 3 * direct
    best = curve.max_batch(capacity)
    assert curve.peak(best) <= capacity < curve.peak(best + 1)


@pytest.mark.parametrize("capability, config, expected", [
    ((9, 0), None, 32 * MB),  # Hopper
    ((10, 0), None, 32 * MB),  # Blackwell
    ((8, 0), None, 8 * MB + 128 * 2**10),  # torch's ":4096:2:16:8" before Hopper
    ((8, 9), None, 8 * MB + 128 * 2**10),
    ((8, 0), ":4096:8", 32 * MB),
    ((9, 0), ":4096:2:16:8", 8 * MB + 128 * 2**10),  # the pairs add up, as torch parses them
    ((9, 0), ":16:8", 128 * 2**10),
    ((9, 0), "4096", 32 * MB),  # no ":SIZE:COUNT" pair: torch warns and keeps its default
])
def test_cublas_workspace_is_sized_as_torch_sizes_it(capability, config, expected):
    assert cublas_workspace_bytes(capability, config) == expected


def test_cublas_workspaces_are_in_the_peak_one_per_thread_running_matmuls(monkeypatch):
    """Inference holds one workspace, training two (autograd's device thread has its own cuBLAS
    handle); they are the `workspace` category, in the peak, and sized by the cell's GPU when one is
    present, else for Hopper; CUBLAS_WORKSPACE_CONFIG resizes them."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    infer = predict_step_memory("resnet18", "rv", SIZE, 4, "fp32", "inference")
    train = predict_step_memory("resnet18", "rv", SIZE, 4, "fp32", "train")
    ampere = predict_step_memory("resnet18", "rv", SIZE, 4, "fp32", "train", capability=(8, 0))
    assert (infer.workspace, train.workspace, ampere.workspace) == (32 * MB, 64 * MB, 2 * (8 * MB + 128 * 2**10))
    for p in (infer, train, ampere):
        assert p.at_peak["workspace"] == p.workspace and sum(p.at_peak.values()) == p.peak
    assert train.peak - ampere.peak == 2 * 24 * MB - 2 * 128 * 2**10
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # 128 KiB: blocks the allocator always splits
    small = predict_step_memory("resnet18", "rv", SIZE, 4, "fp32", "train")
    assert small.workspace == 2 * 128 * 2**10 and train.slack - small.slack == 2 * SPLIT_MIN
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")

    cpu, gpu = Cell("resnet18", "rv", 4, SIZE), Cell("resnet18", "rv", 4, SIZE, device="cuda:0")
    monkeypatch.setattr(memory, "cuda_capability", lambda device: None if device == "cpu" else (8, 6))
    assert predict_cell_peak(cpu) - predict_cell_peak(gpu) == 24 * MB - 128 * 2**10
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    assert predict_cell_peak(cpu) == predict_cell_peak(gpu)
    tensors = step_curve("resnet18", "rv", SIZE, "fp32", "inference").peak(4)
    assert predict_cell_peak(gpu) == tensors + 32 * MB


def test_largest_batch_keeps_the_workspaces_aside():
    args = ("vit_tiny_patch16_224", "rv", SIZE, "fp32", "train")
    curve = step_curve(*args)
    gpu_mem = memory.CUDA_CONTEXT_BYTES + 64 * MB + curve.peak(10)
    assert max_batch(*args, gpu_mem) == 10 < max_batch(*args, gpu_mem, capability=(8, 0))


def _forward_bytes(arch: str, device: str, dtype: torch.dtype) -> tuple[int, int]:
    """(peak, live at the end) bytes of a training-mode forward on fake tensors of `device` under autocast."""
    with torch.device("meta"):
        model = get_entry(arch, "rv").build(image_size=SIZE)
    tracker = _LiveBytes()
    with FakeTensorMode():
        with torch.device(device):
            _materialise(model)
            x = torch.empty(4, 3, SIZE, SIZE)
        # torch.autocast("cuda") turns itself off without a GPU: switch CUDA autocast on directly.
        torch.set_autocast_enabled(device, True)
        torch.set_autocast_dtype(device, dtype)
        torch.autocast_increment_nesting()
        tracker.recording = True
        try:
            with tracker:
                out = model(x)
        finally:
            torch.autocast_decrement_nesting()
            torch.clear_autocast_cache()
            torch.set_autocast_enabled(device, False)
    del out
    return max(v for _, v in tracker.trace), tracker.trace[-1][1]


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_cpu_autocast_policy_casts_as_cuda_does(arch):
    """The predictor runs on fake CPU tensors under CPU autocast, standing in for CUDA's (the autograd
    engine refuses fake CUDA tensors without a GPU; a fake CUDA forward works). The attention kernel
    is pinned to the math one, which both devices have, so only the autocast policies differ; they
    differ only in the dtype of batch-norm's per-channel statistics."""
    with sdpa_kernel(SDPBackend.MATH):
        cuda = _forward_bytes(arch, "cuda", torch.bfloat16)
        cpu = _forward_bytes(arch, "cpu", torch.bfloat16)
    assert cpu == pytest.approx(cuda, rel=5e-3)


@pytest.mark.parametrize("arch", ["resnet50", "vit_base_patch16_224"])
def test_default_models_predict_on_cpu(arch, capsys):
    """A whole default model at 224 px (the time goes to the report, not into an assert)."""
    start = time.perf_counter()
    p = predict_step_memory(arch, "rv", 224, 64, "amp-bf16", "train")
    with capsys.disabled():
        print(f"\n{arch} train amp-bf16 bs64: predicted in {time.perf_counter() - start:.1f} s, "
              f"peak {p.peak / MB:.0f} MB ({p.peak_phase})")
    assert p.at_peak["activations"] > p.weights  # at batch 64 activations dominate the backward peak
    assert set(p.at_peak) == set(CATEGORIES)


@pytest.mark.parametrize("argv", [
    ["memory", "resnet18", "--gpu-mem", "80XB"],
    ["memory", "resnet18", "--precision", "fp8"],
    ["memory", "resnet18", "--batch-sizes", "0"],
    ["memory", "resnet18", "--mode", "inference", "--optimizer", "adamw"],
    ["memory", "resnet18", "--gpu-mem", "100MiB"],
    ["memory", "nosuchnet"],
    ["memory", "vit_tiny_patch16_224", "--image-size", "40"],
])
def test_bad_input_exits_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rvbench memory: error:") and err.count("\n") == 1


def test_memory_command_json(capsys):
    argv = ["memory", "resnet18", "--impls", "rv", "--image-size", str(SIZE), "--batch-sizes", "2,4",
            "--mode", "inference", "--gpu-mem", "1GiB", "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["batch_size"] for r in rows] == [2, 4] and rows[0]["peak_mb"] < rows[1]["peak_mb"]
    assert rows[0]["max_batch"] == rows[1]["max_batch"] > 4


def _configs(measured: bool) -> pd.DataFrame:
    """Per-config medians as the report gets them, for two eager configs and a compiled one."""
    rows = [("rv", "none", 100.0, 110.0), ("timm", "none", 200.0, 190.0), ("rv", "default", 100.0, 60.0)]
    return pd.DataFrame([{"arch": "vit_tiny_patch16_224", "impl": impl, "mode": "inference", "precision": "fp32",
                          "channels_last": False, "compile": compile_mode, "batch_size": 8,
                          "variant": variant_label("fp32", False, compile_mode), "mem_predicted_mb": pred,
                          "mem_peak_alloc_mb": meas if measured else None}
                         for impl, compile_mode, pred, meas in rows])


def test_report_compares_eager_cells_only_and_plots_predicted_on_cpu():
    configs = _configs(measured=True)
    assert list(plots_memory.relative_errors(configs)) == pytest.approx([100 / 110 - 1, 200 / 190 - 1])
    check = plots_memory.predicted_vs_measured(configs)
    assert check.png_b64 and "worst -9.1%" in check.caption
    cpu = _configs(measured=False)
    assert plots_memory.predicted_vs_measured(cpu).note and plots_memory.predicted(cpu).png_b64


def test_report_largest_batch_grows_with_card_memory():
    table = plots_memory.largest_batches(_configs(measured=False).iloc[:1])
    sizes = dict(CARDS)
    batches = {card: int(value.replace(",", "")) for card, value in zip(table.columns[3:], table.rows[0][3:])}
    by_memory = [batches[card] for card in sorted(batches, key=sizes.get)]
    assert by_memory == sorted(by_memory) and by_memory[0] > 0
