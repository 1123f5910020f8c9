"""A cell's inference step on a deployment backend (bench.config.backends): export, wrap, check parity.

`deployed_step` takes the cell's eager fp32 model and fixed batch (bench.execute.prepare builds both as for an
eager cell), exports the model to ONNX, loads it into the backend and returns a `Step` that runs one synchronous
inference of the backend on that batch, with the row's `deploy` columns.

Export: `torch.onnx.export` with the dynamo exporter (torch.export, written through onnxscript), opset `OPSET`,
a dynamic batch axis. The legacy TorchScript exporter (`dynamo=False`) works on the same models, faster, but
torch deprecates it ("will be removed"), and it traces timm's ViT with tracer warnings (a tensor turned into a
Python number, so the graph may hold a constant that should vary); the dynamo exporter exports ResNet-18 and
ViT-Tiny of every library here with no warning, at the same logits (to about 1e-6). The example batch is always
`EXPORT_BATCH` images, so the file does not depend on the cell's batch (a batch of 1 would specialise the axis).
One export per (arch, impl, image size) and process, in a temporary directory removed at exit: the export is
always of the fp32 model, so the precision a backend computes in is no part of the key. `export_s` is the
seconds of the export that wrote the file, also on the rows that reuse it (their `export_note` says "cached");
`model_mb` the file's size with its external weights.

Backends:
- onnxruntime: an `InferenceSession`, `intra_op_num_threads` = torch's threads, `inter_op_num_threads` = 1;
  CPUExecutionProvider on the CPU; on CUDA, CUDAExecutionProvider with I/O binding to the cell's tensors
  (untested here: no GPU where this was written);
- openvino: the CPU plugin with `INFERENCE_NUM_THREADS` = torch's threads, `PERFORMANCE_HINT` LATENCY at batch 1
  and THROUGHPUT above, `INFERENCE_PRECISION_HINT` f32 for fp32 (the plugin otherwise computes in bf16 on a CPU
  that has it) and bf16 for bf16, only where the CPU has BF16; one infer request, its input set once;
- tensorrt: an engine built from the ONNX file for the cell's batch shape (FP16 flag for fp16), enqueued on
  torch's current CUDA stream on the cell's tensors, so CUDA events time it as an eager step (untested here: no
  GPU where this was written).
ONNX Runtime and OpenVINO return when their inference is done (ORT synchronises its CUDA stream after a run).

Parity (`parity`): once per built cell, before any timed step, the backend's logits on the batch against eager
fp32 PyTorch's, judged by bench.config.backends.PARITY.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from bench.columns import values
from bench.config.backends import PARITY
from bench.config.cell import Cell
from bench.errors import UsageError
from bench.execute.step import Step

OPSET = 18  # the dynamo exporter's own opset (a lower one would add a version conversion)
EXPORT_BATCH = 2
PARITY_FAIL = "parity_fail"  # how a row's message starts when its logits are out of tolerance
_EXPORTS: dict[tuple[str, str, int], "Export"] = {}
_EXPORT_DIR: list[Path] = []  # the process's temporary directory, made on the first export


@dataclass(frozen=True)
class Export:
    """An exported ONNX file and how it was made."""

    path: Path
    export_s: float  # seconds of the export that wrote it
    model_mb: float  # the .onnx file and its external weights, MiB
    warnings: int  # Python warnings the exporter raised


def _export_dir() -> Path:
    if not _EXPORT_DIR:
        directory = Path(tempfile.mkdtemp(prefix="rvbench-onnx-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        _EXPORT_DIR.append(directory)
    return _EXPORT_DIR[0]


def export_onnx(cell: Cell, model: nn.Module) -> tuple[Export, bool]:
    """The ONNX file of the cell's eager fp32 `model` and whether it was cached (exported earlier in the process).

    Exported from an example batch of `EXPORT_BATCH` seeded images on the model's device, batch axis dynamic.
    """
    key = (cell.arch, cell.impl, cell.image_size)
    if key in _EXPORTS:
        return _EXPORTS[key], True
    folder = Path(tempfile.mkdtemp(prefix="-".join(map(str, key)) + "-", dir=_export_dir()))
    path = folder / "model.onnx"
    device = next(model.parameters()).device
    example = torch.randn(EXPORT_BATCH, 3, cell.image_size, cell.image_size,
                          generator=torch.Generator().manual_seed(0)).to(device)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=OPSET, verbose=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    export_s = time.perf_counter() - start
    size = sum(f.stat().st_size for f in folder.iterdir())
    _EXPORTS[key] = Export(path, export_s, size / 2**20, len(caught))
    return _EXPORTS[key], False


@dataclass
class Session:
    """A loaded backend: `run` is one inference on the fixed batch, `logits` its last output."""

    run: Callable[[], None]
    logits: Callable[[], np.ndarray]
    threads: int | None  # the backend's CPU threads; None for TensorRT (GPU only)
    hint: str | None  # OpenVINO's PERFORMANCE_HINT; None for the others


def _onnxruntime(path: Path, x: torch.Tensor, threads: int) -> Session:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if x.device.type == "cpu":
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        out: list[np.ndarray] = []

        def run() -> None:
            out[:] = session.run(None, feed)

        return Session(run, lambda: out[0], threads, None)
    # CUDA (untested here): the input bound in place, the output kept on the GPU until `logits` copies it.
    index = x.device.index or 0
    session = ort.InferenceSession(str(path), options, providers=[("CUDAExecutionProvider", {"device_id": index})])
    binding = session.io_binding()
    binding.bind_input(session.get_inputs()[0].name, "cuda", index, np.float32, list(x.shape), x.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, "cuda", index)
    return Session(lambda: session.run_with_iobinding(binding), lambda: binding.copy_outputs_to_cpu()[0],
                   threads, None)


def _openvino(path: Path, x: torch.Tensor, threads: int, precision: str) -> Session:
    import openvino as ov

    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise UsageError("backend openvino runs bf16 only on a CPU with BF16 (OpenVINO's OPTIMIZATION_CAPABILITIES); "
                         "use fp32")
    hint = "LATENCY" if x.shape[0] == 1 else "THROUGHPUT"
    compiled = core.compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint,
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
    request = compiled.create_infer_request()
    batch = x.numpy()  # kept alive with the closure: the input tensor shares its memory
    request.set_input_tensor(ov.Tensor(batch, shared_memory=True))
    return Session(lambda: request.infer(), lambda: request.get_output_tensor().data.copy(),
                   int(compiled.get_property("INFERENCE_NUM_THREADS")), hint)


def _tensorrt(path: Path, x: torch.Tensor, precision: str) -> Session:
    """A TensorRT engine for exactly the cell's input shape (untested here: no GPU where this was written)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        raise RuntimeError(f"TensorRT cannot parse {path}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", tuple(x.shape), tuple(x.shape), tuple(x.shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {path} (its log above says why)")
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    context.set_input_shape("x", tuple(x.shape))
    out = torch.empty(tuple(context.get_tensor_shape("logits")), device=x.device)
    context.set_tensor_address("x", x.data_ptr())
    context.set_tensor_address("logits", out.data_ptr())
    stream = torch.cuda.current_stream(x.device)
    return Session(lambda: context.execute_async_v3(stream.cuda_stream), lambda: out.float().cpu().numpy(), None,
                   None)


