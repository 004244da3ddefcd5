"""Hostile clients against the real server on loopback: real bytes on real sockets (issue 16, point 2 and 6).

Raw TCP where the websockets client would refuse to send what a fuzzer sends (pipelined HTTP, a ping flood
ended by a reset); the websockets client elsewhere. Every test here failed before its fix.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import socket
import ssl
import struct
from pathlib import Path

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from backend.config import EngineConfig, ServerConfig
from backend.engine import Engine
from backend.remote import ControlClient, backend_url, client_tls
from backend.server import Server, ServerError
from backend.server import server as server_module
from tests.server.server_helpers import FPS, TOKEN, close_code, recv_msg

TLS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "tls"
CLIENT_LOG = logging.getLogger("tests.client")  # the test's own websockets clients log here, not as the server


def ws_connect(url: str, **kwargs):
    return connect(url, logger=CLIENT_LOG, **kwargs)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455 section 5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade_request(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


async def http(port: int, request: bytes) -> bytes:
    """Write ``request`` in one piece on a fresh TCP connection; everything the server sends until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(-1)
    finally:
        writer.close()


def get(path: str, *headers: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def tracebacks_and_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records
            if r.levelno >= logging.ERROR or r.exc_info]


async def test_deeply_nested_messages_get_a_clean_refusal_before_and_after_auth(running, caplog):
    _, server = running
    nested = "[" * 1900 + "]" * 1900  # fits max_message_bytes (4096); json recursed past the limit on it
    async with ws_connect(server.url + "/control") as ws:  # before auth: the usual close, no 1011
        await ws.send('{"type": "auth", "token": ' + nested + "}")
        assert await close_code(ws) == 4003
    async with ws_connect(server.url + "/control") as ws:
        await ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        await recv_msg(ws)
        await ws.send('{"type": "subscribe", "id": "n", "topics": ' + nested + "}")
        err = json.loads(await ws.recv())
        assert (err["type"], err["code"]) == ("error", "bad_message") and "nested" in err["message"]
        await ws.send(msgpack.packb({"type": "status", "id": "m", "x": [[[[[[[[[[1]]]]]]]]]]}))
        err = await recv_msg(ws)
        assert (err.type, err.code) == ("error", "bad_message")
        await ws.send(json.dumps({"type": "status", "id": "s"}))  # the connection is still good
        assert (await recv_msg(ws)).type == "status"
    assert tracebacks_and_errors(caplog) == []


async def test_pipelined_http_requests_are_answered_once_without_a_traceback(running, caplog):
    _, server = running
    response = await http(server.port, get("/healthz") + get("/healthz") + get("/metrics"))
    assert response.startswith(b"HTTP/1.1 200 ") and response.count(b"HTTP/1.1 ") == 1
    assert response.endswith(b"\r\n\r\nok\n")
    # an upgrade with junk pipelined behind it: the junk is dropped, the websocket works
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(upgrade_request("/control") + get("/healthz"))
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(client_frame(0x1, json.dumps({"type": "auth", "token": TOKEN}).encode()))
        first = await reader.readexactly(2)
        reply = json.loads(await reader.readexactly(first[1] & 0x7F))
    writer.close()
    assert first[0] == 0x81 and reply["type"] == "ok"
    assert tracebacks_and_errors(caplog) == []


