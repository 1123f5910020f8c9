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
One export per (arch, impl, image size) and process, kept in memory: the exporter writes one self-contained file
(`external_data=False`, weights inside; every model here is far below protobuf's 2 GiB limit) into a fresh
directory `rvbench-onnx-<pid>-*` under the temporary directory, its bytes are read and the directory removed at
once, and every backend loads the bytes (ORT's `InferenceSession`, OpenVINO's `read_model`, TensorRT's parser all
take them). Nothing is left on disk between cells: the runner kills its workers with SIGKILL, so an atexit hook
would never run; a worker killed during an export leaves its directory, which the runner removes by its pid
(bench.runner.client.Worker.stop). The export is always of the fp32 model, so the precision a backend computes
in is no part of the key. `export_s` is the seconds of the export that made the model, also on the rows that
reuse it (their `export_note` says "cached"); `model_mb` the file's size.

Backends:
- onnxruntime: an `InferenceSession`, `intra_op_num_threads` = torch's threads, `inter_op_num_threads` = 1;
  CPUExecutionProvider on the CPU; on CUDA, CUDAExecutionProvider (onnxruntime-gpu; the session must report it
  first, no silent CPU fallback) with `use_tf32` 0 so fp32 is fp32, and I/O binding to the cell's tensors
  (untested here: no GPU where this was written);
- openvino: the CPU plugin with `INFERENCE_NUM_THREADS` = torch's threads, `PERFORMANCE_HINT` LATENCY at batch 1
  and THROUGHPUT above, `NUM_STREAMS` 1, `INFERENCE_PRECISION_HINT` f32 for fp32 (the plugin otherwise computes
  in bf16 on a CPU that has it) and bf16 for bf16, only where the CPU has BF16 (checked before the export); one
  synchronous infer request, its input set once. NUM_STREAMS is pinned because THROUGHPUT alone splits the
  threads into several streams (2 threads gave 2 streams of 1 thread) and one request runs on one stream, so it
  would use a share of the threads `backend_threads` reports; with one stream the request uses them all, as the
  eager step does. `backend_threads` is the compiled model's own INFERENCE_NUM_THREADS, read back, and the
  session refuses to run if it reports more than one stream;
- tensorrt: an engine built from the ONNX model for the cell's batch shape (FP16 flag for fp16; TF32, on by
  default in the builder, cleared for fp32), enqueued on a dedicated CUDA stream that waits for torch's current
  stream and that torch's current stream waits for in turn, so CUDA events on torch's stream time it as an
  eager step (untested here: no GPU where this was written).
ONNX Runtime and OpenVINO return when their inference is done (ORT synchronises its CUDA stream after a run).

