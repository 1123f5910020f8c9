"""The command line itself: the exit-code table, --version, a bare `rvbench`, and --help without torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import COMMANDS, exit_codes_epilog, main, version_line
from bench.errors import ExitCode
from bench.provenance import git_state

ROOT = Path(__file__).resolve().parents[1]


def _readme_exit_codes() -> list[tuple[int, str]]:
    """(code, meaning) of every row of the README's "Exit codes" table."""
    section = (ROOT / "README.md").read_text().split("#### Exit codes\n", 1)[1].split("\n#", 1)[0]
    return [(int(code), meaning) for code, meaning in re.findall(r"^\| (\d+) \| (.*) \|$", section, re.MULTILINE)]


def test_readme_table_is_the_errors_table() -> None:
    assert _readme_exit_codes() == [(int(code), code.meaning) for code in ExitCode]


def test_help_lists_every_exit_code(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert exit_codes_epilog() in out
    listed = re.findall(r"^  (\d+) +\S", out.split("exit codes:\n", 1)[1], re.MULTILINE)
    assert [int(c) for c in listed] == [int(c) for c in ExitCode]


def test_version_names_the_package_and_the_commit(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line == version_line()
    commit, dirty = git_state()
    if commit is None:
        assert re.fullmatch(r"rvbench \d+\.\d+\S*", line)
    else:
        assert re.fullmatch(rf"rvbench \d+\.\d+\S* \(git {commit[:7]}{re.escape('+dirty') if dirty else ''}\)", line)


def test_version_outside_a_git_checkout_has_no_commit(tmp_path: Path) -> None:
    """A copy of the package that is no git checkout (an installed wheel, an unpacked tarball)."""
    subprocess.run(["cp", "-r", str(ROOT / "bench"), str(tmp_path)], check=True)
    done = subprocess.run([sys.executable, "-m", "bench", "--version"], cwd=tmp_path, capture_output=True,
                          text=True, check=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    assert re.fullmatch(r"rvbench \d+\.\d+\S*\n", done.stdout)


def test_bare_rvbench_lists_the_commands_and_how_to_start(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == ExitCode.OK
    out = capsys.readouterr().out
    assert all(re.search(rf"^  {name} +\S", out, re.MULTILINE) for name in COMMANDS)
    assert "rvbench run --preset smoke" in out and "rvbench COMMAND --help" in out


_NO_TORCH = """
import sys
from bench.cli import main
try:
    main([{command!r}, "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "pandas", "numpy"}})
print(" ".join(heavy))
"""


# Not yet: their --help lists choices declared next to torch code (compile modes, impls and modes in
# bench.config.cell, which imports bench.models; memory's cards in bench.counting.memory; transfer's
# strategies in bench.execute.transfer).
_NEEDS_TORCH = {"profile", "memory", "transfer"}


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in _NEEDS_TORCH])
def test_help_imports_no_torch(command: str) -> None:
    """Every command's --help is instant: no torch, pandas or numpy behind the parser."""
    done = subprocess.run([sys.executable, "-c", _NO_TORCH.format(command=command)], cwd=ROOT,
                          capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT)})
    assert done.stdout.splitlines()[-1] == "", f"rvbench {command} --help imported {done.stdout.split()[-1:]}"
