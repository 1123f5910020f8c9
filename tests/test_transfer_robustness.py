"""`rvbench transfer` under hostile conditions: unreadable data, a diverging loss, SIGINT and SIGTERM.

Each case is a real one: folders of mode 000 read without root's permission override, a learning rate that
overflows the loss, signals sent to a running process. Each must end with its exit code, one line on stderr,
no traceback, and every row written kept. Not in the "transfer" xdist group: these need none of its costly
fixtures, so they may run on the other worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.data.procedural import write_demo_data
from test_transfer import ARCH, ROOT, _write_images


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR directory of 40 training and 20 validation images: a few steps per epoch."""
    return write_demo_data(tmp_path_factory.mktemp("small"), n_train=40, n_test=20, seed=0)[1]


def _rvbench(argv: list[str], prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    """`rvbench transfer ARCH --device cpu ARGV` as a real process, run under `prefix` (a command such as setpriv)."""
    return subprocess.Popen([*prefix, sys.executable, "-m", "bench", "transfer", ARCH, "--device", "cpu", *argv],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _unprivileged() -> tuple[str, ...]:
    """The command prefix under which permission bits hold: none for a user; for root, setpriv dropping the two
    capabilities that let root read any directory (it stays root, so it still reaches pytest's own tmp_path)."""
    if os.geteuid() != 0:
        return ()
    prefix = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")
    try:
        subprocess.run([*prefix, "true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot drop root's permission override with setpriv: {exc}")
    return prefix


def test_unreadable_data_or_class_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    """A --data directory or a class folder the user may not list (mode 000): one line naming it, exit 2,
    nothing written. Both cases run at once, as real processes without root's override of permissions."""
    prefix = _unprivileged()
    data, closed = tmp_path / "data", tmp_path / "closed"
    _write_images(data, {"cat": 2, "dog": 2})
    _write_images(closed, {"cat": 2, "dog": 2})
    (data / "dog").chmod(0)
    closed.chmod(0)
    try:
        procs = {where: _rvbench(["--data", str(path), "--out", str(tmp_path / "reports")], prefix)
                 for where, path in ((data / "dog", data), (closed, closed))}
        for where, proc in procs.items():
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 2 and "Traceback" not in err, err
            assert err == f"rvbench transfer: error: --data: cannot read {where} (Permission denied)\n"
    finally:
        (data / "dog").chmod(0o755)
        closed.chmod(0o755)
    assert not (tmp_path / "reports").exists()

