"""Runs sweep jobs on one device slot in a worker subprocess and turns every outcome into a results row.

A `Runner` drives one slot: one worker process (bench.runner.client), fed one job at a time over a
pipe. Whatever happens to a job - success, OOM, exception, hard crash of the worker, timeout - it
ends as one row with a status, and the sweep goes on: a dead or hung worker is killed and a fresh
one is started for the next job. Jobs are independent (each builds its model fresh), so several
runners, one per device (bench.runner.schedule) or per Ray actor (bench.runner.cluster), share a
sweep. A job's cell keeps the device the sweep expanded it with (its identity, so `--resume` finds
it whichever slot ran it); only the worker sees the slot's own device, which it sees alone (`Slot`).

The cell timeout (`--cell-timeout S`) bounds a cell's time outside compilation; the worker says when
it compiles (bench.runner.worker), and compilation gets its own S seconds. So a max-autotune
compile neither eats into a cell's running time nor makes a max-batch probe look like a misfit,
and a hung compile is still killed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.config.backends import DEFAULT_BACKEND
from bench.config.cell import IMPLS, Cell
from bench.counting.memory import MB, predict_cell_peak
from bench.hardware.device import visible_device
from bench.hardware.topology import COMPILE_THREADS_ENV, format_cpulist
from bench.results import CONFIG_KEYS
from bench.results.analysis import best_configs, config_medians, config_of
from bench.results.rows import make_row
from bench.runner import CPU_MAX_BATCH_LIMIT, MAX_BATCH_LIMIT
from bench.runner.client import Worker, WorkerLost
from bench.runner.worker import CPUS_ENV

# Characters of an error's last line kept as a max-batch search's limit reason.
REASON_CHARS = 200
# Fake-tensor tracing sets thread-local modes; predictions of concurrent slots take turns.
_PREDICT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Slot:
    """One device of the run: `device` is the device its worker runs cells on, as this process names
    it; `name` keys its worker log and fills the rows' `slot` column (a device named twice gets two
    slots: cpu, cpu-2); `cores` are the CPUs its worker runs on (bench.hardware.topology.slot_cores;
    empty: all of this process's, Inductor's default compile threads).

    A CUDA slot's worker sees its GPU alone, as cuda:0 (CUDA_VISIBLE_DEVICES, as Ray shows an actor
    its GPU): what it, a library or Inductor's compile subprocesses do on "the" GPU happens on the
    slot's, never on GPU 0 of the node. The rows still name the slot's device (`slot`)."""

    name: str
    device: str
    cores: tuple[int, ...] = ()

    @property
    def worker_device(self) -> str:
        """The slot's device as its worker sees it: cuda:0 for a GPU (the only one it sees), or cpu."""
        return "cpu" if self.device == "cpu" else "cuda:0"

    def worker_env(self) -> dict[str, str]:
        """What the worker's environment adds to this process's: the one GPU it sees, and with `cores`
        the CPUs it pins itself to and as many Inductor compile threads (unless this process sets
        TORCHINDUCTOR_COMPILE_THREADS, which the worker then inherits)."""
        env = {} if self.device == "cpu" else {"CUDA_VISIBLE_DEVICES": visible_device(self.device)}
        if self.cores:
            env[CPUS_ENV] = format_cpulist(self.cores)
            if COMPILE_THREADS_ENV not in os.environ:
                env[COMPILE_THREADS_ENV] = str(len(self.cores))
        return env

    @property
    def log_name(self) -> str:
        """Its worker's log file, e.g. worker-cuda1.log, worker-cpu-2.log."""
        return f"worker-{self.name.replace(':', '')}.log"


class SearchEnded(Exception):
    """A max-batch search met a failure that is no size limit; `reply` becomes its row."""

    def __init__(self, reply: dict) -> None:
        super().__init__(reply["message"])
        self.reply = reply


@dataclass(frozen=True)
class Job:
    """A cell to measure, or (max_batch) a search for the largest batch of the cell's config, its
    probes starting at batch `start` (a predicted largest batch saves the doubling up to it)."""

    cell: Cell
    max_batch: bool = False
    start: int = 1

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


