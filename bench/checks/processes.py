"""The GPU self-checks that drive other processes, as a sweep or `rvbench scale` does: a real worker
(`oom-recovery`, `max-batch`) and a real torchrun job (`ddp`). Their order and budgets are in
bench.checks.gpu's `CHECKS`."""

from __future__ import annotations

import dataclasses

import torch

from bench.checks.context import CHECK_TIMING, Context
from bench.checks.rules import judge_ddp


def check_oom_recovery(ctx: Context) -> tuple[bool | None, str, dict]:
    from bench.runner.client import Worker

    worker = Worker(ctx.out_dir / "worker-oom-check.log")
    timing = dataclasses.asdict(CHECK_TIMING)
    try:
        huge = ctx.cell("resnet50", 8192, precision="fp32", mode="train")
        first = worker.request({"op": "cell", "cell": huge.config(), "timing": timing}, timeout=600)
        pid_after_oom = worker.pid
        small = ctx.cell("resnet18", 32)
        second = worker.request({"op": "cell", "cell": small.config(), "timing": timing}, timeout=600)
        same_process = worker.pid == pid_after_oom
    finally:
        worker.stop()
    passed = first["status"] == "oom" and second["status"] == "ok" and same_process
    figure = (f"resnet50 train bs8192: {first['status']}; then resnet18 bs32: {second['status']} "
              f"in the {'same' if same_process else 'a new'} worker")
    return passed, figure, {"first": first["status"], "second": second["status"], "same_process": same_process,
                            "first_message": first["message"][:500], "second_message": second["message"][:500]}


def check_max_batch(ctx: Context) -> tuple[bool | None, str, dict]:
    """The predicted largest training batch of resnet50 against `--find-max-batch`'s search (one-step
    probes without power, in a worker on the same GPU), the search starting at the prediction.

    The worker needs the GPU's memory, so this process first gives back all it caches
    (`free_cuda_memory`): only its CUDA context stays."""
    from bench.counting.memory import max_batch
    from bench.execute.prepare import free_cuda_memory
    from bench.runner.runner import Job, Runner, Slot

    cell = ctx.cell("resnet50", 64, precision="amp-bf16", channels_last=True, mode="train")
    free_cuda_memory()
    device = torch.device(ctx.device)
    total = torch.cuda.get_device_properties(device).total_memory
    predicted = max_batch(cell.arch, cell.impl, cell.image_size, cell.precision, cell.mode, total,
                          channels_last=cell.channels_last, capability=torch.cuda.get_device_capability(device))
    runner = Runner(ctx.out_dir, ctx.out_dir.name, CHECK_TIMING, 600, Slot(ctx.device, ctx.device))
    try:
        row, _ = runner.run(Job(dataclasses.replace(cell, batch_size=1), max_batch=True, start=max(1, predicted)))
    finally:
        runner.close()
    found = row["batch_size"] if row["status"] == "ok" else None
    data = {"predicted": predicted, "searched": found, "oom_at": row.get("max_batch_oom_at"),
            "reason": row.get("max_batch_limit_reason"), "status": row["status"]}
    error = "" if not found else f" ({100 * (predicted / found - 1):+.1f}%)"
    return None, f"{cell.arch} train amp-bf16: predicted {predicted}, searched {found}{error}", data


def check_ddp(ctx: Context) -> tuple[bool | None, str, dict]:
    """`rvbench scale`'s launcher with one NCCL rank on ctx.device (made rank 0's cuda:0 by
    CUDA_VISIBLE_DEVICES for the job)."""
    import os

    from bench.execute.ddp import DdpOptions
    from bench.hardware.device import visible_device
    from bench.hardware.gpus import node_link
    from bench.results.store import ResultWriter
    from bench.runner.scale import ScaleSpec, run_scale

    index = torch.device(ctx.device).index or 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    cell = ctx.cell("resnet50", 64, precision="amp-bf16", channels_last=True, mode="train")
    spec = ScaleSpec(cell=dataclasses.replace(cell, device="cuda"), ddp=DdpOptions(), backend="nccl", warmup=5,
                     steps=30, profile_steps=3, timeout_s=300, link=node_link(torch.cuda.get_device_name(index)))
    out = ctx.out_dir / "ddp"
    out.mkdir(parents=True, exist_ok=True)
    writer = ResultWriter(out)
    os.environ["CUDA_VISIBLE_DEVICES"] = visible_device(ctx.device)
    try:
        (row,) = run_scale(spec, [1], out, writer)
    finally:
        writer.close()
        if visible is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
    passed, figure = judge_ddp(row)
    keys = ("status", "throughput", "step_ms_p50", "allreduce_bytes", "grad_bytes", "comm_ms", "comm_share",
            "comm_overlap", "mem_peak_alloc_mb", "rank_stats")
    return passed, figure, {k: row.get(k) for k in keys} | {"message": row["message"][:500]}
