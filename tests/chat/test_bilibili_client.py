"""The async bridge end to end against LOOPBACK servers on 127.0.0.1: an http.server (in a thread) speaking
the room APIs (get_info, nav, getDanmuInfo with a WBI check, the open platform's signed /v2/app/*) and a
websockets server speaking the real binary danmaku protocol (packets built here with struct + brotli).
Nothing is mocked but the hosts: the bridge takes its URLs from the config / host_list / wss_link.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import brotli
import pytest
import websockets.asyncio.server

from backend.config import BilibiliConfig, ConfigError
from backend.events import ChatMessage, Deletion, PaidMessage, Role
from chat_bridges.base import Backoff
from chat_bridges.bilibili.client import COOKIE_ENV, BilibiliBridge
from chat_bridges.bilibili.errors import AuthError

HEADER = struct.Struct(">IHHII")
TIMEOUT = 10.0
# The doc keys of bilibili-API-collect (docs/misc/sign/wbi.md): their mixin key is known independently.
IMG_KEY, SUB_KEY, MIXIN = "7cd084941338484aae1ad9425b84077c", "4932caff0ff746eab6f01bf08b70ac45", \
    "ea1db124af3c7062474693fa704f4ff8"
REAL_ROOM, OWNER_UID, TOKEN = 21452505, 1000, "danmu-token-xyz"
ACCESS_KEY_ID, ACCESS_KEY_SECRET = "AKID", "SECRET-open"


def packet(op: int, body: bytes | dict, ver: int = 0) -> bytes:
    if isinstance(body, dict):
        body = json.dumps(body, ensure_ascii=False).encode()
    return HEADER.pack(16 + len(body), 16, ver, op, 1) + body


def unpack(data: bytes) -> tuple[int, int, bytes]:
    length, header_len, ver, op, _ = HEADER.unpack(data[:16])
    assert length == len(data) and header_len == 16
    return op, ver, data[16:]


def brotli_batch(*commands: dict) -> bytes:
    return packet(5, brotli.compress(b"".join(packet(5, c) for c in commands)), ver=3)


DANMU = {"cmd": "DANMU_MSG", "info": [[0, 1, 25, 16777215, 1700000000123], "跳舞 💃", [42, "观众", 0], [], [0],
                                      ["", ""], 0, 0]}
GIFT = {"cmd": "SEND_GIFT", "data": {"giftName": "小花花", "num": 10, "uid": 43, "uname": "送礼", "price": 100,
                                     "coin_type": "gold", "total_coin": 1000}}
SUPER_CHAT = {"cmd": "SUPER_CHAT_MESSAGE", "data": {"id": 7, "uid": OWNER_UID, "price": 30, "message": "主播 SC",
                                                    "user_info": {"uname": "主播"}}}


# ----------------------------------------------------------------------------- loopback HTTP


@dataclass
class FakeApi:
    """Room APIs on 127.0.0.1; ``ws_port`` goes into host_list / wss_link."""

    ws_port: int = 0
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    refuse_signature_once: bool = False
    garbage_room_info_once: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        with self.lock:
            return sum(1 for _, p, _, _ in self.requests if p == path)

    def handle(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes) -> Any:
        with self.lock:
            self.requests.append((method, path, headers, body))
        if path == "/room/v1/Room/get_info" and self.garbage_room_info_once:
            self.garbage_room_info_once = False
            return b"<html>502 Bad Gateway</html>"
        if path == "/room/v1/Room/get_info":
            assert query["room_id"] == "5050"
            return {"code": 0, "data": {"room_id": REAL_ROOM, "uid": OWNER_UID, "short_id": 5050}}
        if path == "/x/web-interface/nav":
            wbi_img = {"img_url": f"https://i0.hdslb.com/bfs/wbi/{IMG_KEY}.png",
                       "sub_url": f"https://i0.hdslb.com/bfs/wbi/{SUB_KEY}.png"}
            return {"code": -101, "message": "账号未登录", "data": {"isLogin": False, "wbi_img": wbi_img}}
        if path == "/xlive/web-room/v1/index/getDanmuInfo":
            if self.refuse_signature_once:
                self.refuse_signature_once = False
                return {"code": -352, "message": "-352"}
            unsigned = sorted((k, v) for k, v in query.items() if k != "w_rid")
            expected = hashlib.md5((urllib.parse.urlencode(unsigned, quote_via=urllib.parse.quote)
                                    + MIXIN).encode()).hexdigest()
            if query.get("w_rid") != expected or abs(int(query["wts"]) - time.time()) > 60:
                return {"code": -352, "message": "-352"}
            assert query["id"] == str(REAL_ROOM)
            return {"code": 0, "data": {"token": TOKEN, "host_list": [
                {"host": "127.0.0.1", "port": 1, "wss_port": 443, "ws_port": self.ws_port}]}}
        if path.startswith("/v2/app/"):
            return self.open_platform(path, headers, body)
        return {"code": 404}

    def open_platform(self, path: str, headers: dict[str, str], body: bytes) -> dict:
        # Verify the signature independently: sorted x-bili-* lines, HMAC-SHA256 with the secret.
        names = sorted(k for k in headers if k.startswith("x-bili-"))
        signed = "\n".join(f"{k}:{headers[k]}" for k in names)
        good = hmac.new(ACCESS_KEY_SECRET.encode(), signed.encode(), hashlib.sha256).hexdigest()
        if headers.get("authorization") != good or headers["x-bili-content-md5"] != hashlib.md5(body).hexdigest():
            return {"code": 4001, "message": "signature", "request_id": "r"}
        request = json.loads(body)
        if path == "/v2/app/start":
            assert request == {"code": "IDCODE", "app_id": 99}
            return {"code": 0, "data": {
                "game_info": {"game_id": "game-1"},
                "websocket_info": {"auth_body": '{"roomid":777,"key":"opaque"}',
                                   "wss_link": [f"ws://127.0.0.1:{self.ws_port}/sub"]},
                "anchor_info": {"room_id": 777, "uid": 9, "open_id": "owner-open", "uname": "主播"}}}
        assert request["game_id"] == "game-1"
        return {"code": 0, "data": {}}


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, str]]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = fake.handle(self.command, url.path, dict(urllib.parse.parse_qsl(url.query)), headers, body)
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ----------------------------------------------------------------------------- loopback danmaku server


@dataclass
class DanmakuServer:
    script: Callable[[Any, int], Any]  # async (websocket, connection number) -> None
    auths: list[bytes] = field(default_factory=list)
    auth_delays: list[float] = field(default_factory=list)
    heartbeats: int = 0
    connections: int = 0

    async def handler(self, ws: Any) -> None:
        self.connections += 1
        number = self.connections
        started = time.monotonic()
        first = await asyncio.wait_for(ws.recv(), 5.0)  # the auth packet must come within 5 s
        self.auth_delays.append(time.monotonic() - started)
        op, ver, body = unpack(first)
        assert (op, ver) == (7, 1)
        self.auths.append(body)
        await self.script(ws, number)

    async def answer_heartbeat(self, ws: Any, popularity: int) -> None:
        while True:
            op, _, _ = unpack(await ws.recv())
            if op == 2:
                self.heartbeats += 1
                await ws.send(packet(3, popularity.to_bytes(4, "big"), ver=1))
                return


async def collect(bridge: BilibiliBridge, n: int) -> list:
    out: list = []
    async with asyncio.timeout(TIMEOUT):
        async for event in bridge.events():
            out.append(event)
            if len(out) == n:
                return out
    return out


def web_cfg(api_url: str, **kw: Any) -> BilibiliConfig:
    return BilibiliConfig(room_id=5050, api_url=api_url, **kw)


# ----------------------------------------------------------------------------- tests


async def test_web_flow_init_auth_heartbeat_batch_and_reconnect(api: tuple[FakeApi, str],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    fake, api_url = api
    fake.refuse_signature_once = True  # first getDanmuInfo answers -352: clear error, then a retry

    async def script(ws: Any, number: int) -> None:
        await ws.send(packet(8, {"code": 0}, ver=1))
        if number == 1:
            await server.answer_heartbeat(ws, 4242)
            await ws.send(brotli_batch(DANMU, GIFT, SUPER_CHAT))
            await ws.close()  # the server drops us; the client must reconnect
        else:
            await ws.send(packet(5, {**DANMU, "info": [DANMU["info"][0], "after reconnect", *DANMU["info"][2:]]}))
            await ws.wait_closed()

    server = DanmakuServer(script)
    async with websockets.asyncio.server.serve(server.handler, "127.0.0.1", 0) as ws_server:
        fake.ws_port = ws_server.sockets[0].getsockname()[1]
        cfg = web_cfg(api_url, cookie="SESSDATA=from-config")
        env = {COOKIE_ENV: "SESSDATA=secret-sess; buvid3=BUVID-3"}
        bridge = BilibiliBridge(cfg, backoff=Backoff(base_s=0.01, max_s=0.05), heartbeat_interval_s=0.05,
                                nav_url=f"{api_url}/x/web-interface/nav", env=env)
        with caplog.at_level(logging.DEBUG, logger="chat_bridges.bilibili"):
            async with bridge:
                danmu, gift, sc, again = await collect(bridge, 4)
                assert await bridge.send_reply("hi") is False
                assert await bridge.send_reply("hi again") is False

    assert danmu == ChatMessage(platform="bilibili", channel=str(REAL_ROOM), user_id="42", user_name="观众",
                                text="跳舞 💃", timestamp=1700000000.123)
    assert isinstance(gift, PaidMessage) and (gift.kind, gift.value_cents, gift.text) == ("gift", 14, "小花花 x10")
    assert isinstance(sc, PaidMessage) and sc.kind == "super_chat" and sc.value_cents == 420
    assert sc.role is Role.BROADCASTER  # the owner uid from get_info
    assert again.text == "after reconnect"

    assert server.connections == 2 and bridge.connections == 2
    assert all(delay < 5.0 for delay in server.auth_delays)
    auth = json.loads(server.auths[0])
    assert auth == {"uid": 0, "roomid": REAL_ROOM, "protover": 3, "platform": "web", "type": 2,
                    "buvid": "BUVID-3", "key": TOKEN}
    assert server.heartbeats >= 1 and bridge.popularity == 4242
    assert fake.count("/xlive/web-room/v1/index/getDanmuInfo") == 2  # -352, then signed OK
    assert "WBI signature (code -352)" in caplog.text
    cookies = {h.get("cookie") for m, p, h, _ in fake.requests if p == "/room/v1/Room/get_info"}
    assert cookies == {"SESSDATA=secret-sess; buvid3=BUVID-3"}  # the env cookie wins over the config
    assert "secret-sess" not in caplog.text and TOKEN not in caplog.text
    assert caplog.text.count("send_reply not supported") == 1


async def test_auth_refused_reinitializes_room_and_silent_server_times_out(
        api: tuple[FakeApi, str], caplog: pytest.LogCaptureFixture) -> None:
    fake, api_url = api
    fake.garbage_room_info_once = True  # a broken room API answer is logged and retried

    async def script(ws: Any, number: int) -> None:
        if number == 1:
            await ws.send(packet(8, {"code": -101}, ver=1))  # token error -> init the room again
        elif number == 2:
            pass  # never answers the auth: the client gives up after auth_timeout_s
        else:
            await ws.send(packet(8, {"code": 0}, ver=1))
            await ws.send(packet(5, {"cmd": "DANMU_MSG", "info": []}))  # malformed: logged, skipped
            await ws.send(packet(5, DANMU))
        await ws.wait_closed()

    server = DanmakuServer(script)
    async with websockets.asyncio.server.serve(server.handler, "127.0.0.1", 0) as ws_server:
        fake.ws_port = ws_server.sockets[0].getsockname()[1]
        bridge = BilibiliBridge(web_cfg(api_url), backoff=Backoff(base_s=0.01, max_s=0.05), auth_timeout_s=0.3,
                                nav_url=f"{api_url}/x/web-interface/nav", env={})
        with caplog.at_level(logging.WARNING, logger="chat_bridges.bilibili"):
            async with bridge:
                [event] = await collect(bridge, 1)
    assert event.text == "跳舞 💃"
    assert server.connections == 3
    assert fake.count("/room/v1/Room/get_info") == 3  # garbage, then OK, then again after -101
    assert "get_info answered non-JSON" in caplog.text
    assert "auth refused code=-101" in caplog.text
    assert "bad DANMU_MSG command" in caplog.text
    assert fake.count("/x/web-interface/nav") == 1  # WBI keys are cached without a login cookie


async def test_open_platform_flow(api: tuple[FakeApi, str]) -> None:
    fake, api_url = api

    async def script(ws: Any, number: int) -> None:
        await ws.send(packet(8, {"code": 0}, ver=1))
        await ws.send(brotli_batch(
            {"cmd": "LIVE_OPEN_PLATFORM_DM", "data": {"uname": "开放", "open_id": "o1", "msg": "wave 👋",
                                                      "msg_id": "m1", "timestamp": 1700000000}},
            {"cmd": "LIVE_OPEN_PLATFORM_SEND_GIFT", "data": {"uname": "g", "open_id": "o2", "gift_name": "牛哇",
                                                             "gift_num": 1, "price": 1000, "r_price": 1000,
                                                             "paid": True, "msg_id": "m2"}},
            {"cmd": "LIVE_OPEN_PLATFORM_SUPER_CHAT", "data": {"uname": "主播", "open_id": "owner-open",
                                                              "message_id": 5, "message": "sc", "rmb": 30}},
            {"cmd": "LIVE_OPEN_PLATFORM_SUPER_CHAT_DEL", "data": {"room_id": 777, "message_ids": [5]}},
        ))
        await ws.wait_closed()

    server = DanmakuServer(script)
    async with websockets.asyncio.server.serve(server.handler, "127.0.0.1", 0) as ws_server:
        fake.ws_port = ws_server.sockets[0].getsockname()[1]
        cfg = BilibiliConfig(open_platform_code="IDCODE", app_id=99, access_key_id=ACCESS_KEY_ID,
                             access_key_secret=ACCESS_KEY_SECRET, open_api_url=api_url)
        bridge = BilibiliBridge(cfg, backoff=Backoff(base_s=0.01, max_s=0.05), game_heartbeat_interval_s=0.05)
        async with bridge:
            dm, gift, sc, deletion = await collect(bridge, 4)
            async with asyncio.timeout(TIMEOUT):
                while fake.count("/v2/app/heartbeat") < 2:  # noqa: ASYNC110 - polling another thread's state
                    await asyncio.sleep(0.02)
        assert fake.count("/v2/app/end") == 1

    assert server.auths == [b'{"roomid":777,"key":"opaque"}']  # the auth_body string, verbatim
    assert dm == ChatMessage(platform="bilibili", channel="777", user_id="o1", user_name="开放", text="wave 👋",
                             message_id="m1", timestamp=1700000000.0)
    assert gift.value_cents == 14
    assert sc.role is Role.BROADCASTER and sc.message_id == "5" and sc.value_cents == 420
    assert deletion == Deletion("bilibili", "777", "5")
    assert fake.count("/v2/app/start") == 1


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"chat\.bilibili\.room_id"):
        BilibiliBridge(BilibiliConfig())
    with pytest.raises(ConfigError, match="access_key_id"):
        BilibiliBridge(BilibiliConfig(open_platform_code="x"))


def danmu(i: int) -> dict:
    return {**DANMU, "info": [DANMU["info"][0], f"msg {i}", *DANMU["info"][2:]]}


async def test_junk_truncated_tails_and_heartbeat_echoes_lose_nothing_else(
        api: tuple[FakeApi, str], caplog: pytest.LogCaptureFixture) -> None:
    """One live connection carrying what a real server sends at its worst: a message whose last packet is cut,
    junk after the last packet, bytes echoed after a heartbeat reply, empty messages. Each costs at most its own
    bytes; every whole packet arrives (before the fix, the tails were buffered and corrupted the next message,
    and events were lost)."""
    fake, api_url = api
    sent: list[str] = []

    def whole(i: int) -> bytes:
        sent.append(f"msg {i}")
        return packet(5, danmu(i))

    async def script(ws: Any, number: int) -> None:
        await ws.send(packet(8, {"code": 0}, ver=1))
        for i in range(0, 30, 3):
            await ws.send(whole(i) + packet(5, danmu(900 + i))[:-9])  # truncated tail
            await ws.send(whole(i + 1) + b"\x00\x00\x01junk")  # junk tail
            await ws.send(packet(3, (4242).to_bytes(4, "big"), ver=1) + b"\x00\x00\x00\x1a\x00\x10")  # echo
            await ws.send(b"")  # empty message
            await ws.send(brotli_batch(danmu(i + 2)))
            sent.append(f"msg {i + 2}")
        for i in range(30, 34):
            await ws.send(whole(i))
        await ws.wait_closed()

    server = DanmakuServer(script)
    async with websockets.asyncio.server.serve(server.handler, "127.0.0.1", 0) as ws_server:
        fake.ws_port = ws_server.sockets[0].getsockname()[1]
        bridge = BilibiliBridge(web_cfg(api_url), backoff=Backoff(base_s=0.01, max_s=0.05),
                                nav_url=f"{api_url}/x/web-interface/nav", env={})
        with caplog.at_level(logging.WARNING, logger="chat_bridges.bilibili"):
            async with bridge:
                got = await collect(bridge, 34)
                assert bridge.status.state == "connected"
    assert len(sent) == 34
    assert [e.text for e in got] == sent  # all 34, in order, none corrupted
    assert bridge.popularity == 4242 and server.connections == 1
    assert caplog.text.count("rest of message dropped") == 20  # the cut and junk tails, one line each


async def test_auth_refused_after_a_fresh_init_stops_clearly(api: tuple[FakeApi, str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A server that always refuses the auth: the bridge initializes the room again once, then stops with an
    error-level line naming the cause and the fix, and its status says "failed" (shown by /control status)."""
    fake, api_url = api

    async def script(ws: Any, number: int) -> None:
        await ws.send(packet(8, {"code": -101}, ver=1))
        await ws.wait_closed()

    server = DanmakuServer(script)
    async with websockets.asyncio.server.serve(server.handler, "127.0.0.1", 0) as ws_server:
        fake.ws_port = ws_server.sockets[0].getsockname()[1]
        bridge = BilibiliBridge(web_cfg(api_url), backoff=Backoff(base_s=0.01, max_s=0.05),
                                nav_url=f"{api_url}/x/web-interface/nav", env={})
        with caplog.at_level(logging.INFO):
            async with bridge:
                with pytest.raises(AuthError, match="refused auth 2 times"):
                    await collect(bridge, 1)
                await asyncio.sleep(0.2)  # would it retry? (it must not)
    assert server.connections == 2  # refused, fresh init, refused: stop
    assert fake.count("/room/v1/Room/get_info") == 2
    assert bridge.status.state == "failed" and "code=-101" in bridge.status.error
    assert "restart" in bridge.status.error and TOKEN not in bridge.status.error
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and "refused auth" in errors[0].getMessage()
    assert TOKEN not in caplog.text
