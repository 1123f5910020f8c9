"""Deployment backends, declared once: what each needs, runs on and computes in, and how close its logits must be.

A cell's `backend` (bench.config.cell.Cell) says what runs its inference step. "eager" is PyTorch itself, every
other cell of the sweep; the others run the eager fp32 model exported to ONNX (bench.execute.backends):
- onnxruntime: an ONNX Runtime `InferenceSession`, fp32 (CPUExecutionProvider; CUDAExecutionProvider on CUDA);
- openvino: OpenVINO's CPU plugin, fp32, or bf16 through its `INFERENCE_PRECISION_HINT` where the CPU has BF16;
- tensorrt: a TensorRT engine built from the ONNX file, fp32 or fp16, CUDA only.
A backend runs inference only, without torch.compile and in NCHW (the exported graph's layout is the backend's
choice); `problem` says why a cell's combination cannot run. Its packages come with `pip install 'rvbench[deploy]'`
(TensorRT's with NVIDIA's wheel), and are looked up, not imported, when a cell is checked (`missing`); the one
exception is onnxruntime on CUDA, which needs the onnxruntime-gpu build (`cuda_provider_problem` imports
onnxruntime to ask for its CUDAExecutionProvider).

Parity (`PARITY`): each backend row compares its logits on the cell's fixed batch with eager fp32 PyTorch's, and
passes when the cosine similarity and the share of agreeing argmaxes reach its precision's bounds. bf16 keeps
8 bits of mantissa, so its logits drift by about 1% of their scale; the models run with random weights, whose
logits are nearly tied, so bf16 rounding flips argmaxes without being wrong and its top-1 bound is none.
For the same reason top-1 agreement counts only images whose eager top-2 margin is clear of a tie
(bench.execute.backends.parity), so fp32 can demand every one of those.

This module imports no torch, so help texts can use it for free.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

DEFAULT_BACKEND = "eager"
INSTALL_HINT = "pip install 'rvbench[deploy]'"
# + "<pid>-": the temporary directory of one ONNX export (bench.execute.backends), which its worker removes once
# read, and the runner after killing a worker mid-export (bench.runner.client.Worker.stop).
EXPORT_PREFIX = "rvbench-onnx-"


@dataclass(frozen=True)
class Backend:
    """Everything known about one backend name."""

    name: str
    packages: tuple[str, ...]  # the modules it imports (importlib names)
    devices: tuple[str, ...]  # the device kinds it runs on: "cpu", "cuda"
    precisions: tuple[str, ...]  # the precisions (bench.precisions names) it computes in


_EXPORT = ("onnx", "onnxscript")  # torch.onnx.export's dynamo exporter writes through these
_DECLARED = (
    Backend("eager", (), ("cpu", "cuda"), ()),  # every precision: bench.precisions decides
    Backend("onnxruntime", (*_EXPORT, "onnxruntime"), ("cpu", "cuda"), ("fp32",)),
    Backend("openvino", (*_EXPORT, "openvino"), ("cpu",), ("fp32", "bf16")),
    Backend("tensorrt", (*_EXPORT, "tensorrt"), ("cuda",), ("fp32", "fp16")),
)
BY_NAME: dict[str, Backend] = {b.name: b for b in _DECLARED}
BACKENDS: tuple[str, ...] = tuple(BY_NAME)


@dataclass(frozen=True)
class Tolerance:
    """How close a backend's logits must be to eager fp32 PyTorch's for its row's `parity_ok`."""

    min_cos: float  # cosine similarity of the flattened logits, at least
    min_top1: float  # share of images whose argmax agrees, at least


PARITY: dict[str, Tolerance] = {
    "fp32": Tolerance(min_cos=0.9999, min_top1=1.0),
    "bf16": Tolerance(min_cos=0.99, min_top1=0.0),
    "fp16": Tolerance(min_cos=0.999, min_top1=0.0),
}


def backend_help() -> str:
    """The help text of `--backends`: each backend, where it runs and its precisions."""
    parts = [f"{b.name} ({'/'.join(b.devices)}; {', '.join(b.precisions)})" for b in _DECLARED if b.packages]
    return (f"{DEFAULT_BACKEND} (PyTorch, the default), " + ", ".join(parts)
            + f": inference only, exported to ONNX; needs {INSTALL_HINT}")


def precision_problem(backend: str, precision: str) -> str:
    """Why `backend` cannot compute in `precision` ("" when it can): a sweep skips such pairs (`expand`)."""
    spec = BY_NAME[backend]
    if not spec.precisions or precision in spec.precisions:
        return ""
    return f"backend {backend} runs {', '.join(spec.precisions)}, not {precision}"


def missing(backend: str) -> list[str]:
    """The modules `backend` needs that are not installed (found by `importlib.util.find_spec`, not imported)."""
    return [name for name in BY_NAME[backend].packages if importlib.util.find_spec(name) is None]


def cuda_provider_problem() -> str:
    """Why ONNX Runtime cannot run on CUDA ("" when it can): the CPU-only `onnxruntime` wheel lacks the
    CUDAExecutionProvider, which comes with `onnxruntime-gpu` instead."""
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in providers:
        return ""
    return (f"backend onnxruntime on CUDA needs its CUDAExecutionProvider (this onnxruntime has "
            f"{', '.join(providers)}): pip uninstall onnxruntime && pip install onnxruntime-gpu")


def problem(backend: str, *, mode: str, compile_mode: str, channels_last: bool, precision: str,
            device: str) -> str:
    """Why a cell of `backend` cannot run as given ("" when it can); `backend` must be a known name.

    One line each: a backend runs inference only, without torch.compile, in NCHW, on its device kinds, in its
    precisions, and with its packages installed (onnxruntime on CUDA: the build with CUDAExecutionProvider).
    """
    if backend == DEFAULT_BACKEND:
        return ""
    spec = BY_NAME[backend]
    kind = "cpu" if device == "cpu" else "cuda"
    if mode != "inference":
        return f"backend {backend} runs inference only; for {mode} use the {DEFAULT_BACKEND} backend"
    if compile_mode != "none":
        return f"compile modes apply to the {DEFAULT_BACKEND} backend only; backend {backend} needs compile none"
    if channels_last:
        return f"channels_last applies to the {DEFAULT_BACKEND} backend only; backend {backend} takes the NCHW batch"
    if kind not in spec.devices:
        where = " or ".join("CUDA" if d == "cuda" else "the CPU" for d in spec.devices)
        return f"backend {backend} needs {where}, not {device}"
    reason = precision_problem(backend, precision)
    if reason:
        return reason
    absent = missing(backend)
    if absent:
        return f"backend {backend} needs {', '.join(absent)}, not installed: {INSTALL_HINT}"
    if backend == "onnxruntime" and kind == "cuda":
        return cuda_provider_problem()
    return ""
