"""The torch-default precision (issue 12, item 15): PyTorch's own TF32 defaults, where it can run, its
peak, and the rows the timm-CSV export takes for timm's float32."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch

from bench.config.cell import Cell, validate
from bench.config.precision import numerics, numerics_state, plan_for
from bench.errors import UsageError
from bench.execute.step import make_step
from bench.hardware.gpus import H100_SXM, peak_tflops_for
from bench.precisions import PRECISIONS, precision
from bench.results.timm import timm_table

H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("precision, matmul, cudnn", [
    ("fp32", False, False), ("tf32", True, True), ("torch-default", False, True), ("amp-bf16", False, False)])
def test_numerics_sets_the_tf32_switches_of_each_precision_and_restores_them(precision, matmul, cudnn):
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    # Start from the opposite of what the precision asks, so every switch has to move.
    torch.set_float32_matmul_precision("highest" if matmul else "high")
    torch.backends.cudnn.allow_tf32 = not cudnn
    before = numerics_state()
    try:
        with numerics(plan_for(precision), torch.device("cpu")):
            state = numerics_state()
            assert (state["tf32_matmul"], state["tf32_cudnn"]) == (matmul, cudnn)
            assert torch.get_float32_matmul_precision() == ("high" if matmul else "highest")
        assert numerics_state() == before
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def test_torch_default_is_what_pytorch_starts_with():
    # A fresh interpreter's switches (this process's may have been moved by other tests).
    code = "import torch; print(torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    plan = plan_for("torch-default")
    assert fresh == [("high" if plan.tf32_matmul else "highest"), str(plan.tf32_cudnn)]


def test_torch_default_needs_cuda_and_is_valid_there():
    assert "torch-default" in PRECISIONS
    with pytest.raises(UsageError, match="precision 'torch-default' needs CUDA; on cpu use one of: fp32"):
        validate(Cell("resnet18", "rv", 1, 32, precision="torch-default"))
    validate(Cell("resnet18", "rv", 1, 32, precision="torch-default", device="cuda:0"))


def test_torch_default_has_no_single_peak():
    assert peak_tflops_for(H100, "torch-default") is None  # TF32 convolutions, fp32 matmuls
    assert peak_tflops_for(H100, "fp32") == H100_SXM.peak_tflops["fp32"]


def _row(precision: str, device: str, mode: str = "inference", optimizer_used: str | None = None) -> dict:
    return {"arch": "resnet50", "impl": "timm", "batch_size": 64, "image_size": 224, "precision": precision,
            "channels_last": False, "compile": "none", "mode": mode, "device": device, "status": "ok",
            "throughput_wall": 1000.0, "step_ms_mean": 64.0, "gflops_per_image": 8.2, "params_total": 25_557_032,
            "optimizer_used": optimizer_used}


def test_timm_export_takes_the_rows_timm_float32_matches_and_names_them():
    rows = [_row(p, "cuda:0") for p in ("fp32", "tf32", "torch-default", "amp-bf16")] + [_row("fp32", "cpu")]
    timm = timm_table(pd.DataFrame(rows))
    exported = set(zip(timm["device"], timm["precision"], timm["timm_precision"]))
    assert exported == {("cuda:0", "torch-default", "float32"), ("cuda:0", "amp-bf16", "amp_bfloat16"),
                        ("cpu", "fp32", "float32")}
    assert precision("fp32").timm_name("cuda:0") is None and precision("tf32").timm_name("cuda:0") is None


def test_timm_export_names_the_train_optimizer_and_keeps_optimizers_apart():
    rows = [_row("torch-default", "cuda:0"),
            _row("torch-default", "cuda:0", "train", "sgd-nesterov"),
            _row("torch-default", "cuda:0", "train", "sgd-momentum")]
    timm = timm_table(pd.DataFrame(rows))
    assert sorted(timm["train_optimizer"]) == ["sgd-momentum", "sgd-nesterov"]
    assert (timm["infer_samples_per_sec"] == 1000.0).all()  # the inference numbers sit next to each


def test_amp_fp16_steps_settle_the_grad_scaler_and_count_skipped_steps():
    """A real GradScaler on the CPU (its amp-fp16 cells run on CUDA; the scaler logic is the same): a
    head with large weights overflows fp16 gradients at the initial scale 2**16, so the first steps
    are skipped until the scale has halved enough."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.Linear(16, 10))
    with torch.no_grad():
        model[2].weight.mul_(200)
    x, y = torch.randn(4, 3, 2, 2), torch.randint(0, 10, (4,))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    step = make_step(model, "train", x, y, plan_for("amp-fp16"), optimizer, cudagraph_steps=False)
    weights = model[1].weight.detach().clone()
    ran = step.settle()
    assert ran > 1 and step.skipped_steps() == ran - 1  # every step but the last was skipped
    assert not torch.equal(weights, model[1].weight)  # ... and the last one applied
    other = make_step(model, "train", x, y, plan_for("fp32"), optimizer, cudagraph_steps=False)
    other()  # an optimizer step by another step on the same optimizer (as `eager_step`) is not this one's
    for _ in range(3):
        step()
    assert step.skipped_steps() == ran - 1 and step.settle() == 0


def test_steps_without_a_grad_scaler_count_nothing():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    x, y = torch.randn(4, 3, 2, 2), torch.randint(0, 10, (4,))
    train = make_step(model, "train", x, y, plan_for("amp-bf16"), torch.optim.SGD(model.parameters(), lr=0.1),
                      cudagraph_steps=False)
    infer = make_step(model, "inference", x, y, plan_for("fp32"), None, cudagraph_steps=False)
    for step in (train, infer):
        step()
        assert step.skipped_steps() is None and step.settle() == 0


def test_the_precisions_that_need_ampere_tensor_cores_derive_from_the_table():
    """bf16 (weights or autocast) and TF32 matmuls need sm80+; torch-default's cuDNN TF32 is PyTorch's default."""
    assert {p for p in PRECISIONS if precision(p).needs_ampere} == {"tf32", "amp-bf16", "bf16"}
