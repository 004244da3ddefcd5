"""A client that stops reading must not slow the others; speech audio reaches stream clients with pts
aligned to the frames. Real server, real engine with the real tiny generator at 320x180 output
(230 kB frames, so a stalled reader backs up TCP within a second)."""

from __future__ import annotations

import asyncio
import itertools
import socket

import numpy as np
import pytest
from websockets.asyncio.client import connect

from backend.config import EngineConfig, ServerConfig
from backend.engine import Engine
from backend.server import Server
from backend.server.protocol import decode_server
from tests.server.server_helpers import TOKEN, frames_for, real_generator, recv_msg

FPS = 20.0


@pytest.fixture(scope="module")
def big_gen():
    return real_generator(320, 180)


async def test_stalled_client_loses_frames_and_the_fast_one_keeps_full_rate(big_gen):
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), big_gen, None, max_steps=2, max_chunk_frames=1)
    async with engine, Server(ServerConfig(port=0), engine, token=TOKEN) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        slow = await connect(server.url + "/stream", sock=sock, max_queue=1, close_timeout=0.1)  # never reads
        async with connect(server.url + "/stream", max_size=None) as fast:
            await recv_msg(fast)
            frames = await frames_for(fast, 2.0)
            stats = server.stats()
        await slow.close()
    assert len(frames) >= 0.8 * 2.0 * FPS
    seqs = [f.seq for f in frames]
    assert max(b - a for a, b in itertools.pairwise(seqs)) <= 2  # the fast client missed (almost) nothing
    assert stats["client_frames_dropped_now"] > 5  # ... while the stalled one lost frames


async def test_speech_audio_reaches_stream_clients_aligned_with_frames(big_gen):
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), big_gen, None, max_steps=2, max_chunk_frames=1,
                    sample_rate=16000)
    sr = 16000
    pcm = (0.3 * np.sin(np.arange(int(0.5 * sr)) * 0.05)).astype(np.float32)
    async with engine, Server(ServerConfig(port=0), engine, token=TOKEN) as server:
        async with connect(server.url + "/stream", max_size=None) as ws:
            hello = await recv_msg(ws)
            assert (hello.sample_rate, hello.channels) == (16000, 1)
            ticket = await engine.speak(pcm, sr, "hello")
            msgs = []
            async with asyncio.timeout(10):
                while sum(len(m.data) for m in msgs if m.type == "audio") < pcm.nbytes:
                    msgs.append(decode_server(await ws.recv()))
    audio = [m for m in msgs if m.type == "audio"]
    frames = [m for m in msgs if m.type == "frame"]
    first_talk = next(f for f in frames if f.directive_id == ticket.command_id)
    assert audio[0].pts == pytest.approx(first_talk.pts)
    got = np.concatenate([np.frombuffer(a.data, "<f4") for a in audio])
    np.testing.assert_array_equal(got, pcm)
    assert all(a.format == "f32le" and a.sample_rate == sr and a.channels == 1 for a in audio)