async def test_a_ping_flood_ended_by_a_reset_writes_no_warnings(running, caplog):
    _, server = running
    caplog.set_level(logging.INFO)
    for path in ("/stream", "/control", "/stream"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(upgrade_request(path))
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        writer.write(b"".join(client_frame(0x9, b"x" * 100) for _ in range(200)))
        await writer.drain()
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST: the server is left with 200 pongs for a peer that is gone
        await asyncio.sleep(0.5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []  # was: 195 lines of "socket.send() raised exception." per connection


async def test_a_flood_of_bad_messages_logs_a_bounded_number_of_lines(running, caplog):
    _, server = running
    caplog.set_level(logging.INFO, logger="backend.server.server")
    async with ws_connect(server.url + "/control") as ws:
        await ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        await recv_msg(ws)
        for _ in range(60):
            await ws.send(b"\xc1 not msgpack")
            assert (await recv_msg(ws)).code == "bad_message"
    await asyncio.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "backend.server.server" and "bad" in r.getMessage()]
    assert 1 < len(lines) <= 6, lines  # 5 lines, then one summary when the client goes
    assert "bad_messages=60" in lines[-1]
    assert server.stats()["bad_messages"] == 60


async def test_wrong_tokens_lock_the_address_out_then_it_may_try_again(running):
    _, server = running
    free = server.throttle.free
    for _ in range(free):
        async with ws_connect(server.url + "/control") as ws:
            await ws.send(json.dumps({"type": "auth", "token": "guess"}))
            assert await close_code(ws) == 4001
    async with ws_connect(server.url + "/control") as ws:  # one more wrong token starts the lockout
        await ws.send(json.dumps({"type": "auth", "token": "guess"}))
        assert await close_code(ws) == 4001
    async with ws_connect(server.url + "/control") as ws:  # now even the right token is not looked at
        await ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        assert await close_code(ws) == 4029
    # the bearer token (/stream, /metrics) is throttled apart: an OBS source with a stale token retrying
    # forever locks out only itself, never `liveidol chat` on /control, and the other way round
    response = await http(server.port, get("/metrics", f"Authorization: Bearer {TOKEN}"))
    assert status_of(response) == 200
    for _ in range(free + 1):
        assert status_of(await http(server.port, get("/metrics", "Authorization: Bearer guess"))) == 401
    response = await http(server.port, get("/stream", f"Authorization: Bearer {TOKEN}"))
    assert status_of(response) == 429 and b"Retry-After: 1" in response
    await asyncio.sleep(server.throttle.base_s + 0.2)
    async with ws_connect(server.url + "/control") as ws:
        await ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        assert (await recv_msg(ws)).type == "ok"
    assert server.throttle.locked_for("127.0.0.1 control", 0.0) == 0.0  # the right token reset the address
    assert server.stats()["auth_failures"] == 2 * (free + 1)


async def test_no_token_reaches_the_log_even_at_debug_level(running, caplog):
    _, server = running
    caplog.set_level(logging.DEBUG)
    async with ws_connect(server.url + "/control") as ws:
        await ws.send(json.dumps({"type": "auth", "token": TOKEN}))  # a JSON text frame
        await recv_msg(ws)
    async with ws_connect(server.url + "/control") as ws:
        await ws.send(msgpack.packb({"type": "auth", "token": TOKEN}))
        await recv_msg(ws)
    async with ws_connect(server.url + "/stream?audio=0",
                          additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert (await recv_msg(ws)).type == "hello"
    async with ControlClient(server.url + "/control", TOKEN) as control:  # `liveidol chat`'s client
        await control.status()
    hex_token = TOKEN.encode().hex()
    leaks = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.name != CLIENT_LOG.name and (
        TOKEN in r.getMessage() or hex_token in r.getMessage().replace(" ", ""))]
    assert leaks == []


async def test_browser_origins_are_refused_unless_allowed(gen):
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), gen, None, max_steps=2, max_chunk_frames=1)
    cfg = ServerConfig(host="127.0.0.1", port=0, allowed_origins=("https://overlay.example",))
    async with engine, Server(cfg, engine, token=TOKEN) as server:
        await asyncio.wait_for(engine.wait_started(), 60)
        for path in ("/stream", "/control"):
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(server.url + path, origin="https://evil.example"):
                    pass
            assert info.value.response.status_code == 403
        assert status_of(await http(server.port, get("/metrics", "Origin: null"))) == 403
        async with ws_connect(server.url + "/stream?audio=0", origin="https://overlay.example") as ws:
            assert (await recv_msg(ws)).type == "hello"
        async with ws_connect(server.url + "/stream?audio=0") as ws:  # OBS's script and the CLI send no Origin
            assert (await recv_msg(ws)).type == "hello"


async def test_stream_checks_a_token_that_is_sent_on_loopback(running):
    _, server = running
    with pytest.raises(InvalidStatus) as info:
        async with ws_connect(server.url + "/stream", additional_headers={"Authorization": "Bearer nope"}):
            pass
    assert info.value.response.status_code == 401
    async with ws_connect(server.url + "/stream?audio=0",
                          additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert (await recv_msg(ws)).type == "hello"
    async with ws_connect(server.url + "/stream?audio=0") as ws:  # loopback without a token: as before
        assert (await recv_msg(ws)).type == "hello"


async def test_off_loopback_every_path_needs_the_token(running, monkeypatch):
    # Mocked: a peer on another machine. Every socket here is loopback, so the server's loopback test is told
    # that 127.0.0.1 is remote; the requests and the server's answers are still real bytes.
    _, server = running
    monkeypatch.setattr(server_module, "is_loopback", lambda host: False)
    for path in ("/metrics", "/healthz", "/stream"):
        response = await http(server.port, get(path))
        assert status_of(response) == 401 and b"WWW-Authenticate: Bearer" in response, path
    response = await http(server.port, get("/metrics", f"Authorization: Bearer {TOKEN}"))
    assert status_of(response) == 200 and b"liveidol_fps" in response
    async with ws_connect(server.url + "/stream?audio=0",
                          additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert (await recv_msg(ws)).format == "jpeg"  # remote clients get JPEG
    async with ws_connect(server.url + "/control") as ws:  # /control: the token is its first message
        await ws.send(json.dumps({"type": "auth", "token": TOKEN}))
        assert (await recv_msg(ws)).type == "ok"


async def test_tls_serves_wss_and_https(gen, caplog):
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), gen, None, max_steps=2, max_chunk_frames=1)
    cfg = ServerConfig(host="127.0.0.1", port=0, tls_cert=str(TLS_DIR / "localhost.pem"),
                       tls_key=str(TLS_DIR / "localhost.key"))
    trust = ssl.create_default_context(cafile=str(TLS_DIR / "localhost.pem"))
    async with engine, Server(cfg, engine, token=TOKEN) as server:
        await asyncio.wait_for(engine.wait_started(), 60)
        assert server.url.startswith("wss://127.0.0.1:")
        async with ws_connect(server.url + "/stream?audio=0", ssl=trust) as ws:
            hello = await recv_msg(ws)
            frame = await recv_msg(ws)
        assert hello.type == "hello" and frame.type == "frame"
        assert np.frombuffer(frame.data, np.uint8).size == frame.width * frame.height * 4
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=trust,
                                                       server_hostname="localhost")
        writer.write(get("/healthz"))
        async with asyncio.timeout(5):
            response = await reader.read(-1)
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
        assert response.startswith(b"HTTP/1.1 200 ")
        # `liveidol chat` / `liveidol obs setup` find the backend's wss:// URL and trust its certificate
        local = dataclasses.replace(cfg, port=server.port)
        assert backend_url(local, "/control") == server.url + "/control"
        async with ControlClient(backend_url(local, "/control"), TOKEN, tls=client_tls(local)) as control:
            assert (await control.status()).type == "status"
        with pytest.raises((OSError, InvalidHandshake, TimeoutError)):  # plain ws:// to the TLS port
            async with ws_connect(server.url.replace("wss://", "ws://") + "/stream", open_timeout=3):
                pass
    assert not [r for r in caplog.records if "unencrypted" in r.getMessage()]


