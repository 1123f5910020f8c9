"""A cell: one fully specified measurement (model x input x variant x mode x device x round).

Cells are the unit of work of the sweep runner: independent, hashable, and serialisable, so a
later multi-GPU runner can hand them to any worker. Validation lives here so that a bad cell is
rejected before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from bench.config.backends import BACKENDS, DEFAULT_BACKEND, problem
from bench.errors import UsageError
from bench.hardware.device import check_support, validate_device
from bench.models import IMPLS, get_entry
from bench.models.training import DEFAULT_OPTIMIZER, OPTIMIZERS
from bench.precisions import DEFAULT_PRECISION, PRECISIONS

FREEZE_SUFFIX = "-freeze"
# torch.compile's modes; max-autotune-no-cudagraphs tells autotuning gains apart from CUDA-graph gains.
TORCH_COMPILE_MODES = ("default", "max-autotune", "reduce-overhead", "max-autotune-no-cudagraphs")
# "none" (eager), every torch.compile mode, and "<mode>-freeze": <mode> with Inductor freezing (see
# `split_compile`) for every mode but reduce-overhead, whose point (CUDA graphs) freezing does not change.
COMPILE_MODES = ("none", *TORCH_COMPILE_MODES,
                 *(m + FREEZE_SUFFIX for m in TORCH_COMPILE_MODES if m != "reduce-overhead"))
MODES = ("inference", "train", "finetune")
# The largest batch of any cell: far past the largest batch --find-max-batch probes (4096) and the
# batch gpu-check runs out of memory on purpose (8192), a sanity bound that refuses a typo such as
# 100000000000000000000 up front (it overflows torch's sizes mid-run, or asks for exabytes).
MAX_BATCH_SIZE = 2**16


@dataclass(frozen=True)
class Cell:
    """One measurement. Every field is part of its identity (see `cell_id`)."""

    arch: str  # timm-style name, e.g. "resnet50", "vit_base_patch16_224"
    impl: str  # which implementation: rv (ours), torchvision or timm
    batch_size: int  # images per step; never reduced silently
    image_size: int  # square input side in pixels
    precision: str = DEFAULT_PRECISION  # see bench.precisions; amp-* autocast, fp16/bf16 cast the weights
    channels_last: bool = False  # NHWC memory format for model and input
    compile: str = "none"  # torch.compile mode (+"-freeze": Inductor freezing), or "none" for eager
    backend: str = DEFAULT_BACKEND  # what runs the step: eager PyTorch, or an exported model (bench.config.backends)
    mode: str = "inference"  # inference, train (full step) or finetune (frozen backbone)
    optimizer: str = DEFAULT_OPTIMIZER  # train/finetune: see OPTIMIZERS; inference cells keep the default
    device: str = "cpu"  # "cpu" or "cuda:N"
    round: int = 0  # repeat index: impls of one config are interleaved round by round

    def config(self) -> dict:
        """The cell's fields as a plain dict (the configuration columns of a results row)."""
        return dataclasses.asdict(self)

    @property
    def cell_id(self) -> str:
        """Stable short id of the full configuration, used to resume and to join samples.

        The optimizer and the backend enter the id only when they are not the default: cells from before
        either was a field had the default, so they keep their ids and `--resume` of older runs still works.
        """
        config = self.config()
        for name, default in (("optimizer", DEFAULT_OPTIMIZER), ("backend", DEFAULT_BACKEND)):
            if config[name] == default:
                del config[name]
        blob = json.dumps(config, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def label(self) -> str:
        """Human-readable one-liner for progress bars and messages (see `config_label`)."""
        return config_label(self.config(), sep=" ")


def config_keys(*, impl: bool = False, device: bool = False) -> list[str]:
    """The columns that identify a configuration, in Cell field order: every field but impl, device and round.

    The one definition of a configuration's identity. A configuration is what implementations are
    compared at and what rounds repeat, so impl, device and round are not part of it; `impl` and
    `device` add those fields back for views that key on them (per-impl medians, ratios on a device).
    """
    keep = {"impl": impl, "device": device, "round": False}
    return [f.name for f in dataclasses.fields(Cell) if keep.get(f.name, True)]


def split_compile(compile_mode: str) -> tuple[str, bool]:
    """(torch.compile mode, Inductor freezing on) of a compile mode name, e.g. "default-freeze" -> ("default", True).

    Freezing (torch._inductor.config.freezing) turns the weights into constants, so Inductor can
    fold conv+batchnorm and pre-pack weights: PyTorch's recommended setting for inference, and on a
    CPU the difference between compile being slower or faster than eager. Frozen weights cannot be
    trained, so the freezing modes are inference only (`validate`).
    """
    if compile_mode.endswith(FREEZE_SUFFIX):
        return compile_mode[: -len(FREEZE_SUFFIX)], True
    return compile_mode, False


def variant_label(precision: str, channels_last: bool, compile: str, backend: str = DEFAULT_BACKEND) -> str:
    """Short label of a precision/layout/compile/backend variant, e.g. "amp-bf16 +cl +compile",
    "fp32 +compile:max-autotune", "fp32 +compile +freeze", "bf16 +openvino" (the eager backend is not named)."""
    label = precision
    if channels_last:
        label += " +cl"
    if compile != "none":
        mode, freezing = split_compile(compile)
        label += " +compile" if mode == "default" else f" +compile:{mode}"
        label += " +freeze" if freezing else ""
    if backend != DEFAULT_BACKEND:
        label += f" +{backend}"
    return label


_VARIANT_FIELDS = ("precision", "channels_last", "compile")
_FIELD_FORMATS = {"batch_size": "bs{}", "image_size": "{}px", "round": "r{}"}


def config_label(config: Mapping[str, object], sep: str = " · ") -> str:
    """Label of a cell or configuration from whichever Cell fields `config` holds, in field order.

    The one label format: arch, impl, "bs<N>", "<N>px", the variant (`variant_label`, when precision,
    channels_last and compile are given; with the backend when `config` has one), mode, the optimizer unless it
    is the default, device, "r<N>"; a backend other than eager without the variant is a part of its own. Views
    leave out fields they show elsewhere; cells
    in progress bars use sep=" " (RVBENCH_FAULT matches on that text), tables and pages " · ".
    """
    parts = []
    variant = all(k in config for k in _VARIANT_FIELDS)
    backend = str(config.get("backend", DEFAULT_BACKEND))
    for name in (f.name for f in dataclasses.fields(Cell)):
        if name == "precision" and variant:
            precision, channels_last, compile_mode = (config[k] for k in _VARIANT_FIELDS)
            parts.append(variant_label(str(precision), bool(channels_last), str(compile_mode), backend))
        elif name == "backend":
            if not variant and backend != DEFAULT_BACKEND:
                parts.append(backend)
        elif name == "optimizer" and config.get(name, DEFAULT_OPTIMIZER) == DEFAULT_OPTIMIZER:
            continue
        elif name not in _VARIANT_FIELDS and name in config:
            parts.append(_FIELD_FORMATS.get(name, "{}").format(config[name]))
    return sep.join(parts)


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; valid: {', '.join(choices)}")


def validate(cell: Cell) -> None:
    """Raise UsageError naming the valid choices if the cell cannot be measured as specified.

    Checks names, numbers, that freezing compile modes run inference only, that inference cells name no
    optimizer, what a backend other than eager can run and whether its packages are installed
    (bench.config.backends.problem), the (arch, impl) pair and its image size by the model registry
    (`bench.models.get_entry`, which knows which library has which arch and each family's input rules), and
    what the device kind supports (bench.hardware.device; whether a CUDA device is present and capable is
    checked where it runs).
    """
    _check_choice("impl", cell.impl, IMPLS)
    _check_choice("precision", cell.precision, PRECISIONS)
    _check_choice("compile mode", cell.compile, COMPILE_MODES)
    _check_choice("mode", cell.mode, MODES)
    _check_choice("optimizer", cell.optimizer, OPTIMIZERS)
    _check_choice("backend", cell.backend, BACKENDS)
    if cell.mode == "inference" and cell.optimizer != DEFAULT_OPTIMIZER:
        raise UsageError(f"optimizer {cell.optimizer!r} is for train and finetune; inference runs none")
    if split_compile(cell.compile)[1] and cell.mode != "inference":
        raise UsageError(
            f"compile mode {cell.compile!r} freezes the weights, so it runs inference only; for {cell.mode} "
            "use one of: " + ", ".join(c for c in COMPILE_MODES if not split_compile(c)[1])
        )
    validate_device(cell.device)
    if not 1 <= cell.batch_size <= MAX_BATCH_SIZE:
        raise UsageError(f"batch size must be from 1 to {MAX_BATCH_SIZE}, got {cell.batch_size}")
    get_entry(cell.arch, cell.impl).check_image_size(cell.image_size)
    check_support(cell.device, cell.precision, cell.compile, COMPILE_MODES)
    reason = problem(cell.backend, mode=cell.mode, compile_mode=cell.compile, channels_last=cell.channels_last,
                     precision=cell.precision, device=cell.device)
    if reason:
        raise UsageError(reason)
