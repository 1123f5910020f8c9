"""The runner's end of one worker subprocess (`python -m bench.runner.worker`): start, request, kill.

A request waits for its reply under the cell timeout, which bounds a cell's time outside compilation
and, separately, its time compiling (the worker says when it compiles). A worker runs in its own
process group, killed as a whole, so Inductor's compile subprocesses go with it. What a killed worker
cannot clean up itself goes with it too: the ONNX export directory it was writing
(bench.config.backends.EXPORT_PREFIX + its pid), removed after the kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.config.backends import EXPORT_PREFIX

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class WorkerLost(Exception):
    """The worker died (status error) or was killed for running too long (status timeout), while
    compiling or not."""

    def __init__(self, status: str, message: str, compiling: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.compiling = compiling


class Worker:
    """One `python -m bench.runner.worker` process; its stderr goes to a log file in the run directory,
    and `env` adds to the environment it inherits (a slot's GPU and cores: bench.runner.runner.Slot)."""

    def __init__(self, log_path: Path, env: dict[str, str] | None = None) -> None:
        self._log_path = log_path
        self._env = env or {}
        self._proc: subprocess.Popen | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()

    def _start(self) -> None:
        env = {**os.environ, **self._env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "bench.runner.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, env=env, text=True, bufsize=1, start_new_session=True,
            )
        self._replies = queue.Queue()
        threading.Thread(target=self._pump, args=(self._proc.stdout, self._replies), daemon=True).start()
        if self._replies.get() is None:
            raise WorkerLost("error", f"worker failed to start; see {self._log_path}")

    @property
    def pid(self) -> int | None:
        """The worker's process id while one runs (None before the first request and after a stop)."""
        return None if self._proc is None else self._proc.pid

    @staticmethod
    def _pump(stream, replies: queue.Queue) -> None:
        for line in stream:
            replies.put(line)
        replies.put(None)

    def request(self, payload: dict, timeout: float | None) -> dict:
        """Send one request and wait for its reply; raise WorkerLost on a crash or timeout.

        `timeout` bounds the time outside compilation and, separately, the time compiling.
        """
        try:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            self._proc.stdin.write(json.dumps(payload) + "\n")
            self._proc.stdin.flush()
            reply = self._reply(timeout)
        except BrokenPipeError:
            reply = None
        if reply is None:
            rc = self._proc.wait()
            how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
            self.stop()  # its process group may outlive it
            raise WorkerLost("error", f"worker crashed ({how}); restarted; see {self._log_path.name}")
        if reply.get("worker_exits"):
            self.stop()  # it exits by itself (sticky CUDA error); reap it so the next job starts a fresh one
        return reply

    def _remove_exports(self, pid: int) -> None:
        """Remove the worker's export directories (`rvbench-onnx-<pid>-*` in its temporary directory)."""
        tmp = Path(self._env.get("TMPDIR") or os.environ.get("TMPDIR") or tempfile.gettempdir())
        for leftover in tmp.glob(f"{EXPORT_PREFIX}{pid}-*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _reply(self, timeout: float | None) -> dict | None:
        """The request's reply (None if the worker died), following its compiling notices: two
        budgets of `timeout` seconds, one spent while compiling, one otherwise."""
        left = {False: timeout, True: timeout}
        compiling = False
        while True:
            waited = time.monotonic()
            try:
                line = self._replies.get(timeout=None if timeout is None else max(left[compiling], 0.0))
            except queue.Empty:
                self.stop()
                what = "compiling" if compiling else "outside compilation"
                raise WorkerLost("timeout", f"over --cell-timeout {timeout:g} s {what}: worker killed and restarted",
                                 compiling=compiling) from None
            if timeout is not None:
                left[compiling] -= time.monotonic() - waited
            if line is None:
                return None
            message = json.loads(line)
            if "compiling" not in message:
                return message
            compiling = message["compiling"]

    def stop(self) -> None:
        """Kill the worker's process group: the worker and Inductor's compile subprocesses (a hung
        cell will not listen to anything gentler); then remove the ONNX export directory it may have
        been writing (its own removal would not run)."""
        # Taken first: a stop from a signal's handler may run while this one is under way, and must find it done.
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is gone: worker and children exited
        proc.wait()
        with contextlib.suppress(BrokenPipeError):  # a request the dead worker never read
            proc.stdin.close()
        self._remove_exports(proc.pid)
