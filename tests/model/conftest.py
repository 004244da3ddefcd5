"""Make ``backend`` importable when pytest runs without the package installed.

(The lead may replace this with ``pythonpath = ["."]`` in pyproject's pytest options.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Micro models on a busy 2-core machine: intra-op threads only spin (a 64x32 layer_norm took
    9 ms with 2 threads, 0.01 ms with 1). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

