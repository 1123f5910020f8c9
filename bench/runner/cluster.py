"""Fans a sweep out over a Ray cluster: one long-lived actor per GPU, rows streamed to the driver.

Ray places the actors (`num_gpus=1` each; for `--device cpu`, one unit of the custom resource
`rvbench_cpu` that a node declares with `ray start --resources '{"rvbench_cpu": 1}'`). Each actor
holds a `Runner`, so its cells run in a worker subprocess on its node with the crash, OOM and
timeout isolation of a local run. The driver (this process) hands each free actor the next job of
its group, or a new group, and writes every row it gets back: it stays the single writer of
results.jsonl. The code the actors run is the driver's own tree, shipped with Ray's `py_modules`,
so a node needs rvbench's dependencies but not its checkout.

An actor lost mid-job (its node died, its process was killed) costs no row: the job, and the rest
of its group, go to the next free actor; a job whose actor is lost a second time becomes an
`error` row with the reason. Rows already written stay as they are.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.errors import UsageError
from bench.provenance import git_state
from bench.results import ResultWriter
from bench.runner.endpoint import parse_endpoint, resolve
from bench.runner.runner import Job, Runner, Slot, lost_row
from bench.runner.schedule import Board

INSTALL_HINT = "pip install 'rvbench[cluster]'"
# The custom resource a node offers per CPU benchmark slot (CPUs themselves are Ray's to hand out).
CPU_RESOURCE = "rvbench_cpu"
# How long the cluster's address has to answer before --cluster gives up (exit 2).
CONNECT_TIMEOUT_S = 30.0
# A gRPC client's first bytes, HTTP/2's preface and an empty SETTINGS frame: a gRPC server (Ray's GCS,
# its client server) answers with a SETTINGS frame (type 4) of its own.
GRPC_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4
# Times a job may lose its actor before it is recorded as an error.
LOST_LIMIT = 2
# The actors run the driver's bench and rv_models. Ray would kill an actor's child processes when the
# actor ends, the worker alone; the worker kills its whole process group itself once its actor is gone
# (bench.runner.worker), so Inductor's compile subprocesses go too.
RUNTIME_ENV = {
    "py_modules": [str(Path(__file__).resolve().parents[2] / name) for name in ("bench", "rv_models")],
    "env_vars": {"RAY_kill_child_processes_on_worker_exit": "false"},
}


class SlotsLost(Exception):
    """Every actor of the run was lost while jobs were left: they stay for `--resume`."""


def connect(address: str) -> None:
    """ray.init the cluster at `address` (ray://HOST:PORT, HOST:PORT, or "auto": $RAY_ADDRESS), shipping
    bench and rv_models to its nodes. UsageError without Ray, without RAY_ADDRESS, or when it does not
    answer within CONNECT_TIMEOUT_S (`_check_answers`; both forms alike). Ray's own log lines of the
    attempt go to a file, named in the error, not to the terminal."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--cluster needs Ray, which is not installed: {INSTALL_HINT}") from None
    if address == "auto":
        address = os.environ.get("RAY_ADDRESS", "")
        if not address:
            raise UsageError("--cluster auto: RAY_ADDRESS is not set; give --cluster HOST:PORT or ray://HOST:PORT")
    _check_answers(address)
    # The address just answered: one attempt of Ray's (its default retries for 20 minutes), unless set.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "1")
    with tempfile.NamedTemporaryFile(prefix="rvbench-ray-connect-", suffix=".log", delete=False) as log:
        try:
            with _stderr_to(log.fileno()):
                ray.init(address=address, runtime_env=RUNTIME_ENV, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"cannot connect to the Ray cluster at {address}: {reason} "
                             f"(Ray's log: {log.name})") from None
    os.unlink(log.name)


def _check_answers(address: str) -> None:
    """UsageError unless a gRPC server (Ray's GCS at HOST:PORT, its client server at ray://HOST:PORT)
    answers at the address within CONNECT_TIMEOUT_S: an unknown host, a refused or silent port is
    one line at once, not Ray's retries."""
    host, port = parse_endpoint(address.removeprefix("ray://"), "--cluster")
    resolve(host, port, "--cluster")
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    header = b""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as sock:
            sock.sendall(GRPC_HELLO)
            while len(header) < 9:
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                chunk = sock.recv(9 - len(header))
                if not chunk:
                    break
                header += chunk
    except TimeoutError:
        reason = f"no answer within {CONNECT_TIMEOUT_S:g} s"
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
    else:
        if len(header) == 9 and header[3] == HTTP2_SETTINGS:
            return
        reason = "something answers there, but not a Ray cluster (no gRPC)"
    raise UsageError(f"cannot connect to the Ray cluster at {address}: {reason}")


