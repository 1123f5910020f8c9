"""A real two-node Ray cluster on this machine, for the cluster tests, listening on 127.0.0.1 only.

Each node is a process of its own session (raylet, object store, agents and the actors' workers
under it), so a test can kill one node exactly, and teardown stops exactly the processes the test
started: SIGTERM to each node's process group, then SIGKILL; never `ray stop`, which would stop
every Ray on the machine.

Why not `ray start`: on Linux it either binds every interface (cluster mode) or, with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (local mode: everything on 127.0.0.1), refuses a second node.
So each node is started as ray.cluster_utils.Cluster (Ray's own multi-node test helper) starts its
nodes, `ray._private.node.Node`, in local mode, with every port it would fix chosen free. Every
node offers one unit of `rvbench_cpu`, the resource that stands for a benchmark slot with
`--device cpu`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.runner.endpoint import free_port

# Local mode (node IP 127.0.0.1, every server on it) and no usage reports; Ray also notices a dead
# node within about a second instead of 30 s.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "2",
           "RAY_health_check_initial_delay_ms": "0"}
START_S = 90.0
STOP_S = 15.0

_NODE = """
import json, sys, threading
from ray._private.node import Node
from ray._private.parameter import RayParams
head = sys.argv[1] == "head"
node = Node(RayParams(**json.loads(sys.argv[2])), head=head, shutdown_at_exit=False, spawn_reaper=False)
print("up", node.gcs_address, flush=True)
threading.Event().wait()
"""


class LocalCluster:
    """A head node and one joined node; `address` is the head's GCS address (HOST:PORT)."""

    def __init__(self, node_env: tuple[dict, dict] = ({}, {})) -> None:
        """`node_env`: extra environment of the head's and of the joined node's processes, actors included
        (an actor's worker reads RVBENCH_FAULT from its node, not from the driver)."""
        # Unix socket paths under the temp dir must stay under 107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="rvr", dir="/tmp")
        self.address = f"127.0.0.1:{free_port()}"
        self.nodes: list[subprocess.Popen] = []
        try:
            self.nodes.append(self._start("head", node_env[0], gcs_server_port=int(self.address.split(":")[1]),
                                          include_dashboard=False, ray_client_server_port=free_port()))
            self.nodes.append(self._start("worker", node_env[1], gcs_address=self.address))
        except BaseException:
            self.stop()
            raise

    def _start(self, kind: str, env: dict, **params) -> subprocess.Popen:
        params = {"node_ip_address": "127.0.0.1", "num_cpus": 1, "resources": {"rvbench_cpu": 1},
                  "temp_dir": self.temp_dir, "object_store_memory": 100 * 2**20, "min_worker_port": 0,
                  "max_worker_port": 0, "dashboard_agent_listen_port": free_port(),
                  "metrics_export_port": free_port(), "include_log_monitor": False, **params}
        with open(Path(self.temp_dir) / f"{kind}.err", "w") as err:
            proc = subprocess.Popen([sys.executable, "-c", _NODE, kind, json.dumps(params)], env={**self.env(), **env},
                                    stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        deadline = time.monotonic() + START_S
        line = ""
        while time.monotonic() < deadline and not line.startswith("up"):
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"ray {kind} node failed: {(Path(self.temp_dir) / f'{kind}.err').read_text()[-2000:]}")
        if not line.startswith("up"):
            raise RuntimeError(f"ray {kind} node not up within {START_S:g} s")
        return proc

    def env(self) -> dict:
        """The environment for processes that talk to this cluster (the driver too); the nodes' temporary
        files (the actors' worker logs under rvbench/) stay in the cluster's directory."""
        return {**os.environ, **RAY_ENV, "TMPDIR": self.temp_dir}

    def kill_node(self, i: int) -> None:
        """Kill node i at once (SIGKILL to its process group): raylet, agents, actors."""
        _killpg(self.nodes[i], signal.SIGKILL)

    def stop(self) -> None:
        """Stop every node this cluster started: SIGTERM, then SIGKILL what is left."""
        for proc in self.nodes:
            _killpg(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_S
        for proc in self.nodes:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _killpg(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
