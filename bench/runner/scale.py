"""`rvbench scale`'s launcher: one torchrun job per world size, and each job's outcome as one row.

Each world size runs `python -m torch.distributed.run ... -m bench.runner.ddp_rank SPEC` (the real
launcher, c10d rendezvous, no restarts) in its own session, bounded by `timeout_s`: past it, torchrun
and every rank (each rank is a session of its own, started by torchrun) are killed with their
process groups. A job that fails (a rank raised, or it timed out) is an `error` or `timeout` row
naming the first rank that failed and why, and the next world size runs; a finished job's ranks are
checked gone by the pids they recorded. On one node the rendezvous is 127.0.0.1 on a free port; on
several, every node runs the same command with the same HOST:PORT, and the node of global rank 0
gets the figures of all ranks and writes the rows.

Rows have mode DDP_MODE and the "scale" columns of bench.columns: the step-time columns are the
maximum over ranks of each statistic (a data-parallel step is as slow as its slowest rank), the
throughput is every rank's images at that step time, and the efficiency is weak scaling (fixed batch
per rank) against the smallest world size of the run that finished:
`(throughput_n / n) / (throughput_base / base)`, 1 for 1 rank against itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.columns import DDP_MODE, names
from bench.config.cell import Cell
from bench.execute.ddp import DdpOptions
from bench.hardware.gpus import Link, ring_allreduce_s
from bench.intervals import relative_ci
from bench.results.rows import make_row
from bench.results.rundir import env_recorder
from bench.results.store import ResultWriter
from bench.runner.ddp_rank import RESULT_NAME
from bench.runner.endpoint import free_port

# Characters of torchrun's log kept in a row whose ranks recorded no error.
LOG_TAIL_CHARS = 1500
# The rendezvous's timeout at most (rendezvous_timeout), and how often a job still meeting there says so.
RDZV_TIMEOUT_S = 120
RDZV_REPORT_S = 10.0
# How often the launcher looks at a running job.
POLL_S = 0.5
# The ranks import bench from this checkout, wherever the command runs.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass(frozen=True)
class ScaleSpec:
    """What every world size of a scale run measures: the per-rank cell (its batch_size is per rank,
    its device "cpu" or "cuda"), DDP's settings, the launch and the fixed step counts."""

    cell: Cell
    ddp: DdpOptions
    backend: str  # nccl or gloo
    warmup: int
    steps: int
    profile_steps: int
    timeout_s: float  # per world size, torchrun's start to its end
    link: Link | None  # for the ring all-reduce bound; None: no bound
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # HOST:PORT with several nodes; one node: 127.0.0.1 on a free port

    def to_json(self) -> dict:
        """The spec as config.json records it."""
        return dataclasses.asdict(self)


@dataclass
class Launch:
    """How one torchrun job ended."""

    returncode: int | None  # None: killed at the timeout
    wall_s: float
    rendezvous_s: int  # the rendezvous's own timeout (rendezvous_timeout)


