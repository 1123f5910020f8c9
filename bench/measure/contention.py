"""Whether the machine was quiet while a cell's timed loop ran, as pyperf's `system show` and
optimum-benchmark's device-isolation check ask: a shared machine slows a step without any change
in the code, and a ratio of two implementations measured under different loads means nothing.

- `others_cpu`: the share of the cell's CPUs' capacity that other processes used during the timed
  loop. The cell's CPUs are its worker's affinity (a slot's own cores, bench.hardware.topology).
  Their busy time is summed from /proc/stat's `cpuN` lines (user, nice, system, irq, softirq and
  steal: on a VM, another guest on our CPU is contention too; idle and iowait are not busy), over
  the loop; our own process tree's CPU time over the loop is taken off; the rest is divided by the
  loop's wall time x those CPUs, and clamped to [0, 1]. Our own tree is this process, all its
  threads (torch's intra-op pool, the power and RSS samplers), and every live descendant (Inductor's
  compile workers and their pool), each with the time of the children it has reaped
  (cutime + cstime), so a child that exits during the loop moves from its own line into its
  parent's rather than vanishing. The worker's parent, the runner, is not ours: it waits on a pipe
  while its slot's cell runs (with several slots, another slot's runner thread may be predicting
  memory on other cores; only the cell's own CPUs count). A descendant reaped while the tree is being read may be counted twice or not at
  all in that one reading; the clamp bounds it.
  Counters tick `SC_CLK_TCK` times a second (usually 100), so a reading is exact to about one tick
  per CPU: over a loop shorter than `MIN_WINDOW_TICKS` ticks the share would be mostly rounding,
  and it is None (the smoke preset's few-millisecond loops). None too where /proc/stat is missing.
- `load_avg`: the 1-minute load average at the cell's start, before its build. It counts our own
  worker too (its previous cells keep it up for a minute), so it is context, not the verdict.
- `gpu_other_procs`: on CUDA, the processes NVML lists on the cell's board (compute and graphics,
  each pid once) at the start and at the end of the loop, the larger count, less our own. Our own
  are this process, its descendants and its parent (the runner, which may hold a context of its
  own on the board: it is rvbench, not a neighbour). NVML lists the host's pids, so in a container
  with its own pid namespace none of ours matches: then the count is None (unknown), since how many
  of the listed processes are rvbench's (the worker, perhaps the runner) cannot be told. None too on
  the CPU, on a MIG slice (`nvml_device` gives no handle), and where NVML lists nothing, which with
  our context open means it cannot see processes.
- `contended`: `others_cpu` >= `CONTENDED_CPU_SHARE`, or another process on the GPU; None when
  neither could be measured.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from bench.columns import values
from bench.hardware.topology import process_cpus
from bench.measure.power import nvml_device, nvml_query

PROC = Path("/proc")
# The busy fields of a /proc/stat `cpuN` line: user nice system (idle iowait) irq softirq steal.
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
# A cell is contended when others used at least this share of its CPUs. A quiet machine reads a few
# hundredths at most (kernel threads, daemons, the runner, tick rounding); at 0.10 another process held
# a tenth of the CPUs the step's threads run on (torch's intra-op pool spans the affinity), which costs
# a step about as much as the 10% spread that flags a cell `noisy`, and more where one preempted thread
# stalls the others at a barrier.
CONTENDED_CPU_SHARE = 0.10
# Shortest loop, in clock ticks, whose share is told: a reading is exact to about a tick per CPU,
# so 20 ticks keep the error near 5%, half the threshold.
MIN_WINDOW_TICKS = 20


def busy_ticks(stat: str, cpus: Collection[int]) -> tuple[int, int]:
    """The busy ticks summed over the `cpuN` lines of /proc/stat text `stat` whose N is in `cpus`,
    and how many such lines there were (an offline CPU has none)."""
    total = found = 0
    for line in stat.splitlines():
        name, *fields = line.split() or ("",)
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            total += sum(int(fields[i]) for i in BUSY_FIELDS if i < len(fields))
            found += 1
    return total, found


def _after_name(stat: str) -> list[str]:
    """The fields of a /proc/<pid>/stat line after the command name, which may hold spaces and
    parentheses: the state first, then the parent's pid."""
    return stat[stat.rindex(")") + 2:].split()


def process_tree(stats: Mapping[int, str], root: int) -> tuple[int, frozenset[int]]:
    """The CPU ticks of process `root` and its descendants, and their pids, from `stats` (pid ->
    /proc/<pid>/stat text): each one's utime + stime (all its threads) + cutime + cstime (its
    reaped children)."""
    fields = {pid: _after_name(text) for pid, text in stats.items()}
    children: dict[int, list[int]] = defaultdict(list)
    for pid, own in fields.items():
        children[int(own[1])].append(pid)
    ticks, tree, todo = 0, set(), [root]
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree.add(pid)
        if pid in fields:
            ticks += sum(int(f) for f in fields[pid][11:15])  # utime stime cutime cstime
        todo += children.get(pid, [])
    return ticks, frozenset(tree)


