"""Fans a sweep out over the device slots of this machine, one runner per slot, all at once.

The scheduling unit is a group of jobs (`group_jobs`: the implementations of one configuration and
round), which runs back to back on one slot; groups go to whichever slot is free. Each slot's
runner runs in a thread of its own (the measuring happens in its worker subprocess), and hands its
rows to this process's main thread, the run's single writer of results.jsonl. The same loop runs a
single device, so one GPU and eight take the same path.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol

from bench.config.cell import config_label
from bench.hardware.topology import slot_cores
from bench.results import ResultWriter
from bench.runner.runner import Job, Runner, Slot

# How long closing waits for a slot's thread after its worker was killed.
JOIN_S = 30.0


class Progress(Protocol):
    """What the scheduler needs from a progress display (bench.runner.progress): what runs now, and
    each finished cell's row."""

    def set_postfix_str(self, s: str) -> None: ...
    def cell_done(self, row: dict) -> None: ...


def slots(devices: list[str]) -> list[Slot]:
    """One slot per device given; a device named again gets another slot on it, named <device>-2,
    -3, ... With several slots, each gets an equal share of this process's CPU cores, near its GPU
    (bench.hardware.topology.slot_cores), so one slot's compilation cannot starve another's cells.
    CPU slots (the tests') split the cores too, but a CPU's memory bandwidth and caches stay shared:
    their numbers are for tests, not measurements."""
    out: list[Slot] = []
    for device, cores in zip(devices, slot_cores(devices)):
        n = sum(slot.device == device for slot in out) + 1
        out.append(Slot(device if n == 1 else f"{device}-{n}", device, cores))
    return out


class Board:
    """What the slots are doing, for the progress bar's postfix, and each slot's environment."""

    def __init__(self, progress: Progress, on_env: Callable[[str, dict], None]) -> None:
        self._progress = progress
        self._on_env = on_env
        self._doing: dict[str, Job | None] = {}

    def env(self, name: str, env: dict) -> None:
        """A slot is up: record its environment (env.json) and show it idle."""
        self._on_env(name, env)
        self.show(name, None)

    def show(self, name: str, job: Job | None) -> None:
        """Show what slot `name` runs now (None: idle): the full label with one slot, else a short one
        per slot, e.g. "cuda:0 resnet50 rv bs64 | cuda:1 idle"."""
        self._doing[name] = job
        if len(self._doing) == 1:
            self._progress.set_postfix_str("idle" if job is None else job.label())
            return
        self._progress.set_postfix_str(" | ".join(f"{n} {_short(j)}" for n, j in self._doing.items()))

    def done(self, row: dict) -> None:
        """One more job recorded: its row."""
        self._progress.cell_done(row)


def _short(job: Job | None) -> str:
    """A job's arch, impl and batch size (and whether it is a max-batch search), or "idle"."""
    if job is None:
        return "idle"
    cell = job.cell
    label = config_label({"arch": cell.arch, "impl": cell.impl, "batch_size": cell.batch_size}, sep=" ")
    return f"max batch of {label}" if job.max_batch else label


def run_local(runners: list[Runner], groups: list[list[Job]], writer: ResultWriter, board: Board) -> bool:
    """Run the groups on the runners' slots concurrently, writing each row as it arrives.

    Returns False if interrupted by Ctrl-C (or SIGTERM, raised as KeyboardInterrupt by the caller).
    Jobs in flight then get no row (so `--resume` runs them again), and no row is written after
    the interrupt: a row that a killed worker produced would be a false failure. Every runner is
    closed on the way out. An exception in a slot's thread (a bug, a worker that cannot start)
    is raised here.
    """
    todo: queue.Queue[list[Job]] = queue.Queue()
    for group in groups:
        todo.put(group)
    events: queue.Queue[tuple] = queue.Queue()
    stop = threading.Event()
    threads = [threading.Thread(target=_drive, args=(r, todo, events, stop), daemon=True) for r in runners]
    for thread in threads:
        thread.start()
    try:
        live = len(threads)
        while live:
            kind, slot, payload = events.get()
            if kind == "env":
                board.env(slot.name, payload)
            elif kind == "start":
                board.show(slot.name, payload)
            elif kind == "row":
                writer.write(*payload)
                board.done(payload[0])
                board.show(slot.name, None)
            elif kind == "failed":
                raise payload
            else:
                live -= 1
    except KeyboardInterrupt:
        return False
    finally:
        stop.set()
        for runner in runners:
            runner.close()
        for thread in threads:
            thread.join(JOIN_S)
    return True


def _drive(runner: Runner, todo: queue.Queue, events: queue.Queue, stop: threading.Event) -> None:
    """A slot's thread: start its worker, then take groups until none is left or the run stops."""
    try:
        events.put(("env", runner.slot, runner.collect_env()))
        while not stop.is_set():
            try:
                group = todo.get_nowait()
            except queue.Empty:
                return
            for job in group:
                if stop.is_set():
                    return
                events.put(("start", runner.slot, job))
                row, samples = runner.run(job)
                if stop.is_set():  # the reply may come from a worker the interrupt killed
                    return
                events.put(("row", runner.slot, (row, samples)))
    except Exception as exc:  # noqa: BLE001 - re-raised by the main thread
        if not stop.is_set():
            events.put(("failed", runner.slot, exc))
    finally:
        events.put(("done", runner.slot, None))
