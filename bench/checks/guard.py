"""A hard wall-clock guard for the parts of `rvbench gpu-validate`: each part a child process of its
own, stopped when it would overrun its budget, so a part that hangs takes nothing else with it.

`Child` runs one command in its own session with its stdout read line by line on a thread, so the
guard can wait for the next line with a deadline. `Child.stop` sends its process group SIGTERM, waits
the part's grace, then SIGKILLs the group. The rvbench commands it runs stop what they started on
SIGTERM: gpu-check ends the check in flight (its worker, its torchrun job, each in a session of its
own), `rvbench run` stops its workers and writes its results and report in the smoke part's longer
grace, and a worker whose parent is gone kills itself (bench.runner.worker.exit_with_parent).

`run_checks` guards the checks of `rvbench gpu-check`, each with its own budget: it starts
`gpu-check --only <the checks left>` and reads its verdict lines; a check that overruns is stopped
(the child killed) and recorded as skipped for budget with the seconds it used, and a fresh child
goes on with the checks after it, in the time the part has left.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Seconds a stopped child has between SIGTERM and SIGKILL, unless its part says otherwise.
GRACE_S = 5.0
# Seconds a gpu-check child may take from its start to its first line (importing torch, CUDA's context).
START_S = 15.0
# gpu-check's header, printed once the device is resolved: "gpu-check on cuda:0 (NVIDIA H200): 14 checks".
HEADER = re.compile(r"^gpu-check on \S+")
# gpu-check's line for one finished check: "PASS   2 timing   bs64: ...  (12 s)".
VERDICT = re.compile(r"^(PASS|FAIL|INFO)\s+\d+\s+(\S+)\s+(.*?)\s+\((\d+) s\)$")
SKIPPED = "SKIPPED"


class Child:
    """One guarded command: its stdout lines through `lines(deadline)`, its stderr into `log`."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.started = time.monotonic()
        with open(log, "ab") as err:
            self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1,
                                          start_new_session=True, env=env)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next_line(self, deadline: float) -> str | None:
        """The child's next stdout line; None when it closed its stdout (it ended); TimeoutError at
        `deadline` (time.monotonic)."""
        try:
            return self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError from None

    def lines(self, deadline: float) -> Iterator[str]:
        """Its stdout lines until it ends; TimeoutError at `deadline`."""
        while (line := self.next_line(deadline)) is not None:
            yield line

    def wait(self) -> int:
        """Its exit code, once its stdout is closed (bounded: a child that closed stdout but lingers is
        stopped)."""
        try:
            return self._proc.wait(GRACE_S)
        except subprocess.TimeoutExpired:
            return self.stop()

    def stop(self, grace_s: float = GRACE_S) -> int:
        """SIGTERM to its whole group, SIGKILL after `grace_s`; returns its exit code."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
            try:
                os.killpg(self._proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self._proc.wait(wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        return self._proc.wait()


@dataclass
class PartResult:
    """What one guarded part did: ok (exit 0), failed (another exit code), or skipped for budget
    (stopped at its deadline, or never started for want of time), with the seconds it used."""

    name: str
    budget_s: float
    status: str = "not run"
    seconds: float = 0.0
    exit_code: int | None = None
    lines: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)


def run_part(result: PartResult, argv: list[str], log: Path, deadline: float,
             echo: Callable[[str], None], grace_s: float = GRACE_S) -> PartResult:
    """Run a command as the part `result`, echoing its lines, stopped at min(its budget, `deadline`)
    with `grace_s` to finish between SIGTERM and SIGKILL."""
    start = time.monotonic()
    stop_at = min(start + result.budget_s, deadline)
    if stop_at - start <= grace_s:
        result.status = "skipped: budget"
        return result
    child = Child(argv, log)
    try:
        for line in child.lines(stop_at):
            echo(line)
            result.lines.append(line)
        result.exit_code = child.wait()
        result.status = "ok" if result.exit_code == 0 else "failed"
    except TimeoutError:
        result.status = "skipped: budget"
    finally:  # also when the guard itself is stopped: no child outlives it
        result.exit_code = child.stop(grace_s) if result.exit_code is None else result.exit_code
        result.seconds = time.monotonic() - start
    return result


def run_checks(result: PartResult, budgets: dict[str, float], argv: Callable[[list[str], int], list[str]],
               log: Path, deadline: float, echo: Callable[[str], None]) -> PartResult:
    """Run gpu-check's checks (`budgets`: name -> seconds, in order) as the part `result`, each
    stopped at its budget. `argv(names, attempt)` is the command that runs `names`, the attempt-th
    child (each writes its own directory). A check that overruns, or whose child dies, gets a row of
    its own (skipped: budget, or FAIL with the exit code) and the next child starts after it."""
    start = time.monotonic()
    part_end = min(start + result.budget_s, deadline)
    todo, attempt = list(budgets), 0
    while todo:
        now = time.monotonic()
        if part_end - now <= START_S:
            result.checks += [_skipped(name, 0.0, "no time left in the part") for name in todo]
            break
        attempt += 1
        child = Child(argv(todo, attempt), log)
        try:
            todo = _follow(child, todo, budgets, min(now + START_S, part_end), part_end, result, echo)
        finally:
            child.stop()
    result.seconds = time.monotonic() - start
    skipped = any(c["verdict"] == SKIPPED for c in result.checks)
    failed = any(c["verdict"] == "FAIL" for c in result.checks)
    result.status = "skipped: budget" if skipped else ("failed" if failed else "ok")
    return result


def _follow(child: Child, todo: list[str], budgets: dict[str, float], start_by: float, part_end: float,
            result: PartResult, echo: Callable[[str], None]) -> list[str]:
    """Read one gpu-check child until it ends or a check overruns; returns the checks still to run."""
    deadline, since = start_by, None
    try:
        while todo:
            line = child.next_line(deadline)
            if line is None and since is None:  # it never started: another child would fail the same way
                code = child.wait()
                result.checks += [{"name": name, "verdict": "FAIL", "seconds": 0.0,
                                   "figure": f"gpu-check did not start (exit code {code}; its log says why)"}
                                  for name in todo]
                echo(_line(result.checks[-1]))
                return []
            if line is None:  # ended before finishing its checks: the current check killed it
                code = child.wait()
                used = time.monotonic() - since
                result.checks.append({"name": todo[0], "verdict": "FAIL", "seconds": used,
                                      "figure": f"its process exited with {code} during this check"})
                echo(_line(result.checks[-1]))
                return todo[1:]
            echo(line)
            result.lines.append(line)
            if since is None and HEADER.match(line):
                since = time.monotonic()
            elif (found := VERDICT.match(line)) and found.group(2) == todo[0]:
                result.checks.append({"name": todo.pop(0), "verdict": found.group(1), "figure": found.group(3),
                                      "seconds": float(found.group(4))})
                since = time.monotonic()
            else:
                continue
            if todo:
                deadline = min(since + budgets[todo[0]], part_end)
        for line in child.lines(part_end):  # its closing lines; it writes its files as it ends
            echo(line)
            result.lines.append(line)
        child.wait()
    except TimeoutError:
        if not todo:  # every check reported: only its closing lines were late
            return todo
        used = 0.0 if since is None else time.monotonic() - since
        why = "its process did not start in time" if since is None else f"over its {budgets[todo[0]]:g} s budget"
        result.checks.append(_skipped(todo[0], used, why))
        echo(_line(result.checks[-1]))
        return todo[1:]
    return todo


def _skipped(name: str, seconds: float, why: str) -> dict:
    return {"name": name, "verdict": SKIPPED, "figure": f"skipped: budget ({why})", "seconds": seconds}


def _line(check: dict) -> str:
    """A check row the guard made (gpu-check could not print it), laid out as gpu-check's, "--" for its number."""
    return f"{check['verdict']}  -- {check['name']:<20} {check['figure']}  ({check['seconds']:.0f} s)"


def python_argv(*args: str) -> list[str]:
    """This interpreter running `python -m bench <args>` (unbuffered, so every line comes as printed)."""
    return [sys.executable, "-u", "-m", "bench", *args]
