"""Runs sweep jobs in worker subprocesses and turns every outcome into a results row.

One worker process per device (`WorkerPool`), fed one job at a time over a pipe. Whatever
happens to a job - success, OOM, exception, hard crash of the worker, timeout - it ends as one
row with a status, and the sweep goes on: a dead or hung worker is killed and a fresh one is
started for the next job. Jobs are independent (each builds its model fresh), so the pool can
later fan out over several GPUs without changing the protocol.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import pandas as pd

from bench.config.cell import IMPLS, Cell
from bench.results import CONFIG_KEYS, SCHEMA_VERSION, ResultWriter
from bench.results.analysis import best_configs, config_medians

# --find-max-batch never probes beyond this batch size on a GPU.
MAX_BATCH_LIMIT = 4096
# ... nor beyond this one on a CPU: a CPU pages to swap long before it runs out of memory, each
# probe of a larger model at batch 512+ takes minutes, and CPU throughput is flat well before 256.
CPU_MAX_BATCH_LIMIT = 256
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerLost(Exception):
    """The worker died (status error) or was killed for running too long (status timeout)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class Worker:
    """One `python -m bench.runner.worker` process; its stderr goes to a log file in the run directory."""

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "bench.runner.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, env=env, text=True, bufsize=1,
            )
        self._replies = queue.Queue()
        threading.Thread(target=self._pump, args=(self._proc.stdout, self._replies), daemon=True).start()
        if self._replies.get() is None:
            raise WorkerLost("error", f"worker failed to start; see {self._log_path}")

    @staticmethod
    def _pump(stream, replies: queue.Queue) -> None:
        for line in stream:
            replies.put(line)
        replies.put(None)

    def request(self, payload: dict, timeout: float | None) -> dict:
        """Send one request and wait for its reply; raise WorkerLost on a crash or timeout."""
        try:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            self._proc.stdin.write(json.dumps(payload) + "\n")
            self._proc.stdin.flush()
            line = self._replies.get(timeout=timeout)
        except BrokenPipeError:
            line = None
        except queue.Empty:
            self.stop()
            raise WorkerLost("timeout", f"over --cell-timeout {timeout:g} s: worker killed and restarted") from None
        if line is None:
            rc = self._proc.wait()
            how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
            self._proc = None
            raise WorkerLost("error", f"worker crashed ({how}); restarted; see {self._log_path.name}")
        reply = json.loads(line)
        if reply.get("worker_exits"):
            self.stop()  # it exits by itself (sticky CUDA error); reap it so the next job starts a fresh one
        return reply

    def stop(self) -> None:
        """Kill the process (a hung cell will not listen to anything gentler)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc.stdin.close()
            self._proc = None


class WorkerPool:
    """Workers keyed by device, started on first use."""

    def __init__(self, run_dir: Path) -> None:
        self._run_dir = run_dir
        self._workers: dict[str, Worker] = {}

    def request(self, device: str, payload: dict, timeout: float | None) -> dict:
        """Send a request to the device's worker (see Worker.request)."""
        if device not in self._workers:
            self._workers[device] = Worker(self._run_dir / f"worker-{device.replace(':', '')}.log")
        return self._workers[device].request(payload, timeout)

    def close(self) -> None:
        """Stop every worker."""
        for worker in self._workers.values():
            worker.stop()


@dataclass(frozen=True)
class Job:
    """A cell to measure, or (max_batch) a search for the largest batch of the cell's config."""

    cell: Cell
    max_batch: bool = False

    @property
    def job_id(self) -> str:
        """The row's cell_id: the cell's id, or a distinct id for the search of its config."""
        if not self.max_batch:
            return self.cell.cell_id
        return hashlib.sha1(f"{self.cell.cell_id}:max-batch".encode()).hexdigest()[:12]

    def label(self) -> str:
        """Progress-bar text."""
        return f"max batch of {self.cell.label()}" if self.max_batch else self.cell.label()


def plan_jobs(cells: list[Cell], find_max_batch: bool) -> list[Job]:
    """The sweep's cells, then (with --find-max-batch) one search per config (batch and round aside)."""
    jobs = [Job(c) for c in cells]
    if find_max_batch:
        bases = dict.fromkeys(dataclasses.replace(c, batch_size=1, round=0) for c in cells)
        jobs += [Job(base, max_batch=True) for base in bases]
    return jobs


class Progress(Protocol):
    """What the runner needs from a progress bar (tqdm has it)."""

    def set_postfix_str(self, s: str) -> None: ...
    def update(self, n: int = 1) -> None: ...


