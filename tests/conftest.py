"""Suite-wide pytest options: which device the benchmark and gate tests run on, and one thread per
pytest-xdist worker, and every test leaves the SIGINT and SIGTERM handlers as it found them.

The option lives here, at the top of the test tree, because pytest only reads `pytest_addoption`
from conftest files it loads at start-up; `tests/benchmarks/conftest.py` turns it into fixtures.

`make test` runs two xdist workers on two cores (`--dist loadgroup`: a module whose module-scoped
fixture is costly, a Ray cluster, a torchrun job, a real run, marks itself `xdist_group`, so one worker
makes it once). Each worker, and every process a test starts from it
(sweep workers, torchrun ranks, Ray nodes inherit OMP_NUM_THREADS), computes on one thread, so the
workers share the cores instead of oversubscribing them, and a test bounded in time (a cell timeout)
sees about the speed it sees in a serial run.
"""

from __future__ import annotations

import os

import pytest

from bench.errors import UsageError
from bench.hardware.device import resolve_device


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=os.environ.get("RVBENCH_DEVICE", "cpu"),
        help="device for tests/benchmarks: cpu, cuda or cuda:N (default: $RVBENCH_DEVICE, else cpu)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Resolve --device to "cpu" or "cuda:N" for the fixtures, as the CLI does; reject a bad or
    absent device once, before any test runs, instead of failing every test."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    try:
        config.option.device = resolve_device(config.getoption("--device"))
    except UsageError as err:
        raise pytest.UsageError(f"--device: {err}") from None



@pytest.fixture(autouse=True)
def _signal_handlers_as_found():
    """A command stopped by a signal inside this process ignores later signals, as a process that is
    ending should (bench.commands.stopping); the next test gets this process's handlers back."""
    import signal

    found = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in found.items():
        signal.signal(sig, handler)