@contextmanager
def _stderr_to(fd: int) -> Iterator[None]:
    """Send this process's stderr (file descriptor 2: Ray's C++ logging writes there) to `fd` meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def cluster_device(device: str) -> str:
    """The device every actor runs cells on (Ray shows an actor only its own GPU, as cuda:0): for
    `--device` auto, cuda or cpu. UsageError for a GPU index, or when no node offers the slot kind."""
    import ray

    resources = ray.cluster_resources()
    if device == "auto":
        device = "cuda" if resources.get("GPU") else "cpu"
    if device not in ("cuda", "cpu"):
        raise UsageError(f"--device {device} with --cluster: use cuda (one actor per GPU of the cluster) or cpu")
    if device == "cuda" and not resources.get("GPU"):
        raise UsageError("--cluster: no node of the cluster has a GPU; for CPU slots use --device cpu")
    if device == "cpu" and not resources.get(CPU_RESOURCE):
        raise UsageError(f"--cluster --device cpu: no node offers the resource {CPU_RESOURCE}; start nodes with "
                         f"ray start --resources '{{\"{CPU_RESOURCE}\": 1}}'")
    return "cpu" if device == "cpu" else "cuda:0"


class SlotActor:
    """A benchmark slot on a cluster node: a Runner whose worker logs go to the node's temporary
    directory (rvbench/<run id>/node-<Ray node id>/), with the driver's git state in its environment
    (the code it runs)."""

    def __init__(self, run_id: str, timing, cell_timeout: float | None, device: str, git: dict) -> None:
        import ray

        name = device if device == "cpu" else f"cuda:{ray.get_gpu_ids()[0]}"
        log_dir = Path(tempfile.gettempdir()) / "rvbench" / run_id / f"node-{ray.get_runtime_context().get_node_id()[:12]}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._runner = Runner(log_dir, run_id, timing, cell_timeout, Slot(name, device))
        self._git = git

    def env(self) -> tuple[str, dict]:
        """Start the worker; its environment, and the slot's name as the board shows it (host/device)."""
        env = self._runner.collect_env()
        env.update(self._git)
        return f"{env['env_host']}/{self._runner.slot.name}", env

    def run(self, job: Job) -> tuple[dict, list[float]]:
        """Run one job (Runner.run)."""
        return self._runner.run(job)


def run_cluster(groups: list[list[Job]], writer: ResultWriter, board: Board, run_id: str, timing,
                cell_timeout: float | None, device: str) -> bool:
    """Run the groups on one actor per slot of the cluster (`connect` first), writing each row as it
    arrives. Returns False if interrupted (Ctrl-C, SIGTERM); raises SlotsLost when every actor is
    lost with jobs left. The actors are killed on the way out; their workers follow them."""
    import ray
    from ray.exceptions import RayActorError

    commit, dirty = git_state()
    resource = {"resources": {CPU_RESOURCE: 1}} if device == "cpu" else {"num_gpus": 1}
    n = int(ray.cluster_resources().get(CPU_RESOURCE if device == "cpu" else "GPU", 0))
    actor = ray.remote(SlotActor).options(num_cpus=0, max_restarts=0, **resource)
    git = {"env_git_commit": commit, "env_git_dirty": dirty}
    actors = [actor.remote(run_id, timing, cell_timeout, device, git) for _ in range(n)]
    names: dict[int, str] = {}
    todo = deque(deque(group) for group in groups)
    losses: dict[str, int] = {}
    idle: list[int] = []
    # In flight: (actor index, rest of its group, job) per object ref; job None: the actor is starting.
    flight: dict = {actors[i].env.remote(): (i, deque(), None) for i in range(n)}

    def start(i: int, group: deque) -> None:
        job = group.popleft()
        flight[actors[i].run.remote(job)] = (i, group, job)
        board.show(names[i], job)

    def feed() -> None:
        while idle and todo:
            start(idle.pop(), todo.popleft())

    def working() -> bool:
        """Jobs in flight, or jobs left and actors that may still take them (an actor the cluster
        has no room for stays starting: once no job is left, nobody waits for it)."""
        return any(job is not None for _, _, job in flight.values()) or bool(todo and flight)

    try:
        while working():
            ready, _ = ray.wait(list(flight), num_returns=1)
            i, group, job = flight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayActorError as exc:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                name = names.get(i, f"actor {i}")
                print(f"rvbench run: lost {name}: {reason}", file=sys.stderr)
                ray.kill(actors[i], no_restart=True)
                if job is not None:
                    losses[job.job_id] = losses.get(job.job_id, 0) + 1
                    if losses[job.job_id] < LOST_LIMIT:
                        group.appendleft(job)
                    else:
                        row = lost_row(run_id, job, f"lost its Ray actor {LOST_LIMIT} times; last: {name}: {reason}")
                        writer.write(row, None)
                        board.done(row)
                    if group:
                        todo.appendleft(group)
                    board.show(name, None)
                feed()
                continue
            if job is None:
                names[i], env = result
                board.env(names[i], env)
            else:
                writer.write(*result)
                board.done(result[0])
            if group:
                start(i, group)
            elif todo:
                start(i, todo.popleft())
            else:
                idle.append(i)
                board.show(names[i], None)
    except KeyboardInterrupt:
        return False
    finally:
        for handle in actors:
            ray.kill(handle, no_restart=True)
    if todo:
        raise SlotsLost(f"every Ray actor was lost with {sum(map(len, todo))} jobs left")
    return True