Parity (`parity`): once per built cell, before any timed step, the backend's logits on the batch against eager
fp32 PyTorch's, judged by bench.config.backends.PARITY. Top-1 agreement counts only the images whose eager top-2
margin exceeds `TIE_TOLERANCE` x max |eager logit|: random-weight models give nearly tied logits, whose argmax
any correct rounding may flip. Eager logits that are not finite raise an error (the backend is not to blame).
"""

from __future__ import annotations

import os
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
from bench.config.backends import EXPORT_PREFIX, PARITY
from bench.config.cell import Cell
from bench.errors import UsageError
from bench.execute.step import Step

OPSET = 18  # the dynamo exporter's own opset (a lower one would add a version conversion)
EXPORT_BATCH = 2
PARITY_FAIL = "parity_fail"  # how a row's message starts when its logits are out of tolerance
TIE_TOLERANCE = 1e-4  # top-1 ignores images whose eager top-2 margin is below this share of max |logit|
_EXPORTS: dict[tuple[str, str, int], "Export"] = {}


@dataclass(frozen=True)
class Export:
    """An exported ONNX model (the serialized file, weights inside, held in memory) and how it was made."""

    model: bytes
    export_s: float  # seconds of the export that made it
    model_mb: float  # the .onnx file, MiB
    warnings: int  # Python warnings the exporter raised


def export_onnx(cell: Cell, model: nn.Module) -> tuple[Export, bool]:
    """The ONNX model of the cell's eager fp32 `model` and whether it was cached (exported earlier in the process).

    Exported from an example batch of `EXPORT_BATCH` seeded images on the model's device, batch axis dynamic, to a
    file in a fresh `EXPORT_PREFIX<pid>-` directory that is read into memory and removed before this returns.
    """
    key = (cell.arch, cell.impl, cell.image_size)
    if key in _EXPORTS:
        return _EXPORTS[key], True
    folder = Path(tempfile.mkdtemp(prefix=f"{EXPORT_PREFIX}{os.getpid()}-"))
    try:
        _EXPORTS[key] = _export(model, cell.image_size, folder / "model.onnx")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return _EXPORTS[key], False


def _export(model: nn.Module, image_size: int, path: Path) -> Export:
    device = next(model.parameters()).device
    example = torch.randn(EXPORT_BATCH, 3, image_size, image_size,
                          generator=torch.Generator().manual_seed(0)).to(device)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=OPSET, verbose=False,
                          external_data=False, input_names=["x"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    export_s = time.perf_counter() - start
    if len(list(path.parent.iterdir())) != 1:
        raise RuntimeError(f"the ONNX export wrote more than one file ({sorted(os.listdir(path.parent))}): "
                           "external weights are not expected")
    data = path.read_bytes()
    return Export(data, export_s, len(data) / 2**20, len(caught))


@dataclass
class Session:
    """A loaded backend: `run` is one inference on the fixed batch, `logits` its last output."""

    run: Callable[[], None]
    logits: Callable[[], np.ndarray]
    threads: int | None  # the backend's CPU threads; None for TensorRT (GPU only)
    hint: str | None  # OpenVINO's PERFORMANCE_HINT; None for the others
    handle: object = None  # the backend's own object (ORT session, OpenVINO compiled model, TensorRT context)


def _onnxruntime(model: bytes, x: torch.Tensor, threads: int) -> Session:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if x.device.type == "cpu":
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        out: list[np.ndarray] = []

        def run() -> None:
            out[:] = session.run(None, feed)

        return Session(run, lambda: out[0], threads, None, session)
    # CUDA (untested here: no GPU): TF32 off so fp32 is fp32 (ORT's CUDA provider defaults to use_tf32 1); the
    # input bound in place, the output kept on the GPU until `logits` copies it.
    index = x.device.index or 0
    session = ort.InferenceSession(model, options, providers=[
        ("CUDAExecutionProvider", {"device_id": index, "use_tf32": 0})])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"ONNX Runtime did not run on CUDA (providers {session.get_providers()}): "
                           "pip install onnxruntime-gpu")
    binding = session.io_binding()
    binding.bind_input(session.get_inputs()[0].name, "cuda", index, np.float32, list(x.shape), x.data_ptr())
    binding.bind_output(session.get_outputs()[0].name, "cuda", index)
    return Session(lambda: session.run_with_iobinding(binding), lambda: binding.copy_outputs_to_cpu()[0],
                   threads, None, session)


def openvino_bf16_problem(precision: str) -> str:
    """Why OpenVINO cannot run `precision` on this CPU ("" when it can): bf16 needs BF16 in its capabilities."""
    if precision != "bf16":
        return ""
    import openvino as ov

    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return ""
    return "backend openvino runs bf16 only on a CPU with BF16 (OpenVINO's OPTIMIZATION_CAPABILITIES); use fp32"


def _openvino(model: bytes, x: torch.Tensor, threads: int, precision: str) -> Session:
    import openvino as ov

    core = ov.Core()
    hint = "LATENCY" if x.shape[0] == 1 else "THROUGHPUT"
    # NUM_STREAMS 1: THROUGHPUT would split the threads into streams, and the one request would get one stream's.
    compiled = core.compile_model(core.read_model(model), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": hint, "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
    streams = int(compiled.get_property("NUM_STREAMS"))
    used = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    if streams != 1:
        raise RuntimeError(f"OpenVINO compiled {streams} streams, not the 1 asked for: one request would not use "
                           f"all {used} threads")
    request = compiled.create_infer_request()
    batch = x.numpy()  # kept alive with the closure: the input tensor shares its memory
    request.set_input_tensor(ov.Tensor(batch, shared_memory=True))
    return Session(lambda: request.infer(), lambda: request.get_output_tensor().data.copy(), used, hint, compiled)


def _tensorrt(model: bytes, x: torch.Tensor, precision: str) -> Session:
    """A TensorRT engine for exactly the cell's input shape (untested here: no GPU where this was written)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model):
        raise RuntimeError(f"TensorRT cannot parse the ONNX model: {parser.get_error(0)}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:  # fp32 is fp32: the builder turns TF32 on by default (untested here: no GPU)
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", tuple(x.shape), tuple(x.shape), tuple(x.shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build an engine from the ONNX model (its log above says why)")
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    context = engine.create_execution_context()
    context.set_input_shape("x", tuple(x.shape))
    out = torch.empty(tuple(context.get_tensor_shape("logits")), device=x.device)
    context.set_tensor_address("x", x.data_ptr())
    context.set_tensor_address("logits", out.data_ptr())
    # A dedicated stream (not the legacy default one, which TensorRT warns about and which synchronises with
    # every other stream): it waits for torch's current stream, and torch's current stream waits for it, so CUDA
    # events recorded on torch's stream bracket the inference. `x` and `out` live as long as the session, so no
    # record_stream is needed. Untested here: no GPU where this was written.
    stream = torch.cuda.Stream(x.device)

    def run() -> None:
        current = torch.cuda.current_stream(x.device)
        stream.wait_stream(current)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT could not enqueue the inference")
        current.wait_stream(stream)

    return Session(run, lambda: out.float().cpu().numpy(), None, None, context)