def group_jobs(jobs: list[Job]) -> list[list[Job]]:
    """Jobs in groups that run back to back on one slot: the implementations of one (configuration,
    round), or of one configuration's max-batch search, so rv speed ÷ reference ratios compare like with like.
    Groups and the jobs within them keep the order of `jobs`."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        key = (*(getattr(job.cell, k) for k in CONFIG_KEYS), job.cell.round, job.max_batch)
        groups.setdefault(key, []).append(job)
    return list(groups.values())


class Runner:
    """Turns jobs into rows on one slot, with one timing config; its worker's log goes to log_dir."""

    def __init__(self, log_dir: Path, run_id: str, timing, cell_timeout: float | None, slot: Slot) -> None:
        self.run_id = run_id
        self.slot = slot
        self._worker = Worker(log_dir / slot.log_name, slot.worker_env())
        self._timing = dataclasses.asdict(timing)
        self._probe_timing = dataclasses.asdict(dataclasses.replace(
            timing, warmup_iters=1, warmup_s=0.0, min_iters=1, min_s=0.0, max_iters=1, target_rel_ci=None,
            power=False))
        self._timeout = cell_timeout
        self.env: dict = {}

    def collect_env(self) -> dict:
        """Ask the slot's worker for bench.measure.env.collect_env; every row of this slot carries it."""
        self.env = self._worker.request({"op": "env", "device": self.slot.worker_device}, self._timeout)["env"]
        return self.env

    def _payload(self, op: str, cell: Cell, **extra) -> dict:
        """A request for the worker: the cell on the slot's device, as the worker names it."""
        return {"op": op, "cell": dataclasses.replace(cell, device=self.slot.worker_device).config(), **extra}

    def _request(self, cell: Cell, timing: dict) -> dict:
        """Measure a cell in the slot's worker; raises WorkerLost on a crash or timeout."""
        return self._worker.request(self._payload("cell", cell, timing=timing), self._timeout)

    def _measure(self, cell: Cell, timing: dict) -> dict:
        try:
            return self._request(cell, timing)
        except WorkerLost as lost:
            return {"status": lost.status, "message": str(lost)}

    def _row(self, job: Job, cell: Cell, reply: dict, started: float, extra: dict) -> dict:
        wall_s = round(time.time() - started, 3)  # before the prediction, which is not the cell's time
        result = reply.get("result", {})
        # Everything but the timed loop (worker start, build, warm-up, compilation, the protocol);
        # null for a row whose cell did not finish timing.
        overhead_s = None if result.get("timed_s") is None else round(wall_s - result["timed_s"], 3)
        return make_row(self.run_id, job.job_id, cell, reply["status"], reply["message"], started=started,
                        env=self.env, **result, slot=self.slot.name, find_max_batch=job.max_batch, **extra,
                        wall_s=wall_s, overhead_s=overhead_s,
                        mem_predicted_mb=predicted_mb(dataclasses.replace(cell, device=self.slot.device)))

    def run(self, job: Job) -> tuple[dict, list[float]]:
        """Run one job; returns its row and timing samples (empty unless ok)."""
        started = time.time()
        if not job.max_batch:
            reply = self._measure(job.cell, self._timing)
            return self._row(job, job.cell, reply, started, {}), reply.get("samples_ms", [])
        try:
            best, misfit_at, reason = self._search(job.cell, job.start)
        except SearchEnded as ended:
            return self._row(job, job.cell, ended.reply, started, _limit(None, None)), []
        if best is None:
            status = "timeout" if reason.startswith("timeout") else "oom"
            reply = {"status": status, "message": f"batch size 1 does not fit ({reason})"}
            return self._row(job, job.cell, reply, started, _limit(1, reason)), []
        cell = dataclasses.replace(job.cell, batch_size=best)
        reply = self._measure(cell, self._timing)
        return self._row(job, cell, reply, started, _limit(misfit_at, reason)), reply.get("samples_ms", [])

    def _misfit(self, base: Cell, batch: int) -> str | None:
        """None if a one-step probe at `batch` runs, else why not (`max_batch_limit_reason`).

        Reasons: "oom"; "crash" (the worker died: how the kernel's OOM killer shows on a CPU);
        "timeout" (too slow outside compilation: a CPU paging to swap) or "timeout compiling";
        "error: <exception line>" (a kernel that cannot take the size, say more than 2**31 elements).
        An error is retried once in a fresh worker first, since it may be a leftover of the previous
        failed probe (a CUDA graph invalidated by an OOM). Raises SearchEnded for what no batch
        size explains: an error at batch 1 (a bug) or a cell the device cannot run (skipped).
        """
        cell = dataclasses.replace(base, batch_size=batch)
        for attempt in range(2):
            try:
                reply = self._request(cell, self._probe_timing)
            except WorkerLost as lost:
                if lost.status == "timeout":
                    return "timeout compiling" if lost.compiling else "timeout"
                return "crash"
            if reply["status"] in ("ok", "oom"):
                return None if reply["status"] == "ok" else "oom"
            if reply["status"] == "skipped" or batch == 1:
                raise SearchEnded({"status": reply["status"], "message": f"at batch size {batch}: {reply['message']}"})
            if attempt == 0:
                self._worker.stop()
        lines = [line for line in reply["message"].splitlines() if line.strip()]
        return "error: " + (lines[-1].strip() if lines else "unknown")[:REASON_CHARS]

    def _search(self, base: Cell, start: int = 1) -> tuple[int | None, int | None, str]:
        """Largest batch that fits: from `start`, double until a batch does not fit (or halve until
        one does), then bisect between the last that fit and the first that did not.

        Returns (best, smallest batch that did not fit, why it did not: see `_misfit`), or
        (best, None, "limit") when every batch up to MAX_BATCH_LIMIT (CPU_MAX_BATCH_LIMIT on a
        CPU) fit. Probes use a one-step timing config; their compilation does not count against
        their timeout (see the module docstring).
        """
        limit = CPU_MAX_BATCH_LIMIT if base.device == "cpu" else MAX_BATCH_LIMIT
        misfit_at, reason = None, "limit"
        batch = max(1, min(start, limit))
        why = self._misfit(base, batch)
        while why is not None and batch > 1:  # the start does not fit: halve until a batch does
            misfit_at, reason, batch = batch, why, batch // 2
            why = self._misfit(base, batch)
        if why is not None:
            return None, 1, why
        best = batch
        while misfit_at is None and batch < limit:  # it fits: double (up to the limit) until one does not
            batch = min(batch * 2, limit)
            why = self._misfit(base, batch)
            if why is None:
                best = batch
            else:
                misfit_at, reason = batch, why
        while misfit_at is not None and misfit_at - best > 1:
            mid = (best + misfit_at) // 2
            why = self._misfit(base, mid)
            if why is None:
                best = mid
            else:
                misfit_at, reason = mid, why
        return best, misfit_at, reason

    def profile(self, cells: list[Cell], profiles_dir: Path) -> list[str]:
        """Profile each cell into profiles_dir/<arch>-<impl>/ with bench.profiling.profile in its worker.

        Returns one line per profile for the terminal (failures included, never raised).
        """
        lines = []
        for cell in cells:
            out_dir = profiles_dir / f"{cell.arch}-{cell.impl}"
            out_dir.mkdir(parents=True, exist_ok=True)
            try:
                reply = self._worker.request(self._payload("profile", cell, out_dir=str(out_dir)), self._timeout)
            except WorkerLost as lost:
                reply = {"status": lost.status, "message": str(lost)}
            lines.append(f"profile {cell.label()}: {reply['status']} {reply['message'][-300:]}".rstrip())
        return lines

    def close(self) -> None:
        """Stop the worker."""
        self._worker.stop()