def test_tls_files_that_do_not_load_are_one_line(gen, tmp_path):
    engine = Engine(EngineConfig(), gen, None)
    with pytest.raises(ServerError, match="no such file"):
        Server(ServerConfig(tls_cert=str(tmp_path / "missing.pem")), engine, token=TOKEN)
    junk = tmp_path / "junk.pem"
    junk.write_bytes(os.urandom(300))
    with pytest.raises(ServerError, match="not a PEM certificate") as info:
        Server(ServerConfig(tls_cert=str(junk)), engine, token=TOKEN)
    assert "\n" not in str(info.value)
    with pytest.raises(ServerError, match="tls_cert is not"):
        Server(ServerConfig(tls_key=str(junk)), engine, token=TOKEN)


async def test_serving_other_machines_without_tls_says_so(gen, caplog):
    engine = Engine(EngineConfig(), gen, None)
    async with Server(ServerConfig(host="0.0.0.0", port=0, allow_remote=True), engine, token=TOKEN) as server:
        assert server.url.startswith("ws://0.0.0.0:")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "unencrypted" in warning and "server.tls_cert" in warning


async def test_the_backend_never_logs_the_token_it_creates(gen, tmp_path, caplog, capsys):
    """run_backend logged a new token with log.warning, so every log handler kept it (issue 16, point 6)."""
    from backend.app import run_backend
    from backend.config import load_config
    from backend.world.character import load_character
    from backend.world.reference import reference_frame

    caplog.set_level(logging.DEBUG)
    cfg = load_config(overrides={"server.port": 0, "server.token_file": str(tmp_path / "token"), "engine.fps": FPS,
                                 "model.steps": 2, "model.chunk_frames": 1})
    character = load_character(cfg.character)
    stop = asyncio.Event()
    await run_backend(cfg, gen, reference_frame(character, gen.native_size), character, stop=stop,
                      ready=lambda server: stop.set())
    token = (tmp_path / "token").read_text().strip()
    assert len(token) >= 32
    assert not [r for r in caplog.records if token in r.getMessage()]
    err = capsys.readouterr().err  # pytest's capture is not a terminal: the path is shown, not the token
    assert f"control token created in {tmp_path / 'token'}" in err and token not in err


async def test_the_obs_sources_token_is_checked(running):
    """The OBS source sent its token field as a Bearer header and /stream never looked at it (issue 16,
    point 6). Its own stdlib client (obs_plugin/_stream.py), as OBS runs it, against the real server."""
    import time

    from obs_plugin import _stream
    from tests.obs.test_obs_stream import RecordingSink

    _, server = running
    results = {}
    for token in (TOKEN, "stale-token"):
        sink = RecordingSink()
        rx = _stream.StreamReceiver(_stream.normalize_url(server.url), token=token, sink=sink,
                                    backoff=_stream.Backoff(initial=5.0, maximum=5.0, jitter=0))
        rx.start()
        end = time.monotonic() + 5
        for _ in range(100):  # the receiver is a thread: poll its sink until a frame or a refusal
            if time.monotonic() > end or sink.count("frame") or sink.count("disconnect"):
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(rx.stop)
        results[token] = sink.events
    assert results[TOKEN][0][0] == "hello" and any(kind == "frame" for kind, _ in results[TOKEN])
    (kind, reason), *_ = results["stale-token"]
    assert kind == "disconnect" and "401" in reason
