"""A loopback obs-websocket v5 server that serves pictures as a source's screenshots.

It speaks the real protocol (obs-websocket 5.x ``docs/generated/protocol.md``): the ``obswebsocket.json``
subprotocol (or none, as OBS allows), Hello (op 0) with the SHA-256 challenge when a password is set, Identify (1) -> Identified (2),
Request (6) -> RequestResponse (7). It answers GetVersion and GetSourceScreenshot (JPEG data URL of the
current picture of the named source, scaled to fit the asked size, as OBS does); other requests and unknown
sources get OBS's error codes. Tests change the picture with :meth:`ObsWsServer.show` while clients poll.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
from websockets.asyncio.server import ServerConnection, serve

# obs-websocket WebSocketOpCode / RequestStatus values (protocol.md)
HELLO, IDENTIFY, IDENTIFIED, REQUEST, REQUEST_RESPONSE = 0, 1, 2, 6, 7
SUCCESS, UNKNOWN_REQUEST_TYPE, RESOURCE_NOT_FOUND = 100, 204, 600
AUTH_FAILED = 4009  # WebSocketCloseCode.AuthenticationFailed


def _json_or_none(_conn: ServerConnection, offered: Any) -> Any:
    return "obswebsocket.json" if "obswebsocket.json" in offered else None


def load_rgb(path: Path) -> np.ndarray:
    return simplejpeg.decode_jpeg(path.read_bytes(), colorspace="RGB")


def _fit(rgb: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    """Scale to fit inside width x height keeping the aspect ratio (nearest neighbour is enough here)."""
    h, w = rgb.shape[:2]
    if not width or not height:
        return rgb
    s = min(width / w, height / h)
    nh, nw = max(8, round(h * s)), max(8, round(w * s))
    ys = np.minimum((np.arange(nh) / s).astype(int), h - 1)
    xs = np.minimum((np.arange(nw) / s).astype(int), w - 1)
    return np.ascontiguousarray(rgb[ys][:, xs])


class ObsWsServer:
    """Runs in its own thread and event loop (obsws-python is a synchronous client)."""

    def __init__(self, source: str = "Webcam", password: str = "") -> None:
        self.source, self.password = source, password
        self.port = 0
        self.requests: list[str] = []
        self.served: list[tuple[float, str]] = []  # (time.monotonic(), picture label) per screenshot
        self._picture: tuple[str, np.ndarray] | None = None
        self._script: list[tuple[str, np.ndarray]] = []
        self._script_fps: float | None = None
        self._script_start = 0.0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="obs-ws-server", daemon=True)

    def __enter__(self) -> ObsWsServer:
        self._thread.start()
        assert self._ready.wait(10), "loopback obs-websocket server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def show(self, label: str, rgb: np.ndarray | None) -> None:
        """The source now shows ``rgb`` (None: the source is not there)."""
        with self._lock:
            self._picture = None if rgb is None else (label, rgb)

    def play(self, pictures: list[tuple[str, np.ndarray]], fps: float | None = None) -> None:
        """Serve these pictures in order: one per screenshot (a clip at the poller's pace), or, with ``fps``,
        as a camera would: the picture of the moment, ``fps`` pictures a second from now. The last stays."""
        with self._lock:
            self._script = list(pictures)
            self._script_fps, self._script_start = fps, time.monotonic()

    @property
    def script_start(self) -> float:
        """time.monotonic() when the current timed play began."""
        return self._script_start

    def first_served(self, label: str) -> float | None:
        return next((t for t, name in self.served if name == label), None)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # OBS speaks JSON when a client names no subprotocol (obsws-python names none)
        async with serve(self._handler, "127.0.0.1", 0, select_subprotocol=_json_or_none) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _handler(self, ws: ServerConnection) -> None:
        hello: dict = {"obsWebSocketVersion": "5.1.0", "rpcVersion": 1}
        challenge = salt = ""
        if self.password:
            challenge, salt = base64.b64encode(b"challenge-1").decode(), base64.b64encode(b"salt-1").decode()
            hello["authentication"] = {"challenge": challenge, "salt": salt}
        await ws.send(json.dumps({"op": HELLO, "d": hello}))
        ident = json.loads(await ws.recv())
        assert ident["op"] == IDENTIFY, ident
        if self.password:
            secret = base64.b64encode(hashlib.sha256((self.password + salt).encode()).digest()).decode()
            want = base64.b64encode(hashlib.sha256((secret + challenge).encode()).digest()).decode()
            if ident["d"].get("authentication") != want:
                await ws.close(AUTH_FAILED, "Authentication failed.")
                return
        await ws.send(json.dumps({"op": IDENTIFIED, "d": {"negotiatedRpcVersion": 1}}))
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("op") != REQUEST:
                continue
            d = msg["d"]
            self.requests.append(d["requestType"])
            status, data = self._answer(d["requestType"], d.get("requestData") or {})
            await ws.send(json.dumps({"op": REQUEST_RESPONSE, "d": {
                "requestType": d["requestType"], "requestId": d["requestId"], "requestStatus": status,
                **({"responseData": data} if data is not None else {})}}))

    def _answer(self, kind: str, data: dict) -> tuple[dict, dict | None]:
        if kind == "GetVersion":
            return {"result": True, "code": SUCCESS}, {"obsVersion": "29.0.2", "obsWebSocketVersion": "5.1.0",
                                                       "rpcVersion": 1, "supportedImageFormats": ["jpg", "png"]}
        if kind == "GetSourceScreenshot":
            with self._lock:
                if self._script and self._script_fps:
                    k = int((time.monotonic() - self._script_start) * self._script_fps)
                    self._picture = self._script[min(k, len(self._script) - 1)]
                elif self._script:
                    self._picture = self._script.pop(0)
                picture = self._picture
            if data.get("sourceName") != self.source or picture is None:
                return {"result": False, "code": RESOURCE_NOT_FOUND,
                        "comment": f"No source was found by the name of `{data.get('sourceName')}`."}, None
            label, rgb = picture
            jpeg = simplejpeg.encode_jpeg(_fit(rgb, data.get("imageWidth"), data.get("imageHeight")),
                                          quality=90, colorspace="RGB")
            self.served.append((time.monotonic(), label))
            return {"result": True, "code": SUCCESS}, {
                "imageData": "data:image/jpg;base64," + base64.b64encode(jpeg).decode()}
        return {"result": False, "code": UNKNOWN_REQUEST_TYPE, "comment": f"Your request type is not valid: {kind}"}, None