def parity(got: np.ndarray, want: np.ndarray, precision: str) -> dict:
    """The parity columns of a backend's logits `got` against eager fp32 PyTorch's `want` (batch x classes).

    parity_max_abs = max |got - want|; parity_max_rel = parity_max_abs / max |want| (the difference as a share of
    the largest eager logit, so near-zero logits do not blow it up); parity_cos = cosine similarity of the two
    flattened; parity_top1 = share of images whose argmax agrees; parity_ok: all finite, and cos and top-1 reach
    PARITY[precision] (bench.config.backends).
    """
    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    diff = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b)))
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cos = float(np.dot(a.ravel(), b.ravel()) / norms) if norms else float("nan")
    top1 = float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
    tolerance = PARITY[precision]
    ok = bool(np.isfinite(a).all() and cos >= tolerance.min_cos and top1 >= tolerance.min_top1)
    return {"parity_max_abs": diff, "parity_max_rel": diff / scale if scale else float("nan"),
            "parity_cos": cos, "parity_top1": top1, "parity_ok": ok}


def parity_message(columns: Mapping[str, object], precision: str) -> str:
    """The message of a row whose parity failed ("parity_fail: ..."), "" for one that passed or has none."""
    if columns.get("parity_ok") is not False:
        return ""
    tolerance = PARITY[precision]
    return (f"{PARITY_FAIL}: logits differ from eager fp32: cos {columns['parity_cos']:.6f} (needs "
            f">= {tolerance.min_cos}), top-1 agreement {columns['parity_top1']:.2f} (needs >= {tolerance.min_top1}), "
            f"max abs {columns['parity_max_abs']:.3g}")


def deployed_step(cell: Cell, model: nn.Module, x: torch.Tensor) -> tuple[Step, dict]:
    """The step of a backend cell (one inference of the exported `model` on the batch `x`) and its `deploy`
    columns: export, threads, hint and parity against `model`'s own logits on `x`."""
    exported, cached = export_onnx(cell, model)
    threads = torch.get_num_threads()
    if cell.backend == "onnxruntime":
        session = _onnxruntime(exported.path, x, threads)
    elif cell.backend == "openvino":
        session = _openvino(exported.path, x, threads, cell.precision)
    else:
        session = _tensorrt(exported.path, x, cell.precision)
    with torch.inference_mode():
        want = model(x).float().cpu().numpy()
    session.run()
    note = f"dynamo opset {OPSET}, {exported.warnings} warnings" + (", cached" if cached else "")
    columns = values("deploy", export_s=exported.export_s, model_mb=exported.model_mb, export_note=note,
                     backend_threads=session.threads, backend_hint=session.hint,
                     **parity(session.logits(), want, cell.precision))
    return Step(session.run, False, None, None), columns