class Runner:
    """Turns jobs into rows, using a worker pool and one timing config."""

    def __init__(self, run_dir: Path, timing, cell_timeout: float | None) -> None:
        self.run_id = run_dir.name
        self._pool = WorkerPool(run_dir)
        self._timing = dataclasses.asdict(timing)
        self._probe_timing = dataclasses.asdict(dataclasses.replace(
            timing, warmup_iters=1, warmup_s=0.0, min_iters=1, min_s=0.0, max_iters=1))
        self._timeout = cell_timeout
        self.env: dict = {}

    def collect_env(self, device: str) -> dict:
        """Ask the device's worker for bench.measure.env.collect_env, once per run; every row carries it."""
        self.env = self._pool.request(device, {"op": "env", "device": device}, self._timeout)["env"]
        return self.env

    def _request(self, cell: Cell, timing: dict) -> dict:
        """Measure a cell in its device's worker; raises WorkerLost on a crash or timeout."""
        payload = {"op": "cell", "cell": cell.config(), "timing": timing}
        return self._pool.request(cell.device, payload, self._timeout)

    def _measure(self, cell: Cell, timing: dict) -> dict:
        try:
            return self._request(cell, timing)
        except WorkerLost as lost:
            return {"status": lost.status, "message": str(lost)}

    def _row(self, job: Job, cell: Cell, reply: dict, started: float, extra: dict) -> dict:
        identity = {
            "schema_version": SCHEMA_VERSION, "run_id": self.run_id, "cell_id": job.job_id,
            **cell.config(), "find_max_batch": job.max_batch, **extra,
            "status": reply["status"], "message": reply["message"],
            "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(time.time() - started, 3),
        }
        return {**reply.get("result", {}), **self.env, **identity}

    def run(self, job: Job) -> tuple[dict, list[float]]:
        """Run one job; returns its row and timing samples (empty unless ok)."""
        started = time.time()
        if not job.max_batch:
            reply = self._measure(job.cell, self._timing)
            return self._row(job, job.cell, reply, started, {}), reply.get("samples_ms", [])
        best, oom_at, failure = self._search(job.cell)
        if failure is not None:
            return self._row(job, job.cell, failure, started, {"max_batch_oom_at": None}), []
        if best is None:
            reply = {"status": "oom", "message": "batch size 1 does not fit (out of memory, crash or timeout)"}
            return self._row(job, job.cell, reply, started, {"max_batch_oom_at": 1}), []
        cell = dataclasses.replace(job.cell, batch_size=best)
        reply = self._measure(cell, self._timing)
        return self._row(job, cell, reply, started, {"max_batch_oom_at": oom_at}), reply.get("samples_ms", [])

    def _search(self, base: Cell) -> tuple[int | None, int | None, dict | None]:
        """Largest batch that fits: double until it does not, then bisect. (best, first misfit, failure).

        Probes use a one-step timing config. "Does not fit" is an OOM, a worker crash (how the
        kernel's OOM killer shows on a CPU) or a timeout; an exception in the cell is a bug, not
        a size limit, so it ends the search and becomes the row. Doubling stops at
        MAX_BATCH_LIMIT (CPU_MAX_BATCH_LIMIT on a CPU).
        """
        def fits(batch: int) -> bool:
            try:
                reply = self._request(dataclasses.replace(base, batch_size=batch), self._probe_timing)
            except WorkerLost:
                return False
            if reply["status"] not in ("ok", "oom"):
                raise WorkerLost(reply["status"], f"at batch size {batch}: {reply['message']}")
            return reply["status"] == "ok"

        limit = CPU_MAX_BATCH_LIMIT if base.device == "cpu" else MAX_BATCH_LIMIT
        best, oom_at = None, None
        try:
            batch = 1
            while batch <= limit and fits(batch):
                best, batch = batch, batch * 2
            oom_at = batch if batch <= limit else None
            while best is not None and oom_at is not None and oom_at - best > 1:
                mid = (best + oom_at) // 2
                best, oom_at = (mid, oom_at) if fits(mid) else (best, mid)
        except WorkerLost as lost:
            return None, None, {"status": lost.status, "message": str(lost)}
        return best, oom_at, None

    def profile(self, cells: list[Cell], profiles_dir: Path) -> list[str]:
        """Profile each cell into profiles_dir/<arch>-<impl>/ with bench.profiling.profile in its worker.

        Returns one line per profile for the terminal (failures included, never raised).
        """
        lines = []
        for cell in cells:
            out_dir = profiles_dir / f"{cell.arch}-{cell.impl}"
            out_dir.mkdir(parents=True, exist_ok=True)
            payload = {"op": "profile", "cell": cell.config(), "out_dir": str(out_dir)}
            try:
                reply = self._pool.request(cell.device, payload, self._timeout)
            except WorkerLost as lost:
                reply = {"status": lost.status, "message": str(lost)}
            lines.append(f"profile {cell.label()}: {reply['status']} {reply['message'][-300:]}".rstrip())
        return lines

    def close(self) -> None:
        """Stop all workers."""
        self._pool.close()


def profile_cells(df: pd.DataFrame) -> list[Cell]:
    """Per arch, its best configuration (bench.results.analysis.best_configs, grouped by arch alone)
    as one cell for every impl that ran the arch, so the profiles of an arch compare like with like."""
    cells = []
    for _, best in best_configs(config_medians(df), by=["arch"]).iterrows():
        config = {key: _plain(best[key]) for key in CONFIG_KEYS}
        ran = set(df.loc[df["arch"] == best["arch"], "impl"])
        cells += [Cell(**config, impl=impl) for impl in IMPLS if impl in ran]
    return cells


def _plain(value):
    """numpy scalar -> python scalar, so Cell fields stay JSON-serialisable."""
    return value.item() if hasattr(value, "item") else value


def run_jobs(runner: Runner, jobs: list[Job], writer: ResultWriter, progress: Progress) -> bool:
    """Run jobs in order, recording each as it finishes. Returns False if interrupted by Ctrl-C.

    The job in flight when Ctrl-C arrives gets no row (so `--resume` runs it again); every
    finished one is already on disk.
    """
    try:
        for job in jobs:
            progress.set_postfix_str(job.label())
            row, samples = runner.run(job)
            writer.write(row, samples)
            progress.update()
    except KeyboardInterrupt:
        return False
    finally:
        runner.close()
    return True