def _children(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid` (torchrun and each rank lead their own)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _rank_records(job_dir: Path) -> list[dict]:
    """What each rank recorded (bench.runner.ddp_rank writes them whole); a file that is not one
    (left by an older rvbench, or unreadable) is passed over."""
    records = []
    for path in sorted(job_dir.glob("rank*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("pid"), int):
            records.append(record)
    return records


def rendezvous_timeout(timeout_s: float) -> int:
    """Seconds the nodes have to meet at the rendezvous: a quarter of a job's --timeout, at most
    RDZV_TIMEOUT_S, so a bad endpoint or a node that never comes fails early, not at --timeout."""
    return max(1, int(min(RDZV_TIMEOUT_S, timeout_s / 4)))


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver the first that came: stopping a job
    must not be cut short by a second signal, or its ranks would outlive it. The handlers are swapped
    for the block, not the thread's signal mask: Python runs handlers in the main thread whichever
    thread a signal reaches (CUDA's driver threads included), so a mask would hold nothing."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])


def _stop(proc: subprocess.Popen | None, job_dir: Path) -> None:
    """Kill torchrun, if it still runs, with every process under it (their own process groups), and
    every rank that recorded its pid and outlived it."""
    if proc is not None and proc.poll() is None:
        for pid in _children(proc.pid):
            _kill_group(pid)
        _kill_group(proc.pid)
        proc.wait()
    for record in _rank_records(job_dir):
        if alive(record["pid"]):
            _kill_group(record["pid"])


def _wait(proc: subprocess.Popen, timeout_s: float, endpoint: str, rdzv_s: int) -> int | None:
    """torchrun's exit code, or None past `timeout_s`; every RDZV_REPORT_S until torchrun starts its
    ranks (it does once every node has come to the rendezvous), a line saying it waits."""
    start = time.monotonic()
    report: float | None = start + RDZV_REPORT_S  # None: the ranks have started
    while True:
        try:
            return proc.wait(timeout=max(0.0, min(POLL_S, start + timeout_s - time.monotonic())))
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now >= start + timeout_s:
            return None
        if report is not None and _children(proc.pid):
            report = None
        if report is not None and now >= report:
            print(f"  waiting for every node at the rendezvous {endpoint}: {now - start:.0f} s so far; it "
                  f"gives up after {rdzv_s} s", flush=True)
            report = now + RDZV_REPORT_S


def launch(spec: ScaleSpec, nproc: int, job_dir: Path, threads: int | None, collect_env: bool) -> Launch:
    """Run one torchrun job of `nproc` ranks per node in `job_dir` (its spec, rank records, log and
    result); kill it and every rank after `spec.timeout_s`. `threads`: OMP_NUM_THREADS per rank;
    `collect_env`: rank 0 adds the environment to the result. On return, torchrun and every rank
    that recorded its pid are gone."""
    job_dir.mkdir(parents=True, exist_ok=True)
    rank_spec = {"cell": spec.cell.config(), "ddp": dataclasses.asdict(spec.ddp), "backend": spec.backend,
                 "warmup": spec.warmup, "steps": spec.steps, "profile_steps": spec.profile_steps,
                 "pg_timeout_s": spec.timeout_s, "out_dir": str(job_dir),
                 "collect_env": collect_env}
    (job_dir / "spec.json").write_text(json.dumps(rank_spec))
    endpoint = spec.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    rdzv_s = rendezvous_timeout(spec.timeout_s)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--nnodes", str(spec.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
               "--rdzv-conf", f"join_timeout={rdzv_s},read_timeout={min(rdzv_s, 60)}",
               "--rdzv-id", f"rvbench-{job_dir.parent.name}-{job_dir.name}", "--max-restarts", "0",
               "-m", "bench.runner.ddp_rank", str(job_dir / "spec.json")]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.monotonic()
    proc = returncode = None
    try:
        with signals_held(), open(job_dir / "torchrun.log", "ab") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        returncode = _wait(proc, spec.timeout_s, endpoint, rdzv_s)
    finally:
        # Past the timeout, or a signal here (the job's own session never sees the terminal's Ctrl-C).
        with signals_held():
            _stop(proc, job_dir)
    return Launch(returncode, time.monotonic() - start, rdzv_s)


def _failure(spec: ScaleSpec, world_size: int, job_dir: Path, outcome: Launch) -> tuple[str, str]:
    """(status, message) of a job that did not finish: the first rank's error, else torchrun's log."""
    if outcome.returncode is None:
        return "timeout", (f"world size {world_size}: over --timeout {spec.timeout_s:g} s: torchrun and its ranks "
                           f"killed; see {job_dir / 'torchrun.log'}")
    failed = sorted((r for r in _rank_records(job_dir) if "error" in r), key=lambda r: r["failed_at"])
    if failed:
        first = failed[0]
        others = f" ({len(failed) - 1} more rank(s) failed after it)" if len(failed) > 1 else ""
        return "error", f"world size {world_size}: rank {first['rank']} failed: {first['error']}{others}\n{first['traceback']}"
    tail = (job_dir / "torchrun.log").read_text(errors="replace")[-LOG_TAIL_CHARS:]
    if not _rank_records(job_dir):
        return "error", (f"world size {world_size}: torchrun exited with code {outcome.returncode} before any rank "
                         f"started (the nodes have {outcome.rendezvous_s} s to meet at the rendezvous; its log "
                         f"says why)\n{tail}")
    return "error", f"world size {world_size}: torchrun exited with code {outcome.returncode}\n{tail}"


def _maximum(ranks: list[dict], key: str) -> float | None:
    values = [r[key] for r in ranks if r.get(key) is not None]
    return max(values) if values else None


def _mean(ranks: list[dict], key: str) -> float | None:
    values = [r[key] for r in ranks if r.get(key) is not None]
    return statistics.fmean(values) if values else None


# The step-time statistics of a world size are its slowest rank's: every rank waits for it in the all-reduce
# (the ends of the median's interval too; `rel_ci` and the throughput's interval then follow from them).
SLOWEST_RANK = tuple(c for c in names("timing") if c.startswith("step_ms_"))


def figures(spec: ScaleSpec, world_size: int, ranks: list[dict]) -> dict:
    """The measurement columns of a finished job from its ranks' figures (see the module docstring)."""
    first, images = ranks[0], world_size * spec.cell.batch_size
    p50 = _maximum(ranks, "step_ms_p50")
    low, high = _maximum(ranks, "step_ms_p50_ci_low"), _maximum(ranks, "step_ms_p50_ci_high")
    ci = None if low is None or high is None else (low, high)
    timed_s = _maximum(ranks, "timed_s")
    memory = "mem_peak_alloc_mb" if first["mem_peak_alloc_mb"] is not None else "mem_rss_delta_mb"
    bound = None if spec.link is None else ring_allreduce_s(first["allreduce_bytes"], world_size, spec.link) * 1e3
    stats = [{"rank": r["rank"], "host": r["host"], "step_ms_p50": r["step_ms_p50"], "step_ms_p90": r["step_ms_p90"],
              "step_ms_p99": r["step_ms_p99"], memory: r[memory]} for r in ranks]
    return {
        "params_total": first["params_total"], "params_trainable": first["params_trainable"],
        "n_iters": first["n_iters"], "timed_s": timed_s, "warmup_iters": first["warmup_iters"],
        **{k: _maximum(ranks, k) for k in SLOWEST_RANK},
        "noisy": any(r["noisy"] for r in ranks),
        "rel_ci": relative_ci(p50, ci),
        "throughput": images / (p50 / 1e3),
        "throughput_ci_low": None if ci is None else images / (high / 1e3),
        "throughput_ci_high": None if ci is None else images / (low / 1e3),
        "throughput_wall": images * first["n_iters"] / timed_s,
        **{k: _maximum(ranks, k) for k in ("mem_peak_alloc_mb", "mem_peak_reserved_mb", "mem_activation_mb",
                                           "mem_rss_delta_mb")},
        "mem_weights_mb": first["mem_weights_mb"], "mem_note": f"max over ranks; {first['mem_note']}",
        "threads_per_rank": first["threads"], "rank_stats": json.dumps(stats),
        **{k: _mean(ranks, k) for k in ("comm_ms", "comm_share", "comm_overlap")},
        "allreduce_bytes": first["allreduce_bytes"], "grad_bytes": first["grad_bytes"],
        "link": None if spec.link is None else spec.link.name,
        "link_gbytes_s": None if spec.link is None else spec.link.gbytes_s, "allreduce_bound_ms": bound,
    }


def job_id(spec: ScaleSpec, world_size: int) -> str:
    """The row's cell_id: the per-rank cell, world size, nodes, backend and DDP settings."""
    blob = json.dumps({**spec.cell.config(), "world_size": world_size, "nnodes": spec.nnodes,
                       "backend": spec.backend, **dataclasses.asdict(spec.ddp)}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def run_scale(spec: ScaleSpec, nprocs: list[int], run_dir: Path, writer: ResultWriter) -> list[dict]:
    """Run every world size (ranks per node in `nprocs`, ascending), write a row for each as it ends
    and return the rows; env.json from the first job that reports it. A node without global rank 0
    writes no row (its job's figures are on that node)."""
    cpu_threads = None
    if spec.cell.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Weak scaling: every rank of every world size gets the same share of the cores.
        cpu_threads = max(1, len(os.sched_getaffinity(0)) // max(nprocs))
    rows: list[dict] = []
    record_env, env = env_recorder(run_dir), None
    base: tuple[int, float] | None = None  # (world size, throughput) of the smallest finished job
    for nproc in sorted(nprocs):
        world_size = nproc * spec.nnodes
        job_dir = run_dir / "scale" / f"{spec.cell.impl}-ws{world_size}"
        started = time.time()
        print(f"world size {world_size} ({spec.nnodes} node(s) x {nproc}) ...", flush=True)
        outcome = launch(spec, nproc, job_dir, cpu_threads, collect_env=env is None)
        settings = {"mode": DDP_MODE, "find_max_batch": False, "wall_s": round(outcome.wall_s, 3),
                    "world_size": world_size, "nnodes": spec.nnodes, "ddp_backend": spec.backend,
                    "ddp_bucket_mb": spec.ddp.bucket_mb, "ddp_static_graph": spec.ddp.static_graph,
                    "ddp_grad_as_bucket_view": spec.ddp.grad_as_bucket_view}
        result_path = job_dir / RESULT_NAME
        if outcome.returncode == 0 and result_path.exists():
            result = json.loads(result_path.read_text())
            if env is None:
                env = result["env"]
                record_env(spec.cell.device, env)
            measured = figures(spec, world_size, sorted(result["ranks"], key=lambda r: r["rank"]))
            base = base or (world_size, measured["throughput"])
            row = make_row(run_dir.name, job_id(spec, world_size), spec.cell, "ok", started=started, env=env,
                           **settings, **measured, overhead_s=round(outcome.wall_s - measured["timed_s"], 3),
                           scaling_efficiency=(measured["throughput"] / world_size) / (base[1] / base[0]),
                           scaling_base=base[0])
        elif outcome.returncode == 0:
            print(f"world size {world_size}: done; its figures are on the node of global rank 0")
            continue
        else:
            status, message = _failure(spec, world_size, job_dir, outcome)
            row = make_row(run_dir.name, job_id(spec, world_size), spec.cell, status, message, started=started,
                           **settings)
        writer.write(row, None)
        rows.append(row)
        print(f"world size {world_size}: {row['status']}"
              + (f", {row['throughput']:.1f} img/s" if row["status"] == "ok" else f": {row['message'].splitlines()[0]}"),
              flush=True)
    return rows
