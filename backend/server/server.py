"""The websocket server: frames and audio to OBS on ``/stream``, commands on ``/control``,
``GET /healthz`` and ``GET /metrics`` over plain HTTP (docs/protocol.md).

Built on ``websockets.asyncio.server.serve``. Every ``/stream`` client has its own engine
:class:`~backend.engine.broadcast.Subscription` with ONE bounded frame slot: a slow client loses frames
and never stalls the engine or the other clients. The wire format lives in :mod:`backend.server.protocol`.

Usage::

    token = load_or_create_token(cfg.server.token_file or None)     # backend.server.auth
    async with Server(cfg.server, engine, token=token.value, state_fn=director.state) as server:
        print(server.url)                   # ws://127.0.0.1:8765
        await server.serve_forever()        # or just keep the block open

``token=None`` loads/creates the token file itself (``server.token.created`` says to show it once).
``state_fn()`` (optional) returns the director's ``{"now": ..., "next": [...]}`` for the "state" topic.
Binding a non-loopback host needs ``ServerConfig.allow_remote``.

Command events (docs/protocol.md, "Command events"): a ``/control`` command sent with ``events`` gets its
``started`` and ``finished`` pushed to that connection, from the engine ticket's ``shown`` / ``finished``
futures (and ``Ticket.ended`` for the reason). The futures' callbacks only append to the connection's bounded
queue (``event_queue`` events; the oldest are dropped, counted in ``control_events_dropped`` and in each
event's ``dropped``), and one task per connection sends them: a client that does not read never blocks the
engine or another client.

Hostile clients (docs/protocol.md, "Endpoints" and "Errors and limits"): a request whose ``Origin`` header is not in
``server.allowed_origins`` gets 403 (a web page in the streamer's browser cannot reach the backend);
off loopback every path needs the token (``Authorization: Bearer`` for HTTP and ``/stream``, the first
message on ``/control``), and on loopback a token that is sent must be right; wrong tokens lock the address
out for a while (:class:`~backend.server.auth.AuthThrottle`); ``server.tls_cert`` serves ``wss://``. Bad
bytes get a clean error or close, never a traceback, and what one connection can write to the log is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import http
import ipaddress
import itertools
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State as WsState

from backend.config import ServerConfig
from backend.engine.broadcast import Subscription
from backend.engine.session import CommandError, EngineError
from backend.errors import LiveIdolError
from backend.events import AudioChunk, Command, VideoFrame
from backend.server import metrics as prom
from backend.server.auth import (
    AuthThrottle,
    Token,
    bearer_token,
    check_token,
    load_or_create_token,
    wire_logger,
)
from backend.server.protocol import (
    EVENTS_VERSION,
    FORMATS,
    Close,
    CloseCode,
    CommandRequest,
    ControlProtocol,
    ControlState,
    Dispatch,
    EndReason,
    Error,
    ErrorCode,
    Event,
    EventKind,
    Hello,
    Ok,
    PushToTalkRequest,
    Send,
    State,
    Status,
    StatusRequest,
    SubscribeRequest,
    audio_message,
    encode,
    frame_message,
)

__all__ = ["Server", "ServerError", "StreamEngine"]

log = logging.getLogger(__name__)

VERSION = "0.1.0"
STATE_POLL_S = 0.2
COMMAND_WAIT_S = 10.0
LOG_LINES_PER_CONNECTION = 5  # lines of one kind one connection may log; the rest are counted
EVENT_QUEUE = 256  # command events waiting to be sent to one /control connection; beyond, the oldest are dropped


class ServerError(LiveIdolError):
    """The server cannot start (bad host, port in use ...)."""


class StreamEngine(Protocol):
    """What the server needs from the engine (``backend.engine.Engine`` has it)."""

    @property
    def fps(self) -> float: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def output_size(self) -> tuple[int, int]: ...

    @property
    def healthy(self) -> bool: ...

    def subscribe(self, *, video: bool = True, audio: bool = True, slot_frames: int = 1,
                  audio_chunks: int = 512) -> Subscription: ...

    async def submit(self, command: Command) -> Any: ...

    def status(self) -> dict[str, Any]: ...


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback


class _Connection(ServerConnection):
    """websockets' server connection with two guards against hostile peers.

    * Bytes after the HTTP request head and before our response are dropped. A websocket client waits for
      the response before it sends anything (RFC 6455 section 4.1), so they are pipelined HTTP requests or
      junk; websockets would parse them as frames, fail the connection, then trip over its own EOF (an
      AssertionError and a traceback) while answering the first request.
    * Nothing is written once the transport is closing. A peer that floods pings and resets the connection
      leaves a pong per ping to write; asyncio logs a warning for every write to a lost socket (about 195
      lines per connection).
    """

    _head_tail = b""  # the last bytes of the request head seen so far (its end may straddle two reads)
    _head_done = False

    def data_received(self, data: bytes) -> None:
        if not self._head_done:
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            if end < 0:
                self._head_tail = seen[-3:]
                super().data_received(data)
                return
            self._head_done = True
            cut = end + 4 - len(self._head_tail)
            if len(data) > cut:
                log.debug("dropped %d bytes sent before the handshake response", len(data) - cut)
            super().data_received(data[:cut])
            return
        if self.protocol.state is WsState.CONNECTING:  # still answering the request: more is pipelining
            return
        super().data_received(data)

    def send_data(self) -> None:
        for data in self.protocol.data_to_send():
            if self.transport.is_closing():
                continue  # the peer is gone or we closed: what is left can never arrive
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():  # half-close, as websockets does (not under TLS)
                with contextlib.suppress(OSError, RuntimeError):
                    self.transport.write_eof()
            else:
                self.transport.close()


class _LogBudget:
    """At most ``limit`` log lines of one kind for one connection; the rest are only counted."""

    def __init__(self, limit: int = LOG_LINES_PER_CONNECTION) -> None:
        self.limit = limit
        self.used = 0
        self.suppressed = 0

    def take(self) -> bool:
        if self.used < self.limit:
            self.used += 1
            return True
        self.suppressed += 1
        return False


def _tls_context(cfg: ServerConfig) -> ssl.SSLContext | None:
    """The TLS context of ``server.tls_cert`` / ``server.tls_key``; None for plain ws://."""
    if not cfg.tls_cert:
        if cfg.tls_key:
            raise ServerError(f"server.tls_key = {cfg.tls_key!r} is set but server.tls_cert is not")
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
    except FileNotFoundError as exc:
        raise ServerError(f"server.tls_cert/tls_key: {exc.filename or cfg.tls_cert}: no such file") from None
    except ssl.SSLError as exc:
        raise ServerError(f"server.tls_cert = {cfg.tls_cert!r}, server.tls_key = {cfg.tls_key!r}: not a PEM "
                          f"certificate and its private key ({exc.reason or exc.strerror})") from None
    except OSError as exc:
        raise ServerError(f"server.tls_cert/tls_key: {exc.filename or cfg.tls_cert}: {exc.strerror}") from None
    return ctx


