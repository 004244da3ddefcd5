"""Fixtures for the engine tests."""

from __future__ import annotations

import numpy as np
import pytest

from backend.config import EngineConfig


@pytest.fixture
def engine_cfg(tmp_path) -> EngineConfig:
    return EngineConfig(fps=20.0, lookahead_frames=8, min_steps=1, min_chunk_frames=1,
                        log_path=str(tmp_path / "inputs.jsonl"))


@pytest.fixture
def reference() -> np.ndarray:
    ref = np.zeros((36, 64, 4), np.uint8)
    ref[..., 0] = 200
    ref[..., 3] = 255
    return ref
