"""Fixtures for the director tests: a controllable clock, a recording sink and reply, a Director factory."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from backend.config import DirectorConfig
from backend.director import Director
from tests.director.director_kit import FakeClock, Recorder, Replies


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sink() -> Recorder:
    return Recorder()


@pytest.fixture
def replies() -> Replies:
    return Replies()


@pytest.fixture
def make(clock: FakeClock, sink: Recorder, replies: Replies):
    """make(**config overrides) -> Director on the fake clock; cooldowns off unless asked for."""

    def build(**overrides: Any) -> Director:
        base = {"user_cooldown_s": 0.0, "global_cooldown_s": 0.0, "dedup_window_s": 0.0}
        cfg = dataclasses.replace(DirectorConfig(), **{**base, **overrides})
        return Director(cfg, sink, clock=clock, reply=replies)

    return build