@dataclass(frozen=True)
class CpuReading:
    """One reading of the counters: when (s), the CPUs' busy ticks and how many CPUs, our tree's ticks and pids."""

    at_s: float
    busy: int
    cpus: int
    own: int
    tree: frozenset[int]


def read_cpu(cpus: Collection[int], proc: Path = PROC, pid: int | None = None) -> CpuReading | None:
    """The counters now, for the CPUs `cpus` and the tree of process `pid` (default: this one), from
    `proc` (a stand-in directory in tests); None where /proc/stat is missing or lists none of `cpus`."""
    at_s = time.perf_counter()
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return None
    busy, found = busy_ticks(stat, cpus)
    if not found:
        return None
    stats = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stats[int(entry.name)] = (entry / "stat").read_text()
            except OSError:  # it exited since the listing
                continue
    own, tree = process_tree(stats, os.getpid() if pid is None else pid)
    return CpuReading(at_s, busy, found, own, tree)


def others_share(start: CpuReading, end: CpuReading, hz: int) -> float | None:
    """The share of the CPUs' capacity between two readings that processes outside our tree used, in
    [0, 1]; None over fewer than MIN_WINDOW_TICKS ticks (see the module docstring)."""
    window_ticks = (end.at_s - start.at_s) * hz
    if window_ticks < MIN_WINDOW_TICKS:
        return None
    others = (end.busy - start.busy) - (end.own - start.own)
    return min(1.0, max(0.0, others / (window_ticks * start.cpus)))


def other_gpu_processes(nvml: ModuleType, handle: Any, ours: Collection[int]) -> int | None:
    """The processes on the board other than `ours` (see the module docstring); None where NVML
    lists none or answers neither query."""
    pids: set[int] = set()
    for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        pids |= {p.pid for p in nvml_query(nvml, handle, (query,)) or ()}
    if not pids:
        return None
    if not pids & set(ours):
        return None  # our pids are not the ones NVML lists (a container's own pid namespace): unknown
    return len(pids - set(ours))


def load_average() -> float | None:
    """The 1-minute load average now; None where the system does not report it."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def is_contended(others_cpu: float | None, gpu_other_procs: int | None) -> bool | None:
    """The cell's verdict: others used at least CONTENDED_CPU_SHARE of its CPUs, or the GPU has
    another process; None when neither was measured."""
    if others_cpu is None and gpu_other_procs is None:
        return None
    return (others_cpu or 0.0) >= CONTENDED_CPU_SHARE or (gpu_other_procs or 0) > 0


class ContentionMonitor:
    """Reads the counters at the start and end of the timed loop; `columns()` turns them into the
    row's contention columns. `gpu` is (pynvml, handle) of a CUDA cell's board, None elsewhere."""

    def __init__(self, load_avg: float | None, gpu: tuple[ModuleType, Any] | None = None) -> None:
        self.load_avg = load_avg
        self._gpu = gpu
        self._cpus = process_cpus() or set()  # the cell's CPUs
        self._cpu: list[CpuReading | None] = []
        self._gpu_procs: list[int | None] = []

    def _sample(self) -> None:
        reading = read_cpu(self._cpus)
        self._cpu.append(reading)
        if self._gpu is not None:
            ours = (reading.tree if reading is not None else {os.getpid()}) | {os.getppid()}
            self._gpu_procs.append(other_gpu_processes(*self._gpu, ours))

    def start(self) -> None:
        """Read the counters: call it right before the loop's first step."""
        self._sample()

    def stop(self) -> None:
        """Read the counters again: right after the loop's final synchronise."""
        self._sample()

    def columns(self) -> dict:
        """The contention columns of the loop between start() and stop()."""
        readings = [r for r in self._cpu if r is not None]
        others = others_share(*readings, os.sysconf("SC_CLK_TCK")) if len(readings) == 2 else None
        gpu = max((n for n in self._gpu_procs if n is not None), default=None)
        return values("contention", others_cpu=others, load_avg=self.load_avg, gpu_other_procs=gpu,
                      contended=is_contended(others, gpu))


def contention_monitor(device: torch.device, load_avg: float | None) -> ContentionMonitor:
    """A monitor for a cell on `device` whose load average at its start was `load_avg`; on CUDA it
    also counts the board's other processes where NVML has a handle for it."""
    found = nvml_device(device)
    return ContentionMonitor(load_avg, gpu=None if isinstance(found, str) else found)
