"""Fixtures every test file can use. The shared constants and helpers behind them (SMALL, TINY,
tiny(), sample(), run_stage(), selection_context(), the DVC project helpers) live in support.py,
which subprocess scripts import too; test files never import from one another."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def torch_threads_restored() -> Iterator[None]:
    """Stages set torch's thread count from runtime.threads; put it back after each test, so that a
    test's results do not depend on which tests ran before it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
