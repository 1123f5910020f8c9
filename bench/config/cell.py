"""A cell: one fully specified measurement (model x input x variant x mode x device x round).

Cells are the unit of work of the sweep runner: independent, hashable, and serialisable, so a
later multi-GPU runner can hand them to any worker. Validation lives here so that a bad cell is
rejected before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from bench.errors import UsageError

IMPLS = ("rv", "torchvision", "timm")
PRECISIONS = ("fp32", "tf32", "amp-fp16", "amp-bf16", "fp16", "bf16")
COMPILE_MODES = ("none", "default", "max-autotune", "reduce-overhead")
MODES = ("inference", "train", "finetune")

# Precisions and compile modes that need CUDA: the CPU has no TF32, its fp16 kernels are
# reference-quality only, and reduce-overhead means CUDA graphs.
CUDA_ONLY_PRECISIONS = ("tf32", "amp-fp16", "fp16")
CUDA_ONLY_COMPILE = ("reduce-overhead",)


@dataclass(frozen=True)
class Cell:
    """One measurement. Every field is part of its identity (see `cell_id`)."""

    arch: str  # timm-style name, e.g. "resnet50", "vit_base_patch16_224"
    impl: str  # which implementation: rv (ours), torchvision or timm
    batch_size: int  # images per step; never reduced silently
    image_size: int  # square input side in pixels
    precision: str = "fp32"  # see PRECISIONS; amp-* autocast, fp16/bf16 cast the weights
    channels_last: bool = False  # NHWC memory format for model and input
    compile: str = "none"  # torch.compile mode, or "none" for eager
    mode: str = "inference"  # inference, train (full step) or finetune (frozen backbone)
    device: str = "cpu"  # "cpu" or "cuda:N"
    round: int = 0  # repeat index: impls of one config are interleaved round by round

    def config(self) -> dict:
        """The cell's fields as a plain dict (the configuration columns of a results row)."""
        return dataclasses.asdict(self)

    @property
    def cell_id(self) -> str:
        """Stable short id of the full configuration, used to resume and to join samples."""
        blob = json.dumps(self.config(), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def label(self) -> str:
        """Human-readable one-liner for progress bars and messages."""
        parts = [self.arch, self.impl, f"bs{self.batch_size}", f"{self.image_size}px", self.precision]
        if self.channels_last:
            parts.append("cl")
        if self.compile != "none":
            parts.append(f"compile={self.compile}")
        parts += [self.mode, self.device, f"r{self.round}"]
        return " ".join(parts)


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; valid: {', '.join(choices)}")


def validate_device(device: str) -> None:
    """Accept "cpu" or "cuda:N" (N >= 0); a bare "cuda" must be resolved to an index first."""
    if device == "cpu":
        return
    if device.startswith("cuda:") and device[5:].isdigit():
        return
    raise UsageError(f"unknown device {device!r}; valid: cpu, cuda:N (N = GPU index)")


def validate(cell: Cell) -> None:
    """Raise UsageError naming the valid choices if the cell cannot be measured as specified.

    Checks names, numbers and device capability; the (arch, impl) pair is checked by the model
    registry (`bench.models.get_entry`), which knows which library has which arch.
    """
    _check_choice("impl", cell.impl, IMPLS)
    _check_choice("precision", cell.precision, PRECISIONS)
    _check_choice("compile mode", cell.compile, COMPILE_MODES)
    _check_choice("mode", cell.mode, MODES)
    validate_device(cell.device)
    if cell.batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {cell.batch_size}")
    if cell.image_size < 16:
        raise UsageError(f"image size must be >= 16 px, got {cell.image_size}")
    if cell.device == "cpu":
        if cell.precision in CUDA_ONLY_PRECISIONS:
            raise UsageError(
                f"precision {cell.precision!r} needs CUDA; on cpu use one of: "
                + ", ".join(p for p in PRECISIONS if p not in CUDA_ONLY_PRECISIONS)
            )
        if cell.compile in CUDA_ONLY_COMPILE:
            raise UsageError(
                f"compile mode {cell.compile!r} uses CUDA graphs and needs CUDA; on cpu use one of: "
                + ", ".join(c for c in COMPILE_MODES if c not in CUDA_ONLY_COMPILE)
            )
