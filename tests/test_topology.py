"""Each device slot's own CPU cores (bench.hardware.topology): the pure partition, the sysfs readers on
fake trees, and the worker a slot starts, pinned to its share with as many compile threads."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench.hardware import topology
from bench.hardware.topology import (
    cpu_governor, cpu_nodes, cuda_pci_address, format_cpulist, parse_cpulist, partition_cores, pci_numa_node,
    physical_cores, slot_cores,
)
from bench.runner.client import Worker
from bench.runner.runner import Slot
from bench.runner.schedule import slots
from bench.runner.worker import CPUS_ENV


def _fake_sysfs(root: Path, nodes: dict[int, str], siblings: dict[int, str] | None = None,
                gpus: dict[str, str] | None = None) -> Path:
    """A /sys with NUMA nodes (node -> cpulist), hyperthread siblings (cpu -> list) and GPUs
    (PCI address -> numa_node)."""
    for node, cpus in nodes.items():
        (root / "devices/system/node" / f"node{node}").mkdir(parents=True)
        (root / "devices/system/node" / f"node{node}" / "cpulist").write_text(cpus + "\n")
    for cpu, text in (siblings or {}).items():
        (root / "devices/system/cpu" / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (root / "devices/system/cpu" / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(text + "\n")
    for address, node in (gpus or {}).items():
        (root / "bus/pci/devices" / address).mkdir(parents=True)
        (root / "bus/pci/devices" / address / "numa_node").write_text(node + "\n")
    return root


def _cores(n: int) -> list[tuple[int, ...]]:
    return [(i,) for i in range(n)]


def test_cpulists_parse_and_format():
    assert parse_cpulist("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpulist("") == set()
    assert format_cpulist({11, 0, 1, 2, 3, 8, 10}) == "0-3,8,10-11"
    assert format_cpulist([5]) == "5"


def test_one_slot_keeps_every_core_and_equal_contiguous_shares_without_numa():
    assert partition_cores(_cores(8), [None] * 8, [None]) == [tuple(range(8))]
    assert partition_cores(_cores(8), [None] * 8, [None, None]) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    # 10 cores for 3 slots: 3 each, none shared; the tenth stays unused so shares stay equal
    assert partition_cores(_cores(10), [None] * 10, [None] * 3) == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]


def test_gpus_get_cores_of_their_numa_node():
    nodes = [0] * 8 + [1] * 8
    # GPUs 0 and 1 hang off node 1, GPUs 2 and 3 off node 0
    assert partition_cores(_cores(16), nodes, [1, 1, 0, 0]) == [
        (8, 9, 10, 11), (12, 13, 14, 15), (0, 1, 2, 3), (4, 5, 6, 7)]
    # three GPUs on node 0, one on node 1: equal shares, as many as node 0 gives each of its three
    assert partition_cores(_cores(16), nodes, [0, 0, 0, 1]) == [(0, 1), (2, 3), (4, 5), (8, 9)]
    # a slot without a node (a CPU slot, an unknown GPU) takes what the others leave
    assert partition_cores(_cores(16), nodes, [1, None, 1, None]) == [
        (8, 9, 10, 11), (0, 1, 2, 3), (12, 13, 14, 15), (4, 5, 6, 7)]


def test_a_node_too_small_for_its_slots_is_ignored_and_too_many_slots_share_round_robin():
    nodes = [0] + [1] * 7
    assert partition_cores(_cores(8), nodes, [0, 0]) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert partition_cores(_cores(2), [None, None], [None] * 3) == [(0,), (1,), (0,)]


def test_hyperthread_siblings_stay_in_one_share(tmp_path):
    # 4 physical cores, CPU i and i + 4 are siblings (Linux's usual numbering)
    sysfs = _fake_sysfs(tmp_path, {0: "0-7"}, {i: f"{i % 4},{i % 4 + 4}" for i in range(8)})
    cores = physical_cores(range(8), sysfs)
    assert cores == [(0, 4), (1, 5), (2, 6), (3, 7)]
    assert partition_cores(cores, [0] * 4, [None, None]) == [(0, 1, 4, 5), (2, 3, 6, 7)]
    # siblings outside the CPUs we may use are left out; a CPU sysfs knows nothing about is a core
    assert physical_cores({0, 1, 4, 9}, sysfs) == [(0, 4), (1,), (9,)]


def test_sysfs_readers(tmp_path):
    sysfs = _fake_sysfs(tmp_path, {0: "0-3", 1: "4-7"}, gpus={"0000:dc:00.0": "1", "0000:1b:00.0": "-1"})
    assert cpu_nodes(sysfs) == {**dict.fromkeys(range(4), 0), **dict.fromkeys(range(4, 8), 1)}
    assert pci_numa_node("0000:DC:00.0", sysfs) == 1
    assert pci_numa_node("0000:1b:00.0", sysfs) is None  # -1: no NUMA information
    assert pci_numa_node("0000:00:00.0", sysfs) is None  # no such device
    assert cpu_nodes(tmp_path / "nothing") == {}
    (sysfs / "devices/system/cpu/cpu2/cpufreq").mkdir(parents=True)
    (sysfs / "devices/system/cpu/cpu2/cpufreq/scaling_governor").write_text("powersave\n")
    assert cpu_governor(2, sysfs) == "powersave"
    assert cpu_governor(0, sysfs) is None  # no cpufreq, as on most VMs


def test_cuda_pci_address_from_torch_device_properties(monkeypatch):
    props = {0: SimpleNamespace(pci_domain_id=0, pci_bus_id=0xDC, pci_device_id=0), 1: SimpleNamespace()}
    monkeypatch.setattr(torch.cuda, "get_device_properties", props.__getitem__)
    assert cuda_pci_address(0) == "0000:dc:00.0"
    assert cuda_pci_address(1) is None  # a torch without the PCI ids


def test_slot_cores_places_each_gpu_slot_on_its_node(tmp_path, monkeypatch):
    sysfs = _fake_sysfs(tmp_path, {0: "0-7", 1: "8-15"}, gpus={"0000:1b:00.0": "0", "0000:dc:00.0": "1"})
    addresses = {0: "0000:dc:00.0", 1: "0000:1b:00.0", 2: None}
    monkeypatch.setattr(topology, "cuda_pci_address", addresses.__getitem__)
    assert slot_cores(["cuda:0", "cuda:1"], set(range(16)), sysfs) == [tuple(range(8, 16)), tuple(range(8))]
    # only the CPUs this process may use are shared out
    assert slot_cores(["cuda:0", "cuda:1"], set(range(4, 16)), sysfs) == [
        tuple(range(8, 12)), tuple(range(4, 8))]
    assert slot_cores(["cuda:2", "cpu"], set(range(16)), sysfs) == [tuple(range(8)), tuple(range(8, 16))]
    assert slot_cores(["cuda:0"], set(range(16)), sysfs) == [()]  # one slot: not pinned


def test_local_slots_split_this_process_cores():
    allowed = os.sched_getaffinity(0)
    two = slots(["cpu", "cpu"])
    if len(allowed) < 2:
        assert all(s.cores == tuple(sorted(allowed)) for s in two)
        return
    assert set(two[0].cores).isdisjoint(two[1].cores) and set(two[0].cores) | set(two[1].cores) <= allowed
    assert len(two[0].cores) == len(two[1].cores) > 0
    assert slots(["cpu"])[0].cores == ()


def test_a_slot_worker_environment_pins_its_cores_and_compile_threads(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    assert Slot("cpu-2", "cpu", (4, 5, 6, 7)).worker_env() == {CPUS_ENV: "4-7", "TORCHINDUCTOR_COMPILE_THREADS": "4"}
    assert Slot("cpu", "cpu").worker_env() == {}  # a lone slot: every core, Inductor's default threads
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "2")  # the user's setting is inherited, not replaced
    assert Slot("cpu-2", "cpu", (4, 5)).worker_env() == {CPUS_ENV: "4-5"}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin a worker to one of them")
def test_a_slot_worker_runs_on_its_cores_with_its_compile_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    cpu = max(os.sched_getaffinity(0))
    worker = Worker(tmp_path / "worker.log", Slot("cpu-2", "cpu", (cpu,)).worker_env())
    try:
        env = worker.request({"op": "env", "device": "cpu"}, timeout=120)["env"]
        assert os.sched_getaffinity(worker.pid) == {cpu}
    finally:
        worker.stop()
    # pinned before torch loaded: torch's threads are the share's, and Inductor gets as many compile threads
    assert (env["env_cpu_affinity"], env["env_threads"], env["env_compile_threads"]) == (str(cpu), 1, 1)
