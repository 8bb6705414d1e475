"""Fixtures every test file can use. The shared constants and helpers behind them (SMALL, TINY,
tiny(), sample(), run_stage(), selection_context(), the DVC project helpers) live in support.py,
which subprocess scripts import too; test files never import from one another."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs two workers on two cores) each worker computes on one
    torch thread: two workers of two threads each would oversubscribe the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def torch_threads_restored() -> Iterator[None]:
    """Stages set torch's thread count from runtime.threads; put it back after each test, so that a
    test's results do not depend on which tests ran before it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
