"""Fixtures for the perception tests: the real MediaPipe models on the real pictures of tests/fixtures/perception.

Tests that need a package skip only when it is missing and CI is not 'true' (in CI they fail).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.requires import need_modules

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "perception"


def need(*modules: str) -> None:
    """Skip (locally) or fail (CI=true) when a python module is not importable."""
    need_modules(*modules, install="pip install -e '.[perception]'")


def picture(name: str) -> np.ndarray:
    """A fixture picture as (H, W, 3) uint8 RGB."""
    import simplejpeg

    return simplejpeg.decode_jpeg((FIXTURES / name).read_bytes(), colorspace="RGB")


def clip(name: str) -> list[tuple[str, np.ndarray]]:
    """The pictures of ``clips/<name>`` in order, with their file names."""
    return [(p.name, picture(f"clips/{name}/{p.name}")) for p in sorted((FIXTURES / "clips" / name).glob("*.jpg"))]


@pytest.fixture(scope="session")
def still_marker():
    """MediaPipe face mesh + hands for unrelated photos (no tracking between pictures)."""
    need("mediapipe")
    from backend.perception.landmarks import Landmarker

    with Landmarker(video=False) as marker:
        yield marker