def _peer(connection: ServerConnection) -> str:
    return str(connection.remote_address[0]) if connection.remote_address else "?"


class _FrameCache:
    """Each frame is encoded once per format, however many clients send it."""

    def __init__(self, jpeg_quality: int, keep: int = 4) -> None:
        self.jpeg_quality = jpeg_quality
        self._cache: collections.OrderedDict[tuple[int, str], asyncio.Future[bytes]] = collections.OrderedDict()
        self._keep = keep

    async def encode(self, frame: VideoFrame, fmt: str) -> bytes:
        key = (frame.seq, fmt)
        fut = self._cache.get(key)
        if fut is None:
            loop = asyncio.get_running_loop()
            if fmt == "jpeg":  # CPU work off the loop
                fut = asyncio.ensure_future(asyncio.to_thread(self._encode, frame, fmt))
            else:
                fut = loop.create_future()
                fut.set_result(self._encode(frame, fmt))
            self._cache[key] = fut
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        return await asyncio.shield(fut)

    def _encode(self, frame: VideoFrame, fmt: str) -> bytes:
        data = encode(frame_message(frame, fmt, jpeg_quality=self.jpeg_quality))
        assert isinstance(data, bytes)
        return data


class _EventQueue:
    """Command events waiting for one ``/control`` connection: bounded, the oldest dropped (counted) while the
    client does not read. ``put`` never blocks (the engine's future callbacks call it); one task ``get``s."""

    def __init__(self, limit: int) -> None:
        self._items: collections.deque[tuple[Event, bool]] = collections.deque()
        self._limit = max(1, limit)
        self._ready = asyncio.Event()
        self.dropped = 0
        self.closed = False  # the connection is gone: nothing more is kept

    def put(self, event: Event, text: bool) -> bool:
        """Queue ``event`` (to go as JSON text if ``text``); False when the oldest waiting one was dropped."""
        if self.closed:
            return True
        kept = len(self._items) < self._limit
        if not kept:
            self._items.popleft()
            self.dropped += 1
        self._items.append((event, text))
        self._ready.set()
        return kept

    async def get(self) -> tuple[Event, bool]:
        """The oldest waiting event, stamped with how many this connection has lost so far."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        event, text = self._items.popleft()
        return dataclasses.replace(event, dropped=self.dropped), text


@dataclasses.dataclass
class _ControlClient:
    """One ``/control`` connection: its serialized ``send`` and, once a command asks, its event queue and sender."""

    cid: int
    send: Callable[[bytes | str], Awaitable[None]]
    events: _EventQueue
    tasks: set[asyncio.Task[None]]
    sender: asyncio.Task[None] | None = None


@dataclasses.dataclass
class _StreamClient:
    cid: int
    remote: str
    fmt: str
    sub: Subscription
    sent_frames: int = 0
    sent_audio: int = 0


class Server:
    """The websocket server (see module docstring)."""

    def __init__(self, cfg: ServerConfig, engine: StreamEngine, *, token: str | Token | None = None,
                 state_fn: Callable[[], dict[str, Any]] | None = None,
                 chat_fn: Callable[[], list[dict[str, Any]]] | None = None, event_queue: int = EVENT_QUEUE) -> None:
        if not cfg.allow_remote and not is_loopback(cfg.host):
            raise ServerError(f"server.host = {cfg.host!r} is not a loopback address; set server.allow_remote = "
                              "true to serve other machines (frames then go out as JPEG)")
        self.cfg = cfg
        self.engine = engine
        if isinstance(token, str):
            token = Token(token)
        self.token: Token = token if token is not None else load_or_create_token(cfg.token_file or None)
        self.throttle = AuthThrottle()
        self._tls = _tls_context(cfg)
        self._state_fn = state_fn
        self.push_to_talk: Callable[[bool], object] | None = None  # the voice listener's, set by the app
        self._chat_fn = chat_fn  # the chat bridges' statuses (chat_bridges.base.BridgeStatus), for "status"
        self._ws: WsServer | None = None
        self._frames = _FrameCache(cfg.jpeg_quality)
        self._ids = itertools.count(1)
        self._streams: dict[int, _StreamClient] = {}
        self._controls = 0
        self._event_queue = event_queue
        self.counters = {"stream_connections": 0, "control_connections": 0, "auth_failures": 0,
                         "bad_messages": 0, "commands": 0, "commands_rejected": 0,
                         "client_frames_dropped": 0, "refused_requests": 0,
                         "control_events_sent": 0, "control_events_dropped": 0}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            self._ws = await serve(
                self._handle, self.cfg.host, self.cfg.port, process_request=self._process_request,
                max_size=self.cfg.max_message_bytes, compression=None, server_header=f"liveidol/{VERSION}",
                create_connection=_Connection, logger=wire_logger("websockets.server"),
                ssl=self._tls)
        except OSError as exc:
            raise ServerError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {exc.strerror}") from exc
        log.info("server listening url=%s", self.url)
        if self._tls is None and not is_loopback(self.cfg.host):
            log.warning("serving other machines over plain ws:// host=%s: the control token and the frames cross "
                        "the network unencrypted; set server.tls_cert and server.tls_key to serve wss://",
                        self.cfg.host)

    async def stop(self) -> None:
        if self._ws is None:
            return
        for client in self._streams.values():
            client.sub.close()
        self._ws.close()
        await self._ws.wait_closed()
        self._ws = None

    async def serve_forever(self) -> None:
        if self._ws is None:
            raise ServerError("server not started")
        await self._ws.serve_forever()

    @property
    def port(self) -> int:
        if self._ws is None:
            raise ServerError("server not started")
        return int(next(iter(self._ws.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        host = self.cfg.host if ":" not in self.cfg.host else f"[{self.cfg.host}]"
        return f"{'wss' if self._tls else 'ws'}://{host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "stream_clients": len(self._streams), "control_clients": self._controls,
                "client_frames_dropped_now": sum(c.sub.dropped_frames for c in self._streams.values())}

    # ------------------------------------------------------------------ HTTP

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        remote = _peer(connection)
        refused = self._refuse_request(connection, request, path, remote)
        if refused is not None:
            self.counters["refused_requests"] += 1
            log.info("request refused path=%s remote=%s status=%d", path, remote, refused.status_code)
            return refused
        if path in ("/stream", "/control"):
            return None
        if path == "/healthz":
            ok = self.engine.healthy
            body = "ok\n" if ok else "starting\n" if getattr(self.engine, "starting", False) else "unavailable\n"
            return connection.respond(http.HTTPStatus.OK if ok else http.HTTPStatus.SERVICE_UNAVAILABLE, body)
        if path == "/metrics":
            response = connection.respond(http.HTTPStatus.OK, self.metrics_text())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = prom.CONTENT_TYPE
            return response
        return connection.respond(http.HTTPStatus.NOT_FOUND, f"no such path {path!r}: use /stream, /control, "
                                  "/healthz or /metrics\n")

    def _refuse_request(self, connection: ServerConnection, request: Request, path: str,
                        remote: str) -> Response | None:
        """403 for a browser Origin not allowed, 429 while locked out, 401 for a missing or wrong token."""
        refused = [o for o in request.headers.get_all("Origin") if o not in self.cfg.allowed_origins]
        if refused:  # a web page (browsers always send Origin); OBS's script and our clients send none
            return connection.respond(http.HTTPStatus.FORBIDDEN, f"origin {refused[0][:100]!r} not allowed: "
                                      "web pages may connect only from server.allowed_origins\n")
        if path == "/control":
            return None  # the token is its first message (throttled in _control)
        values = request.headers.get_all("Authorization")
        given = bearer_token(values[0]) if len(values) == 1 else ("" if values else None)
        if given is None and is_loopback(remote):
            return None  # loopback needs no token; one that is sent must be right
        now = time.monotonic()
        key = f"{remote} bearer"  # apart from /control's: an OBS source with a stale token locks out only itself
        wait = self.throttle.locked_for(key, now)
        if wait > 0:
            response = connection.respond(http.HTTPStatus.TOO_MANY_REQUESTS,
                                          f"too many wrong tokens: retry in {math.ceil(wait)} s\n")
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        if not check_token(self.token.value, given):
            self.counters["auth_failures"] += 1
            self.throttle.failed(key, now)
            response = connection.respond(http.HTTPStatus.UNAUTHORIZED, "a missing or wrong token: send "
                                          "'Authorization: Bearer <control token>'\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="liveidol"'
            return response
        self.throttle.succeeded(key)
        return None

    def metrics_text(self) -> str:
        st = self.engine.status()
        dropped_clients = self.counters["client_frames_dropped"] + sum(
            c.sub.dropped_frames for c in self._streams.values())
        M, S = prom.Metric, prom.Sample
        frames = [S(st.get(f"frames_{k}", 0), {"kind": k}) for k in ("made", "shown", "dropped", "repeated")]
        return prom.render([
            M("liveidol_fps", "gauge", "Measured output frame rate.", [S(st.get("fps_measured"))]),
            M("liveidol_fps_target", "gauge", "Configured output frame rate.", [S(st.get("fps_target"))]),
            M("liveidol_frames_total", "counter", "Frames made, shown, dropped (interrupted) and repeated (buffer dry).",
              frames),
            M("liveidol_client_frames_dropped_total", "counter", "Frames slow clients did not get.", [S(dropped_clients)]),
            M("liveidol_command_latency_seconds", "summary", "Command submit to first responding frame shown.",
              [S(st.get("latency_p50_s"), {"quantile": "0.5"}), S(st.get("latency_p95_s"), {"quantile": "0.95"})]),
            M("liveidol_buffer_frames", "gauge", "Frames generated ahead of the display clock (queue depth).",
              [S(st.get("buffer_frames", 0))]),
            M("liveidol_steps", "gauge", "Denoising steps per chunk now.", [S(st.get("steps"))]),
            M("liveidol_chunk_frames", "gauge", "Latent frames per chunk now.", [S(st.get("chunk_frames"))]),
            M("liveidol_clients", "gauge", "Connected clients.",
              [S(len(self._streams), {"endpoint": "stream"}), S(self._controls, {"endpoint": "control"})]),
            M("liveidol_commands_total", "counter", "Commands received on /control.", [S(self.counters["commands"])]),
            M("liveidol_control_events_total", "counter",
              "Command events (started/finished) pushed on /control, and those dropped for clients not reading.",
              [S(self.counters["control_events_sent"], {"state": "sent"}),
               S(self.counters["control_events_dropped"], {"state": "dropped"})]),
            M("liveidol_commands_coalesced_total", "counter",
              "Commands that arrived while a chunk was made and took effect together at its end (the newest wins).",
              [S(st.get("commands_coalesced", 0))]),
            M("liveidol_healthy", "gauge", "1 while the engine produces frames.", [S(1 if self.engine.healthy else 0)]),
        ])

    # ------------------------------------------------------------------ websockets

    async def _handle(self, connection: ServerConnection) -> None:
        url = urlsplit(connection.request.path if connection.request else "/")
        remote = connection.remote_address[0] if connection.remote_address else "?"
        try:
            if url.path == "/stream":
                await self._stream(connection, parse_qs(url.query), str(remote))
            else:
                await self._control(connection, str(remote))
        except ConnectionClosed as exc:
            log.debug("connection closed path=%s remote=%s code=%s", url.path, remote,
                      exc.rcvd.code if exc.rcvd else None)

    async def _stream(self, connection: ServerConnection, query: dict[str, list[str]], remote: str) -> None:
        local = is_loopback(remote)
        fmt = query.get("format", ["rgba" if local else "jpeg"])[-1]
        audio_flag = query.get("audio", ["1"])[-1]
        if fmt not in FORMATS or audio_flag not in ("0", "1"):
            msg = Error(ErrorCode.BAD_REQUEST, f"/stream: format must be rgba or jpeg and audio 0 or 1, got "
                        f"format={fmt!r} audio={audio_flag!r}")
            await connection.send(encode(msg))
            await connection.close(CloseCode.POLICY, "bad query")
            return
        w, h = self.engine.output_size
        sub = self.engine.subscribe(audio=audio_flag == "1", slot_frames=self.cfg.client_slot_frames)
        client = _StreamClient(next(self._ids), remote, fmt, sub)
        self._streams[client.cid] = client
        self.counters["stream_connections"] += 1
        log.info("stream client connected client=%d remote=%s format=%s", client.cid, remote, fmt)
        try:
            await connection.send(encode(Hello(int(w), int(h), float(self.engine.fps), fmt,
                                               int(self.engine.sample_rate), 1, server=f"liveidol/{VERSION}")))
            async for item in sub:
                if isinstance(item, VideoFrame):
                    await connection.send(await self._frames.encode(item, fmt))
                    client.sent_frames += 1
                elif isinstance(item, AudioChunk):
                    await connection.send(encode(audio_message(item)))
                    client.sent_audio += 1
            await connection.close(CloseCode.NORMAL, "server stopping")
        finally:
            sub.close()
            del self._streams[client.cid]
            self.counters["client_frames_dropped"] += sub.dropped_frames
            log.info("stream client gone client=%d sent_frames=%d dropped_frames=%d", client.cid,
                     client.sent_frames, sub.dropped_frames)

    async def _control(self, connection: ServerConnection, remote: str) -> None:
        cid = next(self._ids)
        proto = ControlProtocol(lambda given: check_token(self.token.value, given))
        self._controls += 1
        self.counters["control_connections"] += 1
        tasks: set[asyncio.Task[None]] = set()
        send_lock = asyncio.Lock()
        bad_logs = _LogBudget()
        bad_total = 0
        key = f"{remote} control"  # the throttle's: wrong tokens from this address on /control

        async def send(payload: bytes | str) -> None:
            async with send_lock:
                await connection.send(payload)

        client = _ControlClient(cid, send, _EventQueue(self._event_queue), tasks)

        try:
            async for data in connection:
                authenticating = proto.state is ControlState.AWAITING_AUTH
                if authenticating:
                    wait = self.throttle.locked_for(key, time.monotonic())
                    if wait > 0:  # refused without looking at the token: parallel guessing gains nothing
                        self.counters["refused_requests"] += 1
                        log.info("control client refused client=%d remote=%s code=%d reason=locked out", cid,
                                 remote, CloseCode.TOO_MANY_ATTEMPTS)
                        await connection.close(CloseCode.TOO_MANY_ATTEMPTS,
                                               f"too many wrong tokens: retry in {math.ceil(wait)} s")
                        return
                try:
                    actions = proto.receive(data)
                except Exception as exc:  # the protocol refuses bad bytes itself; this guards the log anyway
                    proto.errors += 1
                    if proto.state is ControlState.READY:
                        reply = Error(ErrorCode.BAD_MESSAGE, "unreadable message")
                        actions = [Send(encode(reply, text=isinstance(data, str)))]
                    else:
                        actions = [Close(CloseCode.NOT_AUTHENTICATED, "authenticate first")]
                    if bad_logs.take():
                        log.warning("control message not handled client=%d remote=%s error=%s", cid, remote,
                                    type(exc).__name__)
                if authenticating and proto.state is ControlState.READY:
                    self.throttle.succeeded(key)
                for action in actions:
                    if isinstance(action, Send):
                        await send(action.payload)
                    elif isinstance(action, Close):
                        if action.code == CloseCode.BAD_TOKEN:
                            self.counters["auth_failures"] += 1
                            self.throttle.failed(key, time.monotonic())
                        log.info("control client refused client=%d remote=%s code=%d reason=%s", cid, remote,
                                 action.code, action.reason)
                        await connection.close(action.code, action.reason)
                        return
                    elif isinstance(action, Dispatch):
                        task = asyncio.create_task(self._dispatch(action, client, proto), name=f"control-{cid}")
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                if proto.errors:
                    self.counters["bad_messages"] += proto.errors
                    bad_total += proto.errors
                    if bad_logs.take():
                        log.info("bad control message client=%d remote=%s", cid, remote)
                    proto.errors = 0
        finally:
            self._controls -= 1
            client.events.closed = True
            if bad_logs.suppressed:
                log.info("control client gone client=%d remote=%s bad_messages=%d (%d not logged)", cid, remote,
                         bad_total, bad_logs.suppressed)
            for task in tasks:
                task.cancel()
            for task in list(tasks):
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await task

    async def _dispatch(self, action: Dispatch, client: _ControlClient, proto: ControlProtocol) -> None:
        req, text = action.request, action.text
        send = client.send
        reply: Ok | Error | Status
        try:
            if isinstance(req, CommandRequest):
                reply, ticket = await self._command(req)
                await send(encode(reply, text=text))
                if ticket is not None:  # after its ok: the events never overtake the reply
                    self._watch(ticket, req, text, client)
                return
            if isinstance(req, StatusRequest):
                server = self.stats()
                if self._chat_fn is not None:
                    server["chat"] = self._chat_fn()
                reply = Status(req.id, self.engine.status(), server)
            elif isinstance(req, PushToTalkRequest):
                reply = self._push_to_talk(req)
            elif isinstance(req, SubscribeRequest):
                if proto.subscribed:
                    reply = Ok(req.id)  # already pushing
                else:
                    proto.subscribed = True
                    await send(encode(Ok(req.id), text=text))
                    await self._push_state(send, text)
                    return
            else:  # pragma: no cover - decode_client only makes the types above
                reply = Error(ErrorCode.INTERNAL, f"unhandled request {type(req).__name__}")
            await send(encode(reply, text=text))
        except ConnectionClosed:
            pass

    def _push_to_talk(self, req: PushToTalkRequest) -> Ok | Error:
        if self.push_to_talk is None:
            return Error(ErrorCode.UNAVAILABLE, "ptt: nobody is listening to the microphone (start the backend with "
                         "--voice; the microphone needs sounddevice and PortAudio)", req.id)
        self.push_to_talk(req.held)
        log.debug("push to talk held=%s", req.held)
        return Ok(req.id)

    async def _command(self, req: CommandRequest) -> tuple[Ok | Error, Any]:
        """The reply, and the engine's ticket when the client asked for its events (else None)."""
        self.counters["commands"] += 1
        try:
            ticket = await self.engine.submit(Command(req.kind, req.argument, source="control"))
        except CommandError as exc:
            self.counters["commands_rejected"] += 1
            return Error(ErrorCode.BAD_COMMAND, str(exc), req.id), None
        except EngineError as exc:
            return Error(ErrorCode.UNAVAILABLE, str(exc), req.id), None
        command_id = getattr(ticket, "command_id", "")
        watched = req.events > 0 and all(isinstance(getattr(ticket, name, None), asyncio.Future)
                                         for name in ("shown", "finished"))
        events = min(req.events, EVENTS_VERSION) if watched else 0
        if not req.wait:
            return Ok(req.id, None, command_id, events=events), ticket if watched else None
        try:
            async with asyncio.timeout(COMMAND_WAIT_S):
                seq = await asyncio.shield(ticket.shown)
        except TimeoutError:
            return Ok(req.id, None, command_id, events=events), ticket if watched else None
        latency = ticket.record.latency
        return (Ok(req.id, seq, command_id, None if latency is None else round(latency * 1000, 1), events),
                ticket if watched else None)

    def _watch(self, ticket: Any, req: CommandRequest, text: bool, client: _ControlClient) -> None:
        """Push ``started`` / ``finished`` of ``ticket`` to ``client`` when the engine resolves them."""
        command_id = str(ticket.command_id)

        def push(event: Event) -> None:
            if not client.events.put(event, text):
                self.counters["control_events_dropped"] += 1
            if client.sender is None and not client.events.closed:
                client.sender = asyncio.create_task(self._send_events(client), name=f"control-{client.cid}-events")
                client.tasks.add(client.sender)

        def started(fut: asyncio.Future[int | None]) -> None:
            if not fut.cancelled() and fut.exception() is None and fut.result() is not None:
                push(Event(EventKind.STARTED, command_id, req.id, fut.result()))

        def finished(fut: asyncio.Future[int | None]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                frame, reason = None, EndReason.STOPPED
            else:
                frame = fut.result()
                try:
                    reason = EndReason(getattr(ticket, "ended", "") or EndReason.PLAYED)
                except ValueError:
                    log.warning("engine ticket id=%s ended=%r: no such reason; reported as played", command_id,
                                ticket.ended)
                    reason = EndReason.PLAYED
            push(Event(EventKind.FINISHED, command_id, req.id, frame, reason))

        ticket.shown.add_done_callback(started)  # resolved first by the engine, so queued first
        ticket.finished.add_done_callback(finished)

    async def _send_events(self, client: _ControlClient) -> None:
        try:
            while True:
                event, text = await client.events.get()
                await client.send(encode(event, text=text))
                self.counters["control_events_sent"] += 1
        except ConnectionClosed:
            pass

    def _state(self) -> dict[str, Any]:
        if self._state_fn is not None:
            state = self._state_fn()
            return {"now": state.get("now"), "next": list(state.get("next", []))}
        d = self.engine.status().get("directive") or {}
        now = d if d.get("command_id") else None
        return {"now": now, "next": []}

    async def _push_state(self, send: Callable[[bytes | str], Any], text: bool) -> None:
        last: dict[str, Any] | None = None
        while True:
            try:
                state = self._state()
            except Exception:
                log.exception("state hook failed")
                state = {"now": None, "next": []}
            if state != last:
                await send(encode(State(state["now"], state["next"]), text=text))
                last = state
            await asyncio.sleep(STATE_POLL_S)
