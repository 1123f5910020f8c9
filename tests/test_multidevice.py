"""`rvbench run --devices`: several local device slots at once, through the path GPUs take.

Two CPU slots (`--devices cpu,cpu`) stand in for two GPUs: the same scheduler, one worker and one
thread per slot, groups of (configuration, round) kept on one slot, one writer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.cli import main
from bench.config.sweep import build_spec, expand
from bench.results import load
from bench.runner.runner import Job, group_jobs
from bench.runner.schedule import slots

REPO = Path(__file__).resolve().parent.parent
SWEEP = ["--preset", "smoke", "--models", "resnet18", "--impls", "rv,timm", "--batch-sizes", "1", "--rounds", "3"]
SPEC = {"models": ["resnet18"], "impls": ["rv", "timm"], "batch_sizes": [1], "rounds": 3}


def _start(*args: str, fault: str = "") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RVBENCH_FAULT": fault}
    return subprocess.Popen([sys.executable, "-m", "bench", "run", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_groups_keep_a_configuration_and_round_together_in_sweep_order():
    cells = expand(build_spec("smoke", "cpu", {**SPEC, "models": ["resnet18", "vit_tiny_patch16_224"]}))
    groups = group_jobs([Job(c) for c in cells])
    assert [j.cell for g in groups for j in g] == cells  # nothing lost, order kept
    for group in groups:
        assert len({(j.cell.arch, j.cell.round) for j in group}) == 1 and len({j.cell.impl for j in group}) == len(group)
    assert len(groups) == 2 * 3  # 2 archs x 3 rounds, each with every impl the arch has


def test_a_device_named_twice_gets_two_slots():
    assert [(s.name, s.device, s.log_name) for s in slots(["cpu", "cpu"])] == [
        ("cpu", "cpu", "worker-cpu.log"), ("cpu-2", "cpu", "worker-cpu-2.log")]


def test_two_slots_run_at_once_then_kill_and_resume_runs_every_cell_once(tmp_path):
    expected = {c.cell_id for c in expand(build_spec("smoke", "cpu", SPEC))}
    # Round 2's timm cell hangs, so the run is still going when it is killed with -9.
    proc = _start("--out", str(tmp_path), "--devices", "cpu,cpu", *SWEEP, fault="hang:timm bs1 32px fp32 inference cpu r2")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        rows = list((tmp_path / "runs").glob("*/results.jsonl"))
        if rows and len(rows[0].read_text().splitlines()) >= 5:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    run_dir = rows[0].parent
    assert run_dir.name.endswith("-2xcpu")
    # Both slots came up, each with its own worker log and env, recorded in env.json.
    env = json.loads((run_dir / "env.json").read_text())
    assert sorted(s["slot"] for s in env["slots"]) == ["cpu", "cpu-2"] and env["env_torch"]
    assert all(" started" in (run_dir / f"worker-{n}.log").read_text() for n in ("cpu", "cpu-2"))

    res = _start("--resume", str(run_dir), "--devices", "cpu,cpu")
    _, err = res.communicate(timeout=300)
    assert res.returncode == 0, err[-3000:]
    ids = [json.loads(line)["cell_id"] for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(expected)  # every cell exactly once
    df = load(run_dir)
    assert (df["status"] == "ok").all() and (df["device"] == "cpu").all()
    assert set(df["slot"]) == {"cpu", "cpu-2"}  # both slots measured cells
    first = df[df["round"] < 2]  # the groups the first invocation ran whole
    assert (first.groupby("round")["slot"].nunique() == 1).all()  # rv and timm of a round on one slot
    # The two slots measured at the same time: some cell of one slot ran while one of the other did.
    df["start"] = df["started_at"].map(lambda t: time.mktime(time.strptime(t[:19], "%Y-%m-%dT%H:%M:%S")))
    spans = [(r.start, r.start + r.wall_s, r.slot) for r in df.itertuples()]
    assert any(a0 < b1 and b0 < a1 and sa != sb for a0, a1, sa in spans for b0, b1, sb in spans)


def test_devices_with_device_or_cluster_is_bad_input(capsys, tmp_path):
    assert main(["run", "--devices", "cpu,cpu", "--device", "cpu", "--out", str(tmp_path), *SWEEP]) == 2
    assert main(["run", "--devices", "cpu", "--cluster", "auto", "--out", str(tmp_path), *SWEEP]) == 2
    err = capsys.readouterr().err
    assert "--device and --devices: give one" in err and "--devices and --cluster: give one" in err
    assert not list(tmp_path.iterdir())
