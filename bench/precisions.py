"""The precisions a cell can run in, declared once: every table, check and help text derives from `PRECISIONS`.

`fp32` means real IEEE fp32: TF32 off for matmuls and cuDNN convolutions. `tf32` turns TF32 on for both.
`torch-default` leaves PyTorch's own defaults: cuDNN TF32 on (convolutions), matmul TF32 off
(`float32_matmul_precision` "highest"), which is what timm's benchmark.py measures as "float32"; a ResNet's
convolutions then run TF32 and a ViT's matmuls fp32. Every other precision runs its remaining fp32 ops without
TF32. `amp-*` autocast; `fp16`/`bf16` cast the weights.

This module imports no torch: dtypes are named, and `bench.config.precision` turns the names into torch's, so
help texts and checks cost no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import UsageError


@dataclass(frozen=True)
class Precision:
    """Everything known about one precision name."""

    name: str
    weights: str  # torch dtype name of the weights and the input batch
    autocast: str | None  # torch dtype name of the autocast region, None for no autocast
    tf32_matmul: bool  # TF32 in fp32 matmuls (float32_matmul_precision "high")
    tf32_cudnn: bool  # TF32 in cuDNN convolutions (cudnn.allow_tf32)
    cuda_only: bool  # the CPU has no TF32 (so torch-default is fp32 there) and only reference fp16 kernels
    peak: str | None  # the key of a GPU's dense peak (bench.hardware.gpus) that bounds it; None: no single peak
    timm_cuda: str | None  # timm benchmark.py's `--precision` that runs the same on CUDA, None if none does
    timm_cpu: str | None  # ... and on a CPU
    trains: bool  # keeps fp32 weights, so `rvbench transfer` can train to accuracy in it
    default_train_on: tuple[str, ...] = ()  # device kinds ("cpu", "cuda") where `rvbench scale` trains in it by default

    @property
    def needs_ampere(self) -> bool:
        """Whether it needs sm80+ tensor cores: bf16 (older GPUs emulate it) or TF32 matmuls (older GPUs ignore the
        switch, so the row would be mislabelled); torch-default's cuDNN TF32 is PyTorch's default, fp32 without it."""
        return "bfloat16" in (self.weights, self.autocast) or self.tf32_matmul

    def timm_name(self, device: str) -> str | None:
        """timm benchmark.py's name for this precision on `device` ("cpu" or "cuda:N"), None if it has none."""
        return self.timm_cpu if device == "cpu" else self.timm_cuda


# torch-default has no peak: its convolutions run TF32 and its matmuls fp32, so the bound depends on the model's
# mix (a ResNet near the tf32 peak, a ViT the fp32 one), and a guessed peak would be worse than none.
# CUDA fp32 (TF32 off everywhere) and tf32 have no timm counterpart: timm's float32 is PyTorch's default.
_TABLE = (
    Precision("fp32", "float32", None, False, False, cuda_only=False, peak="fp32", timm_cuda=None,
              timm_cpu="float32", trains=True, default_train_on=("cpu",)),
    Precision("tf32", "float32", None, True, True, cuda_only=True, peak="tf32", timm_cuda=None, timm_cpu=None,
              trains=True),
    Precision("torch-default", "float32", None, False, True, cuda_only=True, peak=None, timm_cuda="float32",
              timm_cpu=None, trains=True),
    Precision("amp-fp16", "float32", "float16", False, False, cuda_only=True, peak="fp16", timm_cuda="amp",
              timm_cpu=None, trains=True),
    Precision("amp-bf16", "float32", "bfloat16", False, False, cuda_only=False, peak="bf16",
              timm_cuda="amp_bfloat16", timm_cpu="amp_bfloat16", trains=True, default_train_on=("cuda",)),
    Precision("fp16", "float16", None, False, False, cuda_only=True, peak="fp16", timm_cuda="float16", timm_cpu=None,
              trains=False),
    Precision("bf16", "bfloat16", None, False, False, cuda_only=False, peak="bf16", timm_cuda="bfloat16",
              timm_cpu="bfloat16", trains=False),
)  # fmt: skip

PRECISIONS: tuple[str, ...] = tuple(p.name for p in _TABLE)
DEFAULT_PRECISION = "fp32"
# Training keeps fp32 weights (autocast, or TF32 inside fp32 ops); cast fp16/bf16 weights lose accuracy.
TRAINING_PRECISIONS: tuple[str, ...] = tuple(p.name for p in _TABLE if p.trains)
CUDA_ONLY_PRECISIONS: tuple[str, ...] = tuple(p.name for p in _TABLE if p.cuda_only)
_BY_NAME = {p.name: p for p in _TABLE}


def precision(name: str) -> Precision:
    """The declaration of a precision name; UsageError naming the valid ones otherwise."""
    if name not in _BY_NAME:
        raise UsageError(f"unknown precision {name!r}; valid: {', '.join(PRECISIONS)}")
    return _BY_NAME[name]


def default_train_precision(device_kind: str) -> str:
    """The precision `rvbench scale` trains in on a device kind ("cpu" or "cuda") when none is given."""
    return next(p.name for p in _TABLE if device_kind in p.default_train_on)


def precision_help(names: tuple[str, ...] = PRECISIONS, default: str = DEFAULT_PRECISION) -> str:
    """The help text of a precision option: its choices and default, e.g. "fp32, tf32, ... (default fp32)"."""
    return f"{', '.join(names)} (default {default})"


def check_trains(name: str) -> None:
    """UsageError unless `name` is a precision that keeps fp32 weights, so training in it reaches accuracy
    (`rvbench transfer` and `rvbench scale` train as one would for real; a sweep's train cells time any precision)."""
    if not precision(name).trains:
        raise UsageError(f"precision {name!r} casts the weights, so it cannot train here; valid: "
                         f"{', '.join(TRAINING_PRECISIONS)}")
