"""Suite-wide pytest options: which device the benchmark and gate tests run on.

The option lives here, at the top of the test tree, because pytest only reads `pytest_addoption`
from conftest files it loads at start-up; `tests/benchmarks/conftest.py` turns it into fixtures.
"""

from __future__ import annotations

import os

import pytest

from bench.config.cell import validate_device
from bench.errors import UsageError


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default=os.environ.get("RVBENCH_DEVICE", "cpu"),
        help="device for tests/benchmarks: cpu, cuda or cuda:N (default: $RVBENCH_DEVICE, else cpu)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Normalise --device to "cpu" or "cuda:N" for the fixtures; reject a bad or absent device
    once, before any test runs, instead of failing every test."""
    device = config.getoption("--device")
    device = "cuda:0" if device == "cuda" else device
    try:
        validate_device(device)
    except UsageError as err:
        raise pytest.UsageError(f"--device: {err}") from None
    config.option.device = device
    if device != "cpu":
        import torch

        index = int(device.split(":")[1])
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise pytest.UsageError(
                f"--device {device}: no such CUDA device here "
                f"({torch.cuda.device_count()} visible); valid: cpu"
                + "".join(f", cuda:{i}" for i in range(torch.cuda.device_count()))
            )

