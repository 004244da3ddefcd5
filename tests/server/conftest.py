"""Fixtures for the server tests: a real engine (real tiny generator) behind a real server on loopback."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from backend.config import EngineConfig, ServerConfig
from backend.engine import Engine
from backend.server import Server
from tests.server.server_helpers import FPS, TOKEN, real_generator

LIFECYCLE_S = 60.0  # to start, and to stop: seconds are enough on the 2-core CI machine


@pytest.fixture(scope="module")
def gen():
    return real_generator()


@pytest.fixture
def server_cfg() -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, max_message_bytes=4096)


@pytest.fixture
async def running(gen, server_cfg):
    """(engine, server) running on 127.0.0.1 with a free port and TOKEN as the control token.

    Starting and stopping are bounded (a server that waits forever for a client to leave fails here, with
    the stack of where it waited, instead of stalling the suite)."""
    state = {"now": None, "next": []}
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), gen, None, max_steps=2, max_chunk_frames=1)
    stack = contextlib.AsyncExitStack()
    try:
        async with asyncio.timeout(LIFECYCLE_S):
            await stack.enter_async_context(engine)
            server = await stack.enter_async_context(Server(server_cfg, engine, token=TOKEN, state_fn=lambda: state))
            server.test_state = state  # the director's queue state, editable by tests
            await engine.wait_started()
        yield engine, server
    finally:
        async with asyncio.timeout(LIFECYCLE_S):
            await stack.aclose()
