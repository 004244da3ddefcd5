"""The real LiveIdol backend for the OBS test: ``backend.engine.Engine`` with the real generator at a tiny
size (random weights) behind ``backend.server.Server`` on 127.0.0.1, in its own thread and event loop,
plus a recording ``/stream`` client (the real ``websockets`` client) that keeps the last frames served,
so a test can compare what OBS shows with what the backend sent.  Stop and start again on one port.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading

from websockets.asyncio.client import connect

from backend.config import EngineConfig, ServerConfig
from backend.engine import Engine
from backend.server import Server
from backend.server.protocol import decode_server
from tests.server.server_helpers import real_generator  # the server tests' tiny real generator


class RealBackend:
    def __init__(self, *, width: int = 64, height: int = 36, fps: float = 15.0, keep: int = 48) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.port = 0
        self.served: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=keep)
        self._gen = real_generator(width, height)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.presses: list[bool] = []  # push-to-talk presses received on /control ("ptt")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    def start(self) -> None:
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"real backend did not start: {self.error!r}")
        if self.error is not None:
            raise RuntimeError("real backend failed to start") from self.error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)
        self._thread = self._loop = self._stop = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        engine = Engine(EngineConfig(fps=self.fps, lookahead_frames=8), self._gen, None, max_steps=2,
                        max_chunk_frames=1)
        cfg = ServerConfig(host="127.0.0.1", port=self.port)
        async with engine, Server(cfg, engine, token="obs-test-token") as server:
            await asyncio.wait_for(engine.wait_started(), 60)
            self.port = server.port
            server.push_to_talk = self.presses.append
            recorder = asyncio.create_task(self._record())
            self._ready.set()
            await self._stop.wait()
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder

    async def _record(self) -> None:
        async with connect(self.url + "?format=rgba&audio=0", max_size=None) as ws:
            async for raw in ws:
                msg = decode_server(raw)
                if msg.type == "frame":
                    self.served.append((msg.seq, msg.data))
