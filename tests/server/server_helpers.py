"""Helpers for the server tests: the real generator at a tiny size in a running engine, and clients."""

from __future__ import annotations

import asyncio
import json
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from backend.config import AutoencoderConfig, DiTSizes, ModelConfig
from backend.server.protocol import decode_server

TOKEN = "test-token-abc"
FPS = 20.0  # the engine behind the `running` fixture


def real_generator(width: int = 64, height: int = 36):
    """The real ``backend.model.generator.Generator``, tiny, warmed up."""
    from backend.model.generator import Conditions, Generator

    cfg = ModelConfig(checkpoint="random", device="cpu", steps=2, chunk_frames=1, window_frames=4,
                      output_width=width, output_height=height,
                      dit=DiTSizes(dim=32, ffn_dim=64, num_heads=2, num_layers=1, text_dim=16, freq_dim=16),
                      autoencoder=AutoencoderConfig(width=8, native_width=32, native_height=16))
    gen = Generator(cfg)
    gen.reset(None, Conditions())
    for steps in (1, 2, 1, 2, 1, 2):
        gen.next_chunk(Conditions(), steps=steps, chunk_frames=1)
    return gen


async def close_code(ws) -> int | None:
    """The close code the server sent (None: closed without one), reading until the connection closes."""
    async with asyncio.timeout(5):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


async def recv_msg(ws, wait_s: float = 5.0):
    async with asyncio.timeout(wait_s):
        return decode_server(await ws.recv())


async def frames_for(ws, seconds: float) -> list:
    """Frame messages received from a /stream client during ``seconds``."""
    out = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):
                msg = decode_server(await ws.recv())
        except TimeoutError:
            break
        if msg.type == "frame":
            out.append(msg)
    return out


async def control(url: str, token: str = TOKEN):
    """An authenticated /control connection (JSON text)."""
    async with asyncio.timeout(10):
        ws = await connect(url + "/control")
        await ws.send(json.dumps({"type": "auth", "token": token}))
        reply = json.loads(await ws.recv())
    assert reply == {"type": "ok", "id": "", "effective_frame": None, "command_id": "", "latency_ms": None}
    return ws