def lost_row(run_id: str, job: Job, message: str) -> dict:
    """The row of a job that never got a reply (its Ray actor was lost, bench.runner.cluster): an error."""
    return make_row(run_id, job.job_id, job.cell, "error", message, find_max_batch=job.max_batch)


def _limit(misfit_at: int | None, reason: str | None) -> dict:
    """The columns of a max-batch search row: the smallest batch that did not fit, and why."""
    return {"max_batch_oom_at": misfit_at, "max_batch_limit_reason": reason}


def predicted_mb(cell: Cell) -> float | None:
    """The cell's predicted peak CUDA memory in MiB (bench.counting.memory), for its row on any device
    (the slot's: its GPU sizes the cuBLAS workspaces).

    Predicted here, in the runner, after the cell's `wall_s` is taken: it is a model of the cell, not a
    measurement, and the runner's process keeps the per-configuration cache across worker restarts
    (a worker would pay the fake-tensor start-up again after every crash). None, with a warning, for
    a model the fake-tensor trace cannot run: a prediction never costs a row.
    """
    try:
        with _PREDICT_LOCK:
            return predict_cell_peak(cell) / MB
    except Exception as exc:  # noqa: BLE001 - the row's measurement stands without its prediction
        warnings.warn(f"no predicted memory for {cell.label()}: {type(exc).__name__}: {exc}", stacklevel=2)
        return None


def profile_cells(df: pd.DataFrame) -> list[Cell]:
    """Per arch, its best configuration (bench.results.analysis.best_configs, grouped by arch alone)
    as one cell for every impl that ran the arch, so the profiles of an arch compare like with like.
    Only eager rows compete: the profiler sees PyTorch's operators, which another backend does not run."""
    cells = []
    df = df[df["backend"] == DEFAULT_BACKEND]
    for _, best in best_configs(config_medians(df), by=["arch"]).iterrows():
        ran = set(df.loc[df["arch"] == best["arch"], "impl"])
        cells += [Cell(**config_of(best, impl=impl)) for impl in IMPLS if impl in ran]
    return cells

