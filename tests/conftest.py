"""Shared test setup."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small models on a busy 2-core machine: intra-op threads only spin (a 64x32 layer_norm took
    9 ms with 2 threads, 0.01 ms with 1). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
