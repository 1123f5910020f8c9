"""`rvbench run --cluster` on a real two-node Ray cluster on this machine (tests/ray_cluster.py), CPU slots.

Every node offers one `rvbench_cpu`, so the run has two actors, scheduled by the same path as one
actor per GPU. The sweep: resnet18 rv and timm at batch 1, two rounds: 4 cells in 2 groups.
The joined node's workers hang in every "resnet18 rv bs2" cell (RVBENCH_FAULT in that node's
environment, where its actors' workers read it), so the node-loss test can kill the node mid-cell;
the other tests run batch 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_cluster import LocalCluster

from bench.cli import main
from bench.config.sweep import build_spec, expand
from bench.results import load
from bench.runner.cluster import CONNECT_TIMEOUT_S

# Its module-scoped fixture is costly: one xdist worker makes it once (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("ray_cluster")

REPO = Path(__file__).resolve().parent.parent
SWEEP = ["--preset", "smoke", "--device", "cpu", "--models", "resnet18", "--impls", "rv,timm", "--batch-sizes", "1",
         "--rounds", "2"]
EXPECTED = {c.cell_id for c in expand(build_spec("smoke", "cpu", {
    "models": ["resnet18"], "impls": ["rv", "timm"], "batch_sizes": [1], "rounds": 2}))}
NODE_FAULT = "hang:resnet18 rv bs2"


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    cluster = LocalCluster(node_env=({}, {"RVBENCH_FAULT": NODE_FAULT}))
    yield cluster
    cluster.stop()


def _start(cluster: LocalCluster, out: Path, *args: str, sweep: list[str] = SWEEP) -> subprocess.Popen:
    env = {**cluster.env(), "PYTHONPATH": str(REPO)}
    where = [] if "--resume" in args else ["--out", str(out), "--cluster", cluster.address, *sweep]
    return subprocess.Popen([sys.executable, "-m", "bench", "run", *where, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def _ids(run_dir: Path) -> list[str]:
    return [json.loads(line)["cell_id"] for line in (run_dir / "results.jsonl").read_text().splitlines()]


def _node_logs(cluster: LocalCluster, run_dir: Path) -> list[Path]:
    """The worker logs of the run's actors, one directory per node (the nodes share the cluster's TMPDIR)."""
    return sorted((Path(cluster.temp_dir) / "rvbench" / run_dir.name).glob("node-*/worker-cpu.log"))


def _wait(what, proc: subprocess.Popen, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        value = what()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_smoke_sweep_across_the_cluster_runs_every_cell_once_on_both_nodes(cluster, tmp_path):
    _finish(_start(cluster, tmp_path))
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert sorted(_ids(run_dir)) == sorted(EXPECTED)
    df = load(run_dir)
    assert (df["status"] == "ok").all(), df["message"]
    assert (df["slot"] == "cpu").all() and (df["device"] == "cpu").all() and df["env_host"].notna().all()
    assert df["env_git_commit"].notna().all()  # the driver's code, shipped to the nodes
    logs = _node_logs(cluster, run_dir)
    assert len(logs) == 2 and all(" started" in log.read_text() for log in logs)  # one actor per node ran cells
    config = json.loads((run_dir / "config.json").read_text())
    assert config["cluster"] == cluster.address and config["devices"] is None


def test_driver_killed_then_resume_finishes_every_cell_once(cluster, tmp_path):
    proc = _start(cluster, tmp_path)
    rows = _wait(lambda: list((tmp_path / "runs").glob("*/results.jsonl")), proc)
    _wait(lambda: rows[0].read_text().count("\n") >= 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, mid-run: its actors die with it
    proc.communicate(timeout=60)
    run_dir = rows[0].parent
    assert len(_ids(run_dir)) < len(EXPECTED)
    _finish(_start(cluster, tmp_path, "--resume", str(run_dir)))  # on the cluster config.json names
    assert sorted(_ids(run_dir)) == sorted(EXPECTED)
    assert (load(run_dir)["status"] == "ok").all()


def test_node_lost_mid_cell_its_job_is_retried_and_nothing_is_lost_or_doubled(cluster, tmp_path):
    sweep = [*SWEEP[:-4], "--batch-sizes", "2", "--rounds", "2"]
    expected = {c.cell_id for c in expand(build_spec("smoke", "cpu", {
        "models": ["resnet18"], "impls": ["rv", "timm"], "batch_sizes": [2], "rounds": 2}))}
    proc = _start(cluster, tmp_path, sweep=sweep)
    run_dir = _wait(lambda: next((tmp_path / "runs").glob("*"), None), proc)
    # The joined node's group starts with an rv cell, which hangs there: kill the node while it does.
    hung = _wait(lambda: [log for log in _node_logs(cluster, run_dir) if "injected hang" in log.read_text()], proc)
    cluster.kill_node(1)
    _, err = _finish(proc)
    assert "rvbench run: lost " in err
    assert sorted(_ids(run_dir)) == sorted(expected)  # nothing lost, nothing twice
    df = load(run_dir)
    assert (df["status"] == "ok").all(), df["message"]  # the lost rv cell ran again on the head node
    # The lost node's worker and its hang's child did not outlive their actor.
    (child,) = re.findall(r"injected hang, child (\d+)", hung[0].read_text())
    deadline = time.monotonic() + 10
    while _alive(int(child)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(int(child))


def _alive(pid: int) -> bool:
    """Whether a process exists and is no zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cluster_without_ray_exits_2_with_the_install_hint(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: its import fails
    assert main(["run", "--cluster", "auto", "--out", str(tmp_path), *SWEEP]) == 2
    assert "pip install 'rvbench[cluster]'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def _session(sid: int) -> list[int]:
    """The live processes of session `sid` (what a command started in its own session left running)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _refused_port() -> int:
    """A port nobody listens on: bound, to be given free by the system, then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("form, listener", [("{}", "none"), ("ray://{}", "none"), ("{}", "silent")])
def test_an_address_that_does_not_answer_is_one_line_and_exit_2(tmp_path, form, listener):
    """A refused port fails at once, for both address forms, and a port that accepts but says
    nothing within CONNECT_TIMEOUT_S (one form: both go through the same check); Ray's own log lines
    stay out of the terminal and nothing is left running."""
    pytest.importorskip("ray")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1] if listener == "silent" else _refused_port()
        address = form.format(f"127.0.0.1:{port}")
        proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--cluster", address, "--device", "cpu",
                                 "--out", str(tmp_path / "out"), *SWEEP[:-2]], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    reason = "connection refused" if listener == "none" else f"no answer within {CONNECT_TIMEOUT_S:g} s"
    assert err.splitlines() == [f"rvbench run: error: cannot connect to the Ray cluster at {address}: {reason}"]
    assert not out and not (tmp_path / "out").exists()
    assert not _session(proc.pid)
