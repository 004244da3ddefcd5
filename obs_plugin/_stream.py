"""The OBS source's stream client (standard library only): settings, backoff, clock mapping, receiver.

Everything here is independent of OBS, so it is tested without OBS:

* :func:`normalize_url` turns what a streamer types ("127.0.0.1:8765", "ws://host:port") into the
  ``/stream`` URL with ``format=rgba`` (the script cannot decode JPEG with the standard library);
* :class:`Backoff` is the exponential reconnect delay;
* :class:`PtsClock` maps the stream's presentation times (seconds) onto the host's monotonic
  nanosecond clock (OBS's ``os_gettime_ns``), so OBS can sync audio and video by timestamp;
* :func:`placeholder_rgba` draws the "waiting for LiveIdol" image (text-free stripes);
* :class:`StreamReceiver` owns one background thread that connects, reads hello / frame / audio
  messages (``docs/protocol.md``), hands them to a :class:`Sink`, and reconnects with backoff;
* :class:`PushToTalk` sends the push-to-talk hotkey's presses to the backend's ``/control`` (``ptt``).

Usage::

    rx = StreamReceiver(normalize_url("127.0.0.1:8765"), token="", sink=my_sink)
    rx.start()
    ...
    rx.stop()   # joins the thread; no sink call happens after it returns
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

try:  # inside the obs_plugin package (tests) or as a top-level module next to the OBS script
    from . import _msgpack, _ws
except ImportError:  # pragma: no cover - the OBS script's import path
    import _msgpack  # type: ignore[no-redef]
    import _ws  # type: ignore[no-redef]

__all__ = [
    "DEFAULT_URL",
    "PROTOCOL_VERSION",
    "AudioChunk",
    "Backoff",
    "Frame",
    "Hello",
    "PtsClock",
    "PushToTalk",
    "Sink",
    "StreamError",
    "StreamReceiver",
    "control_url",
    "normalize_url",
    "parse_message",
    "placeholder_rgba",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:8765/stream"
PROTOCOL_VERSION = 1


class StreamError(ValueError):
    """A message from the backend does not follow docs/protocol.md (names what and where)."""


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def normalize_url(text: str) -> str:
    """The ``/stream`` websocket URL for what the user typed; ValueError naming the input if unusable.

    Accepts ``host:port``, ``ws://host:port``, ``http://host:port`` (mapped to ws), with or without
    a path; an empty path becomes ``/stream``.  Forces ``format=rgba`` and keeps ``audio`` (default 1).
    """
    raw = (text or "").strip() or DEFAULT_URL
    if "://" not in raw:
        raw = "ws://" + raw
    parts = urllib.parse.urlsplit(raw)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("ws", "wss"):
        raise ValueError(f"LiveIdol URL {text!r}: scheme must be ws:// or wss://, not {parts.scheme}://")
    if not parts.hostname:
        raise ValueError(f"LiveIdol URL {text!r}: no host")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ValueError(f"LiveIdol URL {text!r}: bad port") from exc
    path = parts.path if parts.path not in ("", "/") else "/stream"
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    if query.get("format", "rgba") != "rgba":
        raise ValueError(f"LiveIdol URL {text!r}: the OBS script needs format=rgba (it cannot decode JPEG)")
    query["format"] = "rgba"
    query.setdefault("audio", "1")
    if query["audio"] not in ("0", "1"):
        raise ValueError(f"LiveIdol URL {text!r}: audio must be 0 or 1")
    url = urllib.parse.urlunsplit((scheme, parts.netloc, path, urllib.parse.urlencode(query), ""))
    _ws.parse_url(url)
    return url


@dataclass
class Backoff:
    """Exponential reconnect delay: initial, initial*factor, ... capped at maximum, with +-jitter."""

    initial: float = 0.25
    factor: float = 2.0
    maximum: float = 5.0
    jitter: float = 0.1
    _attempt: int = 0

    def next(self, rand: Callable[[], float] = random.random) -> float:
        delay = min(self.maximum, self.initial * self.factor ** self._attempt)
        self._attempt += 1
        return delay * (1.0 + self.jitter * (2.0 * rand() - 1.0))

    def reset(self) -> None:
        self._attempt = 0


class PtsClock:
    """Maps stream pts (seconds) to host time (ns) as ``base + pts`` plus a fixed ``delay``.

    The base is set from the first pts and re-set when a mapped time strays more than
    ``resync_s`` from now (the backend restarted, stalled or jumped); ``resets`` counts those.
    Audio and video share one clock, so their relative timing survives a re-set.
    """

    def __init__(self, *, delay_s: float = 0.0, resync_s: float = 1.0) -> None:
        self.delay_ns = int(delay_s * 1e9)
        self.resync_ns = int(resync_s * 1e9)
        self._base: int | None = None
        self.resets = 0

    def reset(self) -> None:
        self._base = None

    def to_ns(self, pts: float, now_ns: int) -> int:
        pts_ns = round(pts * 1e9)
        if self._base is None or abs(self._base + pts_ns - now_ns) > self.resync_ns:
            if self._base is not None:
                self.resets += 1
            self._base = now_ns - pts_ns
        return self._base + pts_ns + self.delay_ns


def placeholder_rgba(width: int, height: int, *, period: int = 32) -> bytes:
    """The "waiting for LiveIdol" image: diagonal violet/pink stripes, 80% opaque (no text)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"placeholder size must be positive, got {width}x{height}")
    a = bytes((96, 64, 160, 204))
    b = bytes((200, 110, 170, 204))
    half = period // 2
    stripe = (a * half + b * (period - half))
    reps = (width + height) // period + 2
    long_row = stripe * reps
    rows = []
    for y in range(height):
        off = (y % period) * 4
        rows.append(long_row[off:off + width * 4])
    return b"".join(rows)


