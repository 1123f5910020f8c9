"""Which CPU cores each device slot of this machine gets, so that slots on one node leave each other alone.

A cold compile starts about one Inductor compile process per core it sees; with several GPU slots on
one node, one slot's compile would starve another slot's batch-1 cell of the CPU that launches its
kernels. So with more than one slot, each slot's worker runs on cores of its own (`slot_cores`):
equal shares of this process's CPUs, in whole physical cores (hyperthread siblings stay together),
taken from the NUMA node of the slot's GPU where sysfs says which that is, contiguous otherwise
(`partition_cores`). The runner starts each worker pinned to its share, with Inductor's compile
threads set to it (bench.runner.runner.Slot). A lone slot keeps every core and Inductor's default.

Linux's sysfs says where things are: /sys/bus/pci/devices/<address>/numa_node for a GPU,
/sys/devices/system/node/node<N>/cpulist for a node's CPUs and
/sys/devices/system/cpu/cpu<N>/topology/thread_siblings_list for a core's. The readers take the
sysfs root, so the tests give them a fake tree; what a reader cannot find it does not know (None),
and the shares fall back to contiguous ones.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

SYSFS = Path("/sys")
# Inductor's setting of its compile threads (subprocesses), read when torch._inductor.config is imported.
COMPILE_THREADS_ENV = "TORCHINDUCTOR_COMPILE_THREADS"
# A physical core: its logical CPUs (hyperthread siblings), ascending.
Core = tuple[int, ...]


def parse_cpulist(text: str) -> set[int]:
    """The CPUs of a sysfs/taskset list, e.g. "0-3,8,10-11" -> {0, 1, 2, 3, 8, 10, 11}; "" -> set()."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def format_cpulist(cpus: Iterable[int]) -> str:
    """The list form of a CPU set, ranges collapsed: {0, 1, 2, 3, 8} -> "0-3,8"."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def process_cpus() -> set[int] | None:
    """The CPUs this process may run on (its affinity: a slot's worker, its slot's cores); None where the
    system cannot say (macOS)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def cpu_governor(cpu: int, sysfs: Path = SYSFS) -> str | None:
    """CPU `cpu`'s cpufreq scaling governor ("performance", "powersave", ...): a CPU that lowers its clock
    when idle times short steps slower. None where the kernel exposes no cpufreq (most VMs)."""
    return _read(sysfs / f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor")


def physical_cores(cpus: Collection[int], sysfs: Path = SYSFS) -> list[Core]:
    """`cpus` grouped into physical cores (each core's siblings among `cpus`), ordered by their first CPU.
    A CPU whose siblings sysfs does not list is a core of its own."""
    cores: dict[Core, None] = {}
    for cpu in sorted(cpus):
        siblings = _read(sysfs / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology" / "thread_siblings_list")
        core = tuple(sorted(parse_cpulist(siblings) & set(cpus))) if siblings else (cpu,)
        cores[core or (cpu,)] = None
    return sorted(cores, key=min)


def cpu_nodes(sysfs: Path = SYSFS) -> dict[int, int]:
    """Each CPU's NUMA node, from the nodes' cpulists (empty where sysfs has no node directory)."""
    nodes: dict[int, int] = {}
    root = sysfs / "devices" / "system" / "node"
    for path in root.glob("node[0-9]*") if root.is_dir() else ():
        text = _read(path / "cpulist")
        if text is not None and path.name[4:].isdigit():
            nodes.update(dict.fromkeys(parse_cpulist(text), int(path.name[4:])))
    return nodes


def pci_numa_node(address: str, sysfs: Path = SYSFS) -> int | None:
    """The NUMA node of the PCI device at `address` ("0000:dc:00.0"); None when sysfs does not say
    (no such file, or -1: a machine without NUMA information)."""
    text = _read(sysfs / "bus" / "pci" / "devices" / address.lower() / "numa_node")
    return int(text) if text is not None and text.lstrip("-").isdigit() and int(text) >= 0 else None


def cuda_pci_address(index: int) -> str | None:
    """CUDA device `index`'s PCI address as sysfs names it ("0000:dc:00.0"), from torch's device
    properties; None for a torch that does not report it."""
    import torch

    props = torch.cuda.get_device_properties(index)
    ids = [getattr(props, name, None) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if any(i is None for i in ids):
        return None
    domain, bus, device = ids
    return f"{domain:04x}:{bus:02x}:{device:02x}.0"


def partition_cores(cores: Sequence[Core], core_nodes: Sequence[int | None],
                    slot_nodes: Sequence[int | None]) -> list[tuple[int, ...]]:
    """Each slot's logical CPUs: the same number of whole physical cores for every slot, none shared.

    `cores` are the physical cores to share out (in order), `core_nodes` the NUMA node of each, and
    `slot_nodes` the node each slot should run on (its GPU's; None: anywhere). Each slot gets
    len(cores) // len(slots) cores, fewer where a node holds too few for the slots that want it (equal
    shares keep the slots' rows comparable: a group goes to whichever slot is free); a slot with a
    node takes them from its node, the others contiguous runs of what is left. When a node cannot
    give its slots a core each, nodes are ignored. More slots than cores cannot be isolated: each
    slot gets one core, shared round-robin. One slot gets every core.
    """
    n = len(slot_nodes)
    if n <= 1 or len(cores) < n:
        shares = [[cores[i % len(cores)]] for i in range(n)] if n > 1 and cores else [list(cores)] * n
        return [tuple(sorted(cpu for core in share for cpu in core)) for share in shares]
    share = len(cores) // n
    wanted: dict[int, list[int]] = {}
    for slot, node in enumerate(slot_nodes):
        if node is not None and node in core_nodes:
            wanted.setdefault(node, []).append(slot)
    on_node = {node: [c for c, cn in zip(cores, core_nodes) if cn == node] for node in wanted}
    share = min([share] + [len(on_node[node]) // len(slots) for node, slots in wanted.items()])
    if share == 0:
        wanted, share = {}, len(cores) // n
    shares: list[list[Core]] = [[] for _ in range(n)]
    for node, slots in wanted.items():
        for k, slot in enumerate(slots):
            shares[slot] = on_node[node][k * share:(k + 1) * share]
    taken = {core for share_ in shares for core in share_}
    rest = [core for core in cores if core not in taken]
    anywhere = [slot for slot in range(n) if not shares[slot]]
    for k, slot in enumerate(anywhere):
        shares[slot] = rest[k * share:(k + 1) * share]
    return [tuple(sorted(cpu for core in share_ for cpu in core)) for share_ in shares]


def slot_cores(devices: Sequence[str], cpus: Collection[int] | None = None,
               sysfs: Path = SYSFS) -> list[tuple[int, ...]]:
    """The logical CPUs of each device slot (`devices`: "cpu" or "cuda:N", one per slot, repeats
    allowed): `partition_cores` of `cpus` (default: the CPUs this process may run on), each CUDA slot
    near its GPU. A lone slot gets () (not pinned: every core, as before)."""
    if len(devices) <= 1 or (cpus is None and not hasattr(os, "sched_getaffinity")):  # (macOS cannot pin)
        return [()] * len(devices)
    cpus = os.sched_getaffinity(0) if cpus is None else cpus
    cores = physical_cores(cpus, sysfs)
    nodes = cpu_nodes(sysfs)
    slot_nodes = []
    for device in devices:
        address = cuda_pci_address(int(device.split(":")[1])) if device.startswith("cuda:") else None
        slot_nodes.append(None if address is None else pci_numa_node(address, sysfs))
    return partition_cores(cores, [nodes.get(core[0]) for core in cores], slot_nodes)
