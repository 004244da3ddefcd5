"""The thin async Bilibili bridge: room init over HTTP, one websocket, heartbeats, reconnects.

Two ways in, picked by the config:

- web (``open_platform_code`` empty): ``room/v1/Room/get_info`` (real room id + owner uid) -> nav (WBI keys,
  login uid) -> ``getDanmuInfo`` WBI-signed (token + host list) -> ``wss://{host}:{wss_port}/sub`` (``ws://`` and
  ``ws_port`` when ``api_url`` is plain http, as in tests) -> auth packet within 5 s -> heartbeat every 30 s.
- open platform (``open_platform_code`` set): signed ``/v2/app/start`` -> ``wss_link`` + ``auth_body`` ->
  the same framing; ``/v2/app/heartbeat`` every 20 s and ``/v2/app/end`` on exit.

Usage::

    async with BilibiliBridge(cfg.chat.bilibili) as bridge:
        async for event in bridge.events():
            await director.handle(event)

Everything protocol-shaped lives in the sans-I/O modules (protocol, commands, wbi, open_platform); this file
only connects, feeds bytes, and reconnects with :class:`~chat_bridges.base.Backoff`. The login cookie
(env ``LIVEIDOL_BILIBILI_COOKIE`` wins over the config), the danmaku token and the open platform keys are
never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import websockets
import websockets.asyncio.client

from backend.config import BilibiliConfig, ConfigError
from backend.events import ChatEvent
from backend.tasks import cancel_and_wait
from chat_bridges.base import Backoff, BridgeStatus, EventPump, HttpFunc, HttpResponse, urllib_http
from chat_bridges.bilibili import open_platform, wbi
from chat_bridges.bilibili.commands import PLATFORM, CommandError, command_to_events
from chat_bridges.bilibili.errors import (
    AuthError,
    BilibiliError,
    InitError,
    InvalidStateError,
    OpenPlatformError,
    ProtocolError,
    SignatureError,
)
from chat_bridges.bilibili.protocol import (
    AuthOk,
    CompressedBatch,
    ConnectionEvent,
    ConnectionState,
    DanmakuConnection,
    Notification,
    Popularity,
    build_auth_body,
    decompress,
)

__all__ = ["COOKIE_ENV", "BilibiliBridge", "HttpFunc", "HttpResponse", "RoomInfo", "urllib_http"]  # http: from base

logger = logging.getLogger(__name__)

COOKIE_ENV = "LIVEIDOL_BILIBILI_COOKIE"
NAV_URL = "https://api.bilibili.com/x/web-interface/nav"
USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0 Safari/537.36")
REINIT_AFTER_FAILURES = 3  # consecutive failed connections before the room is initialized again
AUTH_REFUSALS_TO_GIVE_UP = 2  # consecutive refused auths, each after a fresh room init: then the bridge stops


@dataclass(frozen=True)
class RoomInfo:
    """Where and how to connect, from room init."""

    room_id: int
    owner_uid: int
    urls: tuple[str, ...]
    auth_body: Mapping[str, Any] | str = field(repr=False)  # holds the token / open platform credential
    owner_open_id: str = ""


class BilibiliBridge:
    """Bilibili danmaku as :mod:`backend.events` (see the module docstring). Implements ChatBridge."""

    platform = PLATFORM

    def __init__(self, cfg: BilibiliConfig, *, backoff: Backoff | None = None, http: HttpFunc = urllib_http,
                 connect: Callable[[str], Any] = websockets.asyncio.client.connect,
                 heartbeat_interval_s: float = 30.0, game_heartbeat_interval_s: float = open_platform.GAME_HEARTBEAT_INTERVAL_S,
                 auth_timeout_s: float = 5.0, nav_url: str = NAV_URL, env: Mapping[str, str] | None = None,
                 queue_size: int = 1000) -> None:
        self._open = bool(cfg.open_platform_code)
        if self._open and not (cfg.app_id and cfg.access_key_id and cfg.access_key_secret):
            raise ConfigError("chat.bilibili: open_platform_code is set, so app_id, access_key_id and "
                              "access_key_secret are required too")
        if not self._open and cfg.room_id <= 0:
            raise ConfigError("chat.bilibili.room_id: set the live room id (or open_platform_code for the open platform)")
        self._cfg = cfg
        self._backoff = backoff or Backoff()
        self._http = http
        self._connect = connect
        self._heartbeat_interval_s = heartbeat_interval_s
        self._game_heartbeat_interval_s = game_heartbeat_interval_s
        self._auth_timeout_s = auth_timeout_s
        self._recv_timeout_s = 2 * heartbeat_interval_s + 10  # the server answers every heartbeat
        self._nav_url = nav_url
        env = os.environ if env is None else env
        self._cookie = env.get(COOKIE_ENV) or cfg.cookie  # secret: never logged
        self.status = BridgeStatus(PLATFORM, str(cfg.room_id or "open-platform"))
        self._pump = EventPump(f"bilibili room={cfg.room_id or 'open-platform'}", queue_size, error=BilibiliError,
                               status=self.status)
        self._started = False
        self._refusals = 0  # consecutive refused auths
        self._game_task: asyncio.Task[None] | None = None
        self._wbi_keys: wbi.WbiKeys | None = None
        self._app: open_platform.AppSession | None = None
        self._room: RoomInfo | None = None
        self._need_init = True
        self._reply_warned = False
        self.popularity = 0
        self.connections = 0  # successful auths so far (tests and status lines read it)

    # ------------------------------------------------------------------ lifecycle

    @property
    def _label(self) -> str:
        return str(self._room.room_id if self._room else self._cfg.room_id)

    async def __aenter__(self) -> BilibiliBridge:
        if self._started:
            raise InvalidStateError("BilibiliBridge entered twice")
        self._started = True
        self._pump.start(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pump.stop()
        await cancel_and_wait(self._game_task)
        self._game_task = None
        if self._app is not None:
            await self._end_game()

    def events(self) -> AsyncIterator[ChatEvent]:
        """Chat events until the bridge exits (reconnects by itself); raises the error that stopped it
        (a refused auth that a fresh room init did not cure)."""
        if not self._started:
            raise InvalidStateError("use `async with BilibiliBridge(...)` before events()")
        return self._pump.events()

    async def send_reply(self, text: str, reply_to: str = "") -> bool:
        """Not supported: sending danmaku needs the logged-in web API (csrf + cookie); logs once."""
        if not self._reply_warned:
            self._reply_warned = True
            logger.info("room=%s send_reply not supported: sending danmaku needs a logged-in web API", self._label)
        return False

    # ------------------------------------------------------------------ connection loop

    async def _run(self) -> None:
        attempt = 0
        failures = 0
        self._refusals = 0
        while True:
            try:
                if self._need_init or self._room is None:
                    self._room = await (self._init_open() if self._open else self._init_web())
                    self._need_init = False
                    attempt = 0
                url = self._room.urls[attempt % len(self._room.urls)]
                await self._serve(self._room, url)
                failures = 0
            except AuthError as exc:
                self._refusals += 1
                refusals = self._refusals
                if refusals >= AUTH_REFUSALS_TO_GIVE_UP:
                    what = "the open platform auth_body" if self._open else "the getDanmuInfo token"
                    raise AuthError(exc.code, f"bilibili room={self._label}: the danmaku server refused auth "
                                    f"{refusals} times in a row (code={exc.code}), even with a fresh "
                                    f"{what}; chat from this room stops. Check chat.bilibili (room id, "
                                    f"login cookie ${COOKIE_ENV}, open platform keys) and restart") from exc
                logger.warning("room=%s auth refused code=%d, initializing the room again: %s",
                               self._label, exc.code, exc)
                self._need_init = True
            except SignatureError as exc:
                logger.error("room=%s %s", self._label, exc)
                self._wbi_keys = None
            except BilibiliError as exc:
                logger.warning("room=%s %s", self._label, exc)
                failures += 1
            except (OSError, websockets.exceptions.WebSocketException) as exc:
                logger.warning("room=%s connection lost: %s: %s", self._label, type(exc).__name__, exc)
                failures += 1
            attempt += 1
            if failures >= REINIT_AFTER_FAILURES:
                failures = 0
                self._need_init = True
            self.status.state = "reconnecting"
            delay = self._backoff.next_delay()
            logger.info("room=%s reconnecting in %.1f s", self._label, delay)
            await asyncio.sleep(delay)

    async def _serve(self, room: RoomInfo, url: str) -> None:
        """One websocket connection: auth, heartbeats, feed bytes until it closes (then raise/return)."""
        conn = DanmakuConnection(room_id=room.room_id, inline_decompress=False)
        logger.debug("room=%d connecting url=%s", room.room_id, url)
        async with self._connect(url) as ws:
            conn.send_auth(room.auth_body)
            for data in conn.data_to_send():
                await ws.send(data)
            async with asyncio.timeout(self._auth_timeout_s):
                while conn.state is not ConnectionState.OPEN:
                    await self._feed(conn, await ws.recv(), room)
            self._backoff.reset()
            self._refusals = 0
            self.connections += 1
            self.status.state, self.status.connections, self.status.channel = ("connected", self.connections,
                                                                               str(room.room_id))
            logger.info("room=%d connected to danmaku server", room.room_id)
            heartbeat = asyncio.create_task(self._heartbeat(ws, conn), name="bilibili-heartbeat")
            try:
                while True:
                    async with asyncio.timeout(self._recv_timeout_s):
                        data = await ws.recv()
                    await self._feed(conn, data, room)
            finally:
                await cancel_and_wait(heartbeat)

    async def _heartbeat(self, ws: Any, conn: DanmakuConnection) -> None:
        try:
            while True:
                conn.send_heartbeat()
                for data in conn.data_to_send():
                    await ws.send(data)
                await asyncio.sleep(self._heartbeat_interval_s)
        except websockets.exceptions.ConnectionClosed:
            return  # the receive loop sees the close too

    async def _feed(self, conn: DanmakuConnection, data: bytes | str, room: RoomInfo) -> None:
        if isinstance(data, str):
            logger.warning("room=%d text frame skipped (the protocol is binary) chars=%d", room.room_id, len(data))
            return
        for event in conn.receive_message(data):  # one websocket message, decoded on its own
            await self._dispatch(conn, event, room)

    async def _dispatch(self, conn: DanmakuConnection, event: ConnectionEvent, room: RoomInfo) -> None:
        if isinstance(event, CompressedBatch):
            loop = asyncio.get_running_loop()
            try:
                raw = await loop.run_in_executor(None, decompress, event.ver, event.payload)
            except ProtocolError as exc:
                logger.warning("room=%d compressed batch skipped: %s", room.room_id, exc)
                return
            for inner in conn.receive_batch(raw):
                await self._dispatch(conn, inner, room)
        elif isinstance(event, Notification):
            channel = str(room.room_id)
            try:
                if self._open:
                    chat = open_platform.open_command_to_events(event.cmd, event.data, channel=channel,
                                                                owner_open_id=room.owner_open_id)
                else:
                    chat = command_to_events(event.cmd, event.data, channel=channel, owner_uid=room.owner_uid)
            except CommandError as exc:
                logger.warning("room=%d command skipped: %s", room.room_id, exc)
                return
            for item in chat:
                self._pump.put(item)
        elif isinstance(event, Popularity):
            self.popularity = event.value
            logger.debug("room=%d popularity=%d", room.room_id, event.value)
        elif isinstance(event, AuthOk):
            logger.debug("room=%d auth ok", room.room_id)

    # ------------------------------------------------------------------ web room init

    def _web_headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Referer": "https://live.bilibili.com/"}
        if self._cookie:
            headers["Cookie"] = self._cookie
        return headers

    async def _get_json(self, what: str, url: str) -> dict[str, Any]:
        response = await self._http("GET", url, self._web_headers(), None)
        if response.status != 200:
            raise InitError(f"{what} answered HTTP {response.status}")
        try:
            answer = json.loads(response.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InitError(f"{what} answered non-JSON: {response.body[:120]!r}") from exc
        if not isinstance(answer, dict) or not isinstance(answer.get("code"), int):
            raise InitError(f"{what} answered without an int code: {response.body[:120]!r}")
        return answer

    async def _init_web(self) -> RoomInfo:
        api = self._cfg.api_url.rstrip("/")
        answer = await self._get_json("room/v1/Room/get_info", f"{api}/room/v1/Room/get_info?room_id={self._cfg.room_id}")
        if answer["code"] != 0:
            raise InitError(f"room/v1/Room/get_info for room {self._cfg.room_id} failed: code={answer['code']} "
                            f"message={answer.get('message', '')!r} (is the room id right?)")
        try:
            room_id, owner_uid = int(answer["data"]["room_id"]), int(answer["data"]["uid"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InitError(f"room/v1/Room/get_info answer lacks data.room_id / data.uid: {exc}") from exc

        uid = 0
        if self._wbi_keys is None or self._cookie:
            nav = await self._get_json("nav", self._nav_url)
            nav_data = nav.get("data") or {}
            if nav["code"] not in (0, -101) or not isinstance(nav_data, dict):  # -101: not logged in, keys still there
                raise InitError(f"nav failed: code={nav['code']} message={nav.get('message', '')!r}")
            try:
                self._wbi_keys = wbi.WbiKeys.from_nav(nav_data)
            except ValueError as exc:
                raise InitError(f"nav: {exc}") from exc
            if nav_data.get("isLogin"):
                uid = int(nav_data.get("mid", 0) or 0)
            elif self._cookie:
                logger.warning("room=%d the login cookie is not logged in (expired?); names arrive masked", room_id)

        query = wbi.encode_query(wbi.sign({"id": room_id, "type": 0}, self._wbi_keys))
        answer = await self._get_json("getDanmuInfo", f"{api}/xlive/web-room/v1/index/getDanmuInfo?{query}")
        if answer["code"] == -352:
            raise SignatureError(f"getDanmuInfo refused the WBI signature (code -352) for room {room_id}: the nav "
                                 "keys are refreshed and the call retried; if it persists, Bilibili changed the "
                                 "signing or flags this IP (a login cookie helps)")
        if answer["code"] != 0:
            raise InitError(f"getDanmuInfo for room {room_id} failed: code={answer['code']} "
                            f"message={answer.get('message', '')!r}")
        try:
            data = answer["data"]
            token = str(data["token"])
            secure = urllib.parse.urlsplit(api).scheme == "https"
            urls = tuple(f"{'wss' if secure else 'ws'}://{h['host']}:{h['wss_port' if secure else 'ws_port']}/sub"
                         for h in data["host_list"])
        except (KeyError, TypeError) as exc:
            raise InitError(f"getDanmuInfo answer lacks token / host_list[].host/port: {exc}") from exc
        if not urls:
            urls = ("wss://broadcastlv.chat.bilibili.com:443/sub",)
        logger.info("room=%d initialized owner_uid=%d hosts=%d logged_in=%s", room_id, owner_uid, len(urls), uid != 0)
        auth = build_auth_body(uid=uid, room_id=room_id, token=token, buvid=_cookie_value(self._cookie, "buvid3"))
        return RoomInfo(room_id=room_id, owner_uid=owner_uid, urls=urls, auth_body=auth)

    # ------------------------------------------------------------------ open platform

    async def _open_post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        raw = open_platform.encode_body(body)
        headers = open_platform.sign_headers(
            raw, access_key_id=self._cfg.access_key_id, access_key_secret=self._cfg.access_key_secret,
            nonce=str(secrets.randbelow(10**9)), timestamp=int(time.time()))
        response = await self._http("POST", self._cfg.open_api_url.rstrip("/") + path, headers, raw)
        return open_platform.parse_response(path, response.status, response.body)

    async def _init_open(self) -> RoomInfo:
        await cancel_and_wait(self._game_task)
        self._game_task = None
        if self._app is not None:
            await self._end_game()
        app = open_platform.parse_start(await self._open_post(
            open_platform.START_PATH, {"code": self._cfg.open_platform_code, "app_id": self._cfg.app_id}))
        self._app = app
        if app.game_id:
            self._game_task = asyncio.create_task(self._game_heartbeat(app), name="bilibili-game-heartbeat")
        logger.info("room=%d open platform session started links=%d", app.room_id, len(app.wss_links))
        return RoomInfo(room_id=app.room_id, owner_uid=app.owner_uid, urls=app.wss_links, auth_body=app.auth_body,
                        owner_open_id=app.owner_open_id)

    async def _game_heartbeat(self, app: open_platform.AppSession) -> None:
        while True:
            await asyncio.sleep(self._game_heartbeat_interval_s)
            try:
                await self._open_post(open_platform.HEARTBEAT_PATH, {"game_id": app.game_id})
            except OpenPlatformError as exc:
                logger.warning("room=%d %s; the session is started again", app.room_id, exc)
                self._need_init = True
            except (InitError, OSError) as exc:
                logger.warning("room=%d open platform heartbeat failed: %s", app.room_id, exc)

    async def _end_game(self) -> None:
        app, self._app = self._app, None
        if app is None or not app.game_id:
            return
        try:
            async with asyncio.timeout(5):
                await self._open_post(open_platform.END_PATH, {"app_id": self._cfg.app_id, "game_id": app.game_id})
            logger.info("room=%d open platform session ended", app.room_id)
        except (InitError, OSError) as exc:
            logger.warning("room=%d open platform end failed: %s", app.room_id, exc)


def _cookie_value(cookie: str, name: str) -> str:
    for part in cookie.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""
