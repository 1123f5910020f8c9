"""One rank of `rvbench scale`, started by torchrun: `python -m bench.runner.ddp_rank SPEC_JSON`.

torchrun (torch.distributed.run) sets RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous; this module
joins the default process group with an explicit timeout (a dead peer ends a collective with an error
instead of hanging it forever), builds the cell's DDP train step (bench.execute.ddp), and then,
with the same fixed step counts on every rank (a rank that stopped early would leave its peers in an
all-reduce):
1. `warmup` untimed steps (DDP's first steps rebuild its buckets; a compiled step compiles);
2. `steps` timed steps (bench.measure.timing), memory watched as a sweep cell's is (CUDA peak
   allocated; RSS growth on a CPU), the all-reduced bytes counted by the DDP comm hook;
3. `profile_steps` steps under the profiler (Kineto): communication time, its share of the step and the
   share of it hidden under compute (bench.profiling.comm).
Rank 0 gathers every rank's figures into OUT_DIR/result.json, with the environment (bench.measure.env)
when the spec asks for it (the first job of a run: every row carries the same).

Each rank writes OUT_DIR/rank<R>.json as it starts (its pid, so the launcher can check that none
outlives the job) and again with the traceback if it fails. A rank exits, with its process group,
when torchrun's agent (its parent) is gone.

Test hook: RVBENCH_SCALE_FAULT=rank<R> makes rank R raise once its process group is up, as a rank
hitting a bug mid-job would; only this module reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from bench.config.cell import Cell
from bench.config.sweep import TimingConfig
from bench.counting.flops import count_params
from bench.execute.ddp import DdpOptions, ddp_step, grad_bytes
from bench.execute.prepare import prepared_cell
from bench.measure.memory import CudaPeak, RssPeak, weights_bytes
from bench.measure.timing import summarize, synchronize, time_callable
from bench.profiling.comm import comm_stats, profiler_options, split_events
from bench.runner.worker import exit_with_parent

FAULT_ENV = "RVBENCH_SCALE_FAULT"
RESULT_NAME = "result.json"


def rank_file(out_dir: Path, rank: int) -> Path:
    """Where rank `rank` records its pid, and its error if it fails."""
    return out_dir / f"rank{rank}.json"


def _write_json(path: Path, obj: dict) -> None:
    """Written whole or not at all (a temporary file renamed: a full disk or a kill mid-write leaves
    no empty or torn record for the launcher to read). Not bench.results.store's write_atomically:
    that module would import pandas into every rank."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(obj, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _profile(step, device: torch.device, steps: int) -> dict:
    """Run `steps` steps under the profiler; the communication figures of the window.

    torch.autograd.profiler.profile is the Kineto profiler torch.profiler.profile wraps; the wrapper
    would first import Inductor (seconds) to read one of its settings. `profiler_options` says what
    it records: CUDA kernels through Kineto on a GPU, not the legacy fallback's per-op CUDA events."""
    from torch.autograd.profiler import profile

    with profile(**profiler_options(device.type == "cuda")) as prof:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        window_ns = (time.perf_counter() - start) * 1e9
    comm, compute = split_events(prof.kineto_results.events(), on_cuda=device.type == "cuda")
    return comm_stats(comm, compute, window_ns, steps)


def measure_rank(spec: dict, device: torch.device) -> dict:
    """This rank's figures: step-time statistics, memory, bytes all-reduced per step, communication."""
    cell = Cell(**{**spec["cell"], "device": str(device)})
    timing = TimingConfig(warmup_iters=spec["warmup"], warmup_s=0.0, min_iters=spec["steps"], min_s=0.0,
                          max_iters=spec["steps"], target_rel_ci=None)  # every rank runs the same steps
    with prepared_cell(cell) as built:
        step, counter = ddp_step(built, DdpOptions(**spec["ddp"]))
        rss = RssPeak() if device.type == "cpu" else None
        cuda = CudaPeak(device) if device.type == "cuda" else None
        window = {}

        @contextlib.contextmanager
        def timed_window() -> Iterator[None]:
            if cuda is not None:
                cuda.start(lambda: built.optimizer.zero_grad(set_to_none=True))
                step()  # refill the cache released at rest (see bench.measure.memory)
                synchronize(device)
            before = counter.bytes
            yield
            window["bytes"] = counter.bytes - before
            if cuda is not None:
                cuda.stop()

        if rss is not None:
            rss.start()
        try:
            result = time_callable(step, device, timing, around_timed=timed_window())
        finally:
            if rss is not None:
                rss.stop()
        weights = weights_bytes(built.model)
        memory = rss.columns(weights) if rss is not None else cuda.columns(weights)
        comm = _profile(step, device, spec["profile_steps"])
        params_total, params_trainable = count_params(built.model)
        return {
            "params_total": params_total, "params_trainable": params_trainable,
            **summarize(result.samples_ms, cell.batch_size, result.timed_s), "warmup_iters": result.warmup_iters,
            "allreduce_bytes": window["bytes"] / len(result.samples_ms), "grad_bytes": grad_bytes(built.model),
            **comm, **memory, "threads": torch.get_num_threads(),
        }


def run_rank(spec: dict, rank: int) -> None:
    """Join the group, measure, gather every rank's figures on rank 0, which writes result.json."""
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if spec["cell"]["device"] == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(spec["backend"], timeout=timedelta(seconds=spec["pg_timeout_s"]))
    try:
        if os.environ.get(FAULT_ENV) == f"rank{rank}":
            raise RuntimeError(f"injected fault on rank {rank} ({FAULT_ENV})")
        figures = {"rank": rank, "host": socket.gethostname(), "device": str(device), **measure_rank(spec, device)}
        gathered = [None] * dist.get_world_size() if rank == 0 else None
        dist.gather_object(figures, gathered, dst=0)
        if rank == 0:
            from bench.measure.env import collect_env

            env = collect_env(str(device)) if spec["collect_env"] else None
            _write_json(Path(spec["out_dir"]) / RESULT_NAME, {"ranks": gathered, "env": env})
    finally:
        dist.destroy_process_group()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    rank = int(os.environ["RANK"])
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    record = rank_file(Path(spec["out_dir"]), rank)
    _write_json(record, {"rank": rank, "pid": os.getpid()})
    try:
        run_rank(spec, rank)
    except BaseException as exc:
        _write_json(record, {"rank": rank, "pid": os.getpid(), "failed_at": time.time(),
                             "error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()[-2000:]})
        raise


if __name__ == "__main__":
    main()
