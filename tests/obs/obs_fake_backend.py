"""A loopback stand-in for the LiveIdol backend's ``/stream`` endpoint (docs/protocol.md, version 1).

Speaks the documented protocol byte for byte with the real ``websockets`` server and the real
``msgpack`` packer: hello, then frame (raw RGBA) and audio (f32le, pts on the frames' clock) at
``fps``.  Frames are distinct per seq (see :func:`pattern_frame`) and the last ones served are kept
in ``served`` so a test can compare what OBS shows with what was sent.  Runs its own event loop in
a thread so blocking tests (OBS, the stdlib client) can start, stop and restart it on one port.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import struct
import threading
import time

import msgpack
from websockets.asyncio.server import ServerConnection, serve


def pattern_frame(seq: int, width: int, height: int, *, mirror: bool = False) -> bytes:
    """RGBA frame ``seq``: red ramps left to right (right to left if ``mirror``), blue top to bottom,
    green encodes seq; opaque."""
    g = (40 + seq * 53) % 256
    row_r = bytes(int(255 * x / max(1, width - 1)) for x in range(width))
    if mirror:
        row_r = row_r[::-1]
    rows = []
    for y in range(height):
        b = int(255 * y / max(1, height - 1))
        rows.append(b"".join(bytes((r, g, b, 255)) for r in row_r))
    return b"".join(rows)


class FakeBackend:
    """``/stream`` server on 127.0.0.1:``port`` (0 = pick) in a background thread."""

    def __init__(self, *, port: int = 0, width: int = 64, height: int = 36, fps: float = 25.0,
                 sample_rate: int = 48000, keep: int = 64, distinct: int = 8,
                 mirror: bool = False) -> None:
        self.port = port
        self.width, self.height, self.fps = width, height, fps
        self.sample_rate = sample_rate
        self.frames = [pattern_frame(i, width, height, mirror=mirror) for i in range(distinct)]
        self.served: collections.deque[tuple[int, float, bytes]] = collections.deque(maxlen=keep)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.sent_frames = 0
        self.active = 0  # connected /stream clients
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    def __enter__(self) -> FakeBackend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    def start(self) -> None:
        self._ready.clear()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake backend did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = self._loop = self._stop = None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", self.port, max_size=2**16, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            server.close(close_connections=True)

    async def _handler(self, ws: ServerConnection) -> None:
        req = ws.request
        assert req is not None
        self.requests.append((req.path, dict(req.headers.raw_items())))
        if not req.path.startswith("/stream"):
            await ws.send(msgpack.packb({"type": "error", "code": "not_found", "message": req.path}))
            await ws.close(1008, "unknown path")
            return
        await ws.send(msgpack.packb({
            "type": "hello", "protocol": 1, "server": "liveidol/fake", "width": self.width,
            "height": self.height, "fps": self.fps, "format": "rgba", "sample_rate": self.sample_rate,
            "channels": 1}))
        self.active += 1
        try:
            await self._stream(ws)
        finally:
            self.active -= 1

    async def _stream(self, ws: ServerConnection) -> None:
        period = 1.0 / self.fps
        start = time.monotonic()
        samples = round(self.sample_rate * period)
        seq = 0
        with contextlib.suppress(Exception):
            while True:
                pts = seq * period
                data = self.frames[seq % len(self.frames)]
                # A 440 Hz tone whose loudness follows seq parity (an audible "mouth" pattern).
                amp = 0.2 if seq % 2 else 0.05
                pcm = struct.pack(f"<{samples}f", *(amp * math.sin(2 * math.pi * 440 * (pts + i / self.sample_rate))
                                                    for i in range(samples)))
                await ws.send(msgpack.packb({"type": "audio", "seq": seq, "pts": pts, "sample_rate": self.sample_rate,
                                             "channels": 1, "format": "f32le", "data": pcm}))
                await ws.send(msgpack.packb({"type": "frame", "seq": seq, "pts": pts, "width": self.width,
                                             "height": self.height, "format": "rgba", "data": data}))
                self.served.append((seq, pts, data))
                self.sent_frames += 1
                seq += 1
                await asyncio.sleep(max(0.0, start + seq * period - time.monotonic()))
