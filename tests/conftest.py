"""Shared test setup: one torch intra-op thread everywhere.

Small models on a busy 2-core machine: intra-op threads only spin (a 64x32 layer_norm took 9 ms with 2
threads, 0.01 ms with 1), and on a loaded machine a spinning pool makes a few seconds of work take minutes
(a module fixture training a probe: 8 s alone, 311 s in the full suite next to two busy processes).
Module- and session-scoped fixtures run before function-scoped ones, so the session fixture sets the
thread count first; the function fixture puts it back after any test that changed it.

A test that hangs fails after pyproject's per-test ``timeout`` with its threads' and asyncio tasks' stacks
(tests/timeouts.py).
"""

from __future__ import annotations

import pytest
import torch

from tests.timeouts import pytest_timeout_set_timer  # noqa: F401 - a hook: pytest finds it here


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_session():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
