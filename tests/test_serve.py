"""`rvbench serve` end to end on the CPU: bad input, a real model in all three scenarios, the report and --resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

RVBENCH = [sys.executable, "-m", "bench", "serve"]


@pytest.mark.parametrize("args, says", [
    (["resnet18", "--scenario", "burst"], "unknown scenario"),
    (["resnet18", "--queries", "5"], "--queries"),
    (["resnet18", "--slo-ms", "0"], "expected a number > 0"),
    ([], "give the ARCH"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    res = subprocess.run([*RVBENCH, *args, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_real_model_in_every_scenario_the_report_and_resume(tmp_path: Path) -> None:
    """resnet18 at 64 px: SingleStream and Offline answer; a 1 ms SLO, which one request already misses, is reported
    as not met even at the lowest load, exit 0; the report has its Serving section; --resume finds nothing to do."""
    res = subprocess.run([*RVBENCH, "resnet18", "--impls", "rv", "--image-size", "64", "--slo-ms", "1",
                          "--batchers", "1:0,2:1", "--queries", "100", "--device", "cpu", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    df = pd.read_csv(run_dir / "results.csv")
    results = df[df["record"] == "result"]
    assert sorted(results["mode"]) == ["serve-offline", "serve-offline", "serve-server", "serve-server",
                                       "serve-single-stream"]
    single = results[results["mode"] == "serve-single-stream"].iloc[0]
    assert single["lat_ms_p50"] > 0 and single["lat_ms_bound"] >= single["lat_ms_p90"]
    offline = results[results["mode"] == "serve-offline"].set_index("batch_size")
    assert offline.loc[2, "batch_mean"] == 2 and offline.loc[1, "achieved_qps"] > 0
    server = results[results["mode"] == "serve-server"]
    assert server["qps_at_slo"].isna().all() and server["message"].str.contains("SLO not met").all()
    assert (df[df["record"] == "trial"]["slo_met"] == False).all()  # noqa: E712
    page = (run_dir / "index.html").read_text()
    assert 'id="serving"' in page and "QPS at the SLO" in page
    again = subprocess.run([*RVBENCH, "--resume", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(pd.read_csv(run_dir / "results.csv")) == len(df)