# ---------------------------------------------------------------------------------------------
# Messages (docs/protocol.md, /stream)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    width: int
    height: int
    fps: float
    sample_rate: int
    channels: int
    server: str


@dataclass(frozen=True)
class Frame:
    seq: int
    pts: float
    width: int
    height: int
    data: bytes  # RGBA, straight alpha, rows top to bottom


@dataclass(frozen=True)
class AudioChunk:
    seq: int
    pts: float
    sample_rate: int
    channels: int
    data: bytes  # interleaved float32 little-endian

    @property
    def frames(self) -> int:
        return len(self.data) // (4 * self.channels)


def _field(msg: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise StreamError(f"{where}: field {key!r} missing or not {getattr(kind, '__name__', kind)}")
    return value


def parse_message(payload: bytes | str) -> Hello | Frame | AudioChunk | None:
    """Decode one /stream message; None for types this client ignores; StreamError if malformed."""
    if isinstance(payload, str):
        raise StreamError("text frame on /stream (expected binary msgpack)")
    try:
        msg = _msgpack.unpackb(payload)
    except _msgpack.MsgpackError as exc:
        raise StreamError(f"bad msgpack: {exc}") from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise StreamError("message is not a map with a 'type'")
    kind = msg["type"]
    where = f"{kind} message"
    if kind == "hello":
        proto = msg.get("protocol")
        if proto != PROTOCOL_VERSION:
            raise StreamError(f"hello: protocol {proto!r} not supported (this script speaks {PROTOCOL_VERSION})")
        if msg.get("format", "rgba") != "rgba":
            raise StreamError(f"hello: format {msg.get('format')!r}; the OBS script needs rgba")
        return Hello(width=_field(msg, "width", int, where), height=_field(msg, "height", int, where),
                     fps=float(_field(msg, "fps", (int, float), where)),
                     sample_rate=int(msg.get("sample_rate") or 48000), channels=int(msg.get("channels") or 1),
                     server=str(msg.get("server", "")))
    if kind == "frame":
        where = f"frame seq={msg.get('seq')}"
        fmt = msg.get("format")
        if fmt != "rgba":
            raise StreamError(f"{where}: format {fmt!r} (expected 'rgba')")
        w, h = _field(msg, "width", int, where), _field(msg, "height", int, where)
        data = _field(msg, "data", bytes, where)
        if w <= 0 or h <= 0 or len(data) != w * h * 4:
            raise StreamError(f"{where}: {len(data)} bytes of data for {w}x{h} RGBA (expected {w * h * 4})")
        return Frame(seq=_field(msg, "seq", int, where), pts=float(_field(msg, "pts", (int, float), where)),
                     width=w, height=h, data=data)
    if kind == "audio":
        where = f"audio seq={msg.get('seq')}"
        if msg.get("format", "f32le") != "f32le":
            raise StreamError(f"{where}: format {msg.get('format')!r} (expected 'f32le')")
        channels = _field(msg, "channels", int, where)
        data = _field(msg, "data", bytes, where)
        if channels not in (1, 2) or len(data) % (4 * channels):
            raise StreamError(f"{where}: {len(data)} bytes is not whole float32 samples of {channels} channel(s)")
        return AudioChunk(seq=_field(msg, "seq", int, where), pts=float(_field(msg, "pts", (int, float), where)),
                          sample_rate=_field(msg, "sample_rate", int, where), channels=channels, data=data)
    if kind == "error":
        raise StreamError(f"server error {msg.get('code')!r}: {msg.get('message')!r}")
    return None


# ---------------------------------------------------------------------------------------------
# Receiver thread
# ---------------------------------------------------------------------------------------------


class Sink(Protocol):
    """Where the receiver delivers; called from the receiver's thread."""

    def on_hello(self, hello: Hello) -> None: ...
    def on_frame(self, frame: Frame) -> None: ...
    def on_audio(self, chunk: AudioChunk) -> None: ...
    def on_disconnect(self, reason: str) -> None: ...


class StreamReceiver:
    """One background thread: connect, read, deliver to ``sink``, reconnect with backoff until stopped."""

    def __init__(self, url: str, *, token: str = "", sink: Sink, backoff: Backoff | None = None,
                 read_timeout: float = 5.0, connect: Callable[..., _ws.WebSocket] = _ws.connect,
                 stats_every_s: float = 5.0) -> None:
        self.url = url
        self._token = token
        self.sink = sink
        self.backoff = backoff or Backoff()
        self.read_timeout = read_timeout
        self._connect = connect
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ws: _ws.WebSocket | None = None
        self._lock = threading.Lock()
        self.connected = False
        self.connects = 0
        self.frames = 0
        self.audio_chunks = 0
        self.bad_messages = 0
        self.stats_every_s = stats_every_s
        self.fps = 0.0  # frames per second received over the last stats window

    def __repr__(self) -> str:  # never shows the token
        return f"StreamReceiver(url={self.url!r}, connected={self.connected})"

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("StreamReceiver already started")
        self._thread = threading.Thread(target=self._run, name="liveidol-stream", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop and join the thread (unblocks a pending read). No sink call happens after this returns."""
        self._stop.set()
        with self._lock:
            ws = self._ws
        if ws is not None:
            ws.abort()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("stream thread did not stop within %.1f s url=%s", timeout, self.url)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            reason = self._session()
            if self._stop.is_set():
                break
            delay = self.backoff.next()
            log.info("LiveIdol stream disconnected (%s); retrying in %.2f s url=%s", reason, delay, self.url)
            try:
                self.sink.on_disconnect(reason)
            except Exception:
                log.exception("sink.on_disconnect failed")
            self._stop.wait(delay)

    def _session(self) -> str:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        try:
            ws = self._connect(self.url, timeout=self.read_timeout, headers=headers)
        except (OSError, _ws.WebSocketError, ValueError) as exc:
            return f"connect failed: {exc}"
        with self._lock:
            self._ws = ws
        if self._stop.is_set():
            ws.close()
        self.connects += 1
        idle = 0
        got_hello = False
        window_start, window_frames = time.monotonic(), self.frames
        session_start, session_frames, session_audio = window_start, self.frames, self.audio_chunks
        try:
            while not self._stop.is_set():
                try:
                    payload = ws.recv()
                except TimeoutError:
                    idle += 1
                    if idle >= 3:
                        return f"no data for {idle * self.read_timeout:.0f} s"
                    ws.ping()
                    continue
                idle = 0
                if payload is None:
                    return "server closed the connection"
                try:
                    msg = parse_message(payload)
                except StreamError as exc:
                    if not got_hello:
                        return f"bad stream: {exc}"
                    self.bad_messages += 1
                    log.warning("skipping bad message from backend: %s", exc)
                    continue
                if isinstance(msg, Hello):
                    got_hello = True
                    self.connected = True
                    self.backoff.reset()
                    log.info("LiveIdol stream connected server=%s size=%dx%d fps=%.2f",
                             msg.server, msg.width, msg.height, msg.fps)
                    self.sink.on_hello(msg)
                elif not got_hello:
                    return "first message was not hello"
                elif isinstance(msg, Frame):
                    self.frames += 1
                    self.sink.on_frame(msg)
                    now = time.monotonic()
                    if now - window_start >= self.stats_every_s:
                        self.fps = (self.frames - window_frames) / (now - window_start)
                        log.info("LiveIdol stream stats fps=%.2f frames=%d audio_chunks=%d bad=%d",
                                 self.fps, self.frames, self.audio_chunks, self.bad_messages)
                        window_start, window_frames = now, self.frames
                elif isinstance(msg, AudioChunk):
                    self.audio_chunks += 1
                    self.sink.on_audio(msg)
            return "stopped"
        except (OSError, _ws.WebSocketError) as exc:
            return f"connection lost: {exc or type(exc).__name__}"
        finally:
            self.connected = False
            with self._lock:
                self._ws = None
            ws.close()
            took = time.monotonic() - session_start
            frames = self.frames - session_frames
            log.info("LiveIdol stream session ended frames=%d audio_chunks=%d seconds=%.2f fps=%.2f",
                     frames, self.audio_chunks - session_audio, took, frames / took if took > 0 else 0.0)



# ---------------------------------------------------------------------------------------------
# Push-to-talk: the hotkey's presses -> the backend's /control (docs/protocol.md, "ptt")
# ---------------------------------------------------------------------------------------------


def control_url(stream_url: str) -> str:
    """The backend's ``/control`` URL beside its ``/stream`` URL (same scheme, host and port)."""
    parts = urllib.parse.urlsplit(stream_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/control", "", ""))


class PushToTalk:
    """One background thread that sends ``{"type": "ptt", "held": ...}`` for each :meth:`press`.

    It connects on the first press, authenticates with the control token (the source's "Token" setting),
    keeps the connection for the next presses and reconnects once when it was lost. Presses wait in a small
    bounded queue (a full queue drops the press with a warning); nothing here blocks the hotkey's thread.
    """

    def __init__(self, stream_url: str, token: str, *, connect: Callable[..., _ws.WebSocket] = _ws.connect,
                 timeout: float = 5.0) -> None:
        self.url = control_url(stream_url)
        self._token = token
        self._connect = connect
        self.timeout = timeout
        self._queue: queue.Queue[bool | None] = queue.Queue(maxsize=16)
        self._thread: threading.Thread | None = None
        self._warned = False
        self.sent = 0  # presses the backend accepted
        self.refused = 0  # presses it answered with an error (e.g. no --voice)

    def __repr__(self) -> str:  # never shows the token
        return f"PushToTalk(url={self.url!r}, sent={self.sent})"

    def press(self, held: bool) -> None:
        """The hotkey went down (True) or up (False). Returns at once."""
        if not self._token:
            if not self._warned:
                self._warned = True
                log.warning("LiveIdol push-to-talk needs the control token: paste it into the source's Token "
                            "setting (liveidol serve prints it; ~/.config/liveidol/token)")
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="liveidol-ptt", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait(bool(held))
        except queue.Full:
            log.warning("LiveIdol push-to-talk: press dropped (backend not answering)")

    def stop(self, timeout: float = 3.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def _open(self) -> _ws.WebSocket:
        ws = self._connect(self.url, timeout=self.timeout)
        try:
            ws.send(json.dumps({"type": "auth", "token": self._token}))
            reply = ws.recv()
            if reply is None:
                raise _ws.ConnectionClosed("the backend refused the token (close 4001): check the source's Token")
            return ws
        except BaseException:
            ws.abort()
            raise

    def _run(self) -> None:
        ws: _ws.WebSocket | None = None
        while (held := self._queue.get()) is not None:
            for attempt in (1, 2):  # a kept connection may have died since the last press: retry once
                try:
                    if ws is None:
                        ws = self._open()
                    ws.send(json.dumps({"type": "ptt", "held": held}))
                    raw = ws.recv()
                    if raw is None:
                        raise _ws.ConnectionClosed("the backend closed the control connection")
                    reply = json.loads(raw)
                    if isinstance(reply, dict) and reply.get("type") == "error":
                        self.refused += 1
                        log.warning("LiveIdol push-to-talk refused by the backend: %s", reply.get("message"))
                    else:
                        self.sent += 1
                    break
                except (OSError, ValueError, _ws.WebSocketError) as exc:
                    if ws is not None:
                        ws.abort()
                        ws = None
                    if attempt == 2:
                        log.warning("LiveIdol push-to-talk not sent to %s: %s", self.url, exc)
        if ws is not None:
            ws.close()