def parity(got: np.ndarray, want: np.ndarray, precision: str) -> dict:
    """The parity columns of a backend's logits `got` against eager fp32 PyTorch's `want` (batch x classes).

    parity_max_abs = max |got - want|; parity_max_rel = parity_max_abs / max |want| (the difference as a share of
    the largest eager logit, so near-zero logits do not blow it up); parity_cos = cosine similarity of the two
    flattened; parity_top1 = share of images whose argmax agrees, among those whose eager top-2 margin exceeds
    `TIE_TOLERANCE` x max |want| (nearly tied logits, as random weights give, flip under any rounding; 1.0 when
    no image is that clear); parity_ok: all finite, and cos and top-1 reach PARITY[precision]
    (bench.config.backends). Raises ValueError when `want` is not finite: the eager reference itself is broken.
    """
    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.isfinite(b).all():
        raise ValueError("the eager fp32 reference logits are not finite (NaN or inf): parity cannot be judged; "
                         "the model itself, not the backend, is broken")
    diff = float(np.max(np.abs(a - b)))
    scale = float(np.max(np.abs(b)))
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    cos = float(np.dot(a.ravel(), b.ravel()) / norms) if norms else float("nan")
    margin = np.diff(np.sort(b, axis=1)[:, -2:], axis=1)[:, 0] if b.shape[1] > 1 else np.full(len(b), np.inf)
    clear = margin > TIE_TOLERANCE * scale
    agree = a.argmax(axis=1) == b.argmax(axis=1)
    top1 = float(np.mean(agree[clear])) if clear.any() else 1.0
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
    unable = openvino_bf16_problem(cell.precision) if cell.backend == "openvino" else ""
    if unable:  # before the export, which would be wasted
        raise UsageError(unable)
    exported, cached = export_onnx(cell, model)
    threads = torch.get_num_threads()
    if cell.backend == "onnxruntime":
        session = _onnxruntime(exported.model, x, threads)
    elif cell.backend == "openvino":
        session = _openvino(exported.model, x, threads, cell.precision)
    else:
        session = _tensorrt(exported.model, x, cell.precision)
    with torch.inference_mode():
        want = model(x).float().cpu().numpy()
    session.run()
    note = f"dynamo opset {OPSET}, {exported.warnings} warnings" + (", cached" if cached else "")
    columns = values("deploy", export_s=exported.export_s, model_mb=exported.model_mb, export_note=note,
                     backend_threads=session.threads, backend_hint=session.hint,
                     **parity(session.logits(), want, cell.precision))
    return Step(session.run, False, None, None), columns
