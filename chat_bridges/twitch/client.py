"""The thin async Twitch clients: IRC chat (:class:`TwitchBridge`) and EventSub (:class:`TwitchEventSubClient`).

They only connect, read, feed the sans-I/O cores (:mod:`.protocol`, :mod:`.eventsub`), send what those ask
for, and reconnect with :class:`chat_bridges.base.Backoff`. Each owns one background task (started in
``__aenter__``, cancelled and awaited in ``__aexit__``) that puts events into a bounded queue; ``events()``
reads that queue. A slow consumer loses the newest events (logged) instead of stalling the socket (PINGs
must still be answered). One bad message is logged and skipped; a refused login raises :class:`AuthError`
out of ``events()``::

    async with TwitchBridge(cfg.chat.twitch) as chat:
        async for event in chat.events():
            ...
        await chat.send_reply("hi!", reply_to=event.message_id)

The token (``LIVEIDOL_TWITCH_TOKEN`` wins over ``oauth_token``) is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import websockets
import websockets.asyncio.client
from websockets.exceptions import InvalidURI, WebSocketException

from backend.config import TwitchConfig
from backend.events import ChatEvent
from chat_bridges.base import Backoff, BridgeStatus, EventPump, HttpFunc, urllib_http

from . import eventsub
from .protocol import (
    AuthError,
    ConnectionState,
    Joined,
    LoginFailed,
    Reconnect,
    TwitchError,
    TwitchIrcConnection,
    Welcome,
)

__all__ = ["TOKEN_ENV", "Http", "TwitchBridge", "TwitchEventSubClient", "resolve_token", "urllib_http"]

log = logging.getLogger(__name__)

TOKEN_ENV = "LIVEIDOL_TWITCH_TOKEN"
SEND_LIMIT = 20  # messages per SEND_WINDOW_S for a non-mod account (Twitch "Rate limits")
SEND_WINDOW_S = 30.0

Connect = Callable[..., Any]  # websockets.asyncio.client.connect or a stand-in: connect(url) -> awaitable / async cm
Http = HttpFunc  # the bridges' one HTTP helper type (chat_bridges.base); (status, body) unpacks from it

_NETWORK_ERRORS = (OSError, TimeoutError, WebSocketException)


class _NoFrameLogs(logging.LoggerAdapter):
    """Given to websockets as its logger: reports DEBUG as disabled, so websockets never logs frame contents
    (which would include ``PASS oauth:...``), while its INFO and higher still reach ``logger``."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


def resolve_token(cfg: TwitchConfig, env: Mapping[str, str] | None = None) -> str:
    """The OAuth token to use: ``$LIVEIDOL_TWITCH_TOKEN`` if set, else ``cfg.oauth_token`` ('' = anonymous)."""
    env = os.environ if env is None else env
    return (env.get(TOKEN_ENV) or cfg.oauth_token).strip()


async def _send_lines(ws: Any, lines: list[str]) -> None:
    for line in lines:
        await ws.send(line + "\r\n")


class TwitchBridge:
    """Twitch chat over the IRC websocket (``cfg.url``), as a :class:`chat_bridges.base.ChatBridge`.

    Anonymous (read-only, ``justinfan``) without a token; with one, ``cfg.nick`` must be the token's login.
    ``send_reply`` is rate-limited to 20 messages / 30 s and returns False (never waits) when over the
    limit, anonymous or not joined.
    """

    platform = "twitch"

    def __init__(self, cfg: TwitchConfig, *, backoff: Backoff | None = None,
                 connect: Connect = websockets.asyncio.client.connect, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, env: Mapping[str, str] | None = None, queue_size: int = 1000):
        if not cfg.channel.strip("#"):
            raise TwitchError("twitch: chat.twitch.channel is empty (the channel login to join)")
        self._token = resolve_token(cfg, env)
        if self._token and not cfg.nick:
            raise TwitchError("twitch: chat.twitch.nick must be the bot's login when a token is set")
        try:  # validates channel and nick now, not at the first connection
            TwitchIrcConnection(cfg.channel, nick=cfg.nick, token=self._token)
        except ValueError as exc:
            raise TwitchError(f"twitch: bad chat.twitch setting: {exc}") from None
        self._cfg = cfg
        self._channel = cfg.channel.lstrip("#").lower()
        self._backoff = backoff or Backoff()
        self._connect = connect
        self._clock = clock
        self._rng = rng or random.Random()
        self.status = BridgeStatus("twitch", self._channel)
        self._pump = EventPump(f"twitch irc #{self._channel}", queue_size, error=TwitchError, status=self.status)
        self._ws: Any = None
        self._conn: TwitchIrcConnection | None = None
        self._sent_at: deque[float] = deque()
        self.connections = 0  # successful logins so far (for status and tests)
        self._closing = False
        self._ws_logger = _NoFrameLogs(logging.getLogger("websockets.client"), {})

    @property
    def anonymous(self) -> bool:
        return not self._token

    @property
    def dropped(self) -> int:
        """Events lost because the consumer fell behind the bounded queue."""
        return self._pump.dropped

    @property
    def joined(self) -> bool:
        return self._conn is not None and self._conn.state is ConnectionState.JOINED

    async def __aenter__(self) -> TwitchBridge:
        if self.anonymous:
            log.info("twitch irc: no token, reading anonymously (read-only) channel=%s", self._channel)
        self._pump.start(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(*_NETWORK_ERRORS):
                await self._ws.close()
        await self._pump.stop()

    def events(self) -> AsyncIterator[ChatEvent]:
        return self._pump.events()

    async def send_reply(self, text: str, reply_to: str = "") -> bool:
        if self.anonymous:
            log.info("twitch irc: not sending, anonymous login is read-only channel=%s", self._channel)
            return False
        ws, conn = self._ws, self._conn
        if ws is None or conn is None or conn.state is not ConnectionState.JOINED:
            log.warning("twitch irc: not sending, not joined channel=%s", self._channel)
            return False
        now = self._clock()
        while self._sent_at and now - self._sent_at[0] >= SEND_WINDOW_S:
            self._sent_at.popleft()
        if len(self._sent_at) >= SEND_LIMIT:
            log.warning("twitch irc: not sending, rate limit %d/%.0fs reached channel=%s",
                        SEND_LIMIT, SEND_WINDOW_S, self._channel)
            return False
        try:
            conn.send_privmsg(text, reply_to)
        except (TwitchError, ValueError) as exc:
            log.warning("twitch irc: not sending: %s", exc)
            return False
        try:
            await _send_lines(ws, conn.data_to_send())
        except _NETWORK_ERRORS as exc:
            log.warning("twitch irc: send failed: %s channel=%s", exc, self._channel)
            return False
        self._sent_at.append(now)
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except InvalidURI as exc:
                raise TwitchError(f"twitch: chat.twitch.url is not a websocket URL: {exc}") from exc
            except _NETWORK_ERRORS as exc:
                log.warning("twitch irc: connection lost: %s channel=%s", exc, self._channel)
            finally:
                self._ws = self._conn = None
            self.status.state = "reconnecting"
            if self._closing:
                return
            delay = self._backoff.next_delay()
            log.info("twitch irc: reconnecting in %.2fs channel=%s", delay, self._channel)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        async with self._connect(self._cfg.url, logger=self._ws_logger) as ws:
            conn = TwitchIrcConnection(self._channel, nick=self._cfg.nick, token=self._token, rng=self._rng)
            self._ws, self._conn = ws, conn
            await _send_lines(ws, conn.data_to_send())
            async for frame in ws:
                text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
                reconnect = False
                for event in conn.receive_data(text):
                    if isinstance(event, LoginFailed):
                        raise AuthError(f"twitch: login refused for nick={conn.nick}: {event.reason!r}; "
                                        f"check chat.twitch.oauth_token or ${TOKEN_ENV}")
                    if isinstance(event, Reconnect):
                        log.info("twitch irc: server asked to reconnect channel=%s", self._channel)
                        reconnect = True
                    elif isinstance(event, Joined):
                        self.connections += 1
                        self.status.state, self.status.connections = "connected", self.connections
                        self._backoff.reset()
                        log.info("twitch irc: joined channel=%s nick=%s", self._channel, conn.nick)
                    elif isinstance(event, Welcome):
                        log.debug("twitch irc: logged in nick=%s", event.nick)
                    elif isinstance(event, ChatEvent):
                        self._pump.put(event)
                await _send_lines(ws, conn.data_to_send())
                if reconnect:
                    return
            log.info("twitch irc: connection closed by the server channel=%s", self._channel)


# ----------------------------------------------------------------------------- EventSub


class TwitchEventSubClient:
    """Channel-point redemptions (and optionally cheers / deletions) over EventSub, as a chat bridge.

    Needs a user access token (scope ``channel:read:redemptions``) and the app's ``cfg.client_id``. On each
    fresh session it resolves the broadcaster's id (Helix ``GET users?login=``) unless given and POSTs one
    subscription per type through ``http``; on ``session_reconnect`` it moves to the new URL (keeping the old
    connection until the new welcome) without subscribing again. Only redemptions are subscribed by default:
    bits and deletions already arrive over IRC, and subscribing twice would count each cheer twice.
    ``send_reply`` always returns False (EventSub is receive-only).
    """

    platform = "twitch"

    def __init__(self, cfg: TwitchConfig, token: str, *, http: Http = urllib_http, backoff: Backoff | None = None,
                 connect: Connect = websockets.asyncio.client.connect, clock: Callable[[], float] = time.monotonic,
                 subscriptions: tuple[str, ...] = (eventsub.REDEMPTION_ADD,), broadcaster_user_id: str = "",
                 welcome_timeout_s: float = 10.0, keepalive_grace_s: float = 2.0, queue_size: int = 1000):
        token = token.strip().removeprefix("oauth:")
        if not token:
            raise TwitchError("twitch eventsub: needs a user access token")
        if not cfg.client_id:
            raise TwitchError("twitch eventsub: chat.twitch.client_id is empty (the app's client id)")
        if not cfg.channel.strip("#") and not broadcaster_user_id:
            raise TwitchError("twitch eventsub: chat.twitch.channel is empty")
        self._cfg = cfg
        self._token = token
        self._http = http
        self._backoff = backoff or Backoff()
        self._connect = connect
        self._clock = clock
        self._subscriptions = subscriptions
        self._broadcaster_id = broadcaster_user_id
        self._user_id = ""
        self._welcome_timeout_s = welcome_timeout_s
        self._grace_s = keepalive_grace_s
        self._ws_logger = _NoFrameLogs(logging.getLogger("websockets.client"), {})
        self._channel = cfg.channel.lstrip("#").lower()
        self._state = eventsub.EventSubSession(clock())
        self.status = BridgeStatus("twitch-eventsub", self._channel)
        self._pump = EventPump(f"twitch eventsub #{self._channel}", queue_size, error=TwitchError, status=self.status)
        self.session_id = ""

    async def __aenter__(self) -> TwitchEventSubClient:
        self._pump.start(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pump.stop()

    def events(self) -> AsyncIterator[ChatEvent]:
        return self._pump.events()

    async def send_reply(self, text: str, reply_to: str = "") -> bool:
        log.info("twitch eventsub: receive-only, reply not sent")
        return False

    # -- Helix

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}", "Client-Id": self._cfg.client_id,
                "Content-Type": "application/json"}

    async def _helix(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        url = self._cfg.helix_url.rstrip("/") + "/" + path
        data = json.dumps(body).encode() if body is not None else None
        status, raw = await self._http(method, url, self._headers(), data)
        if status in (401, 403):
            raise AuthError(f"twitch eventsub: Helix {method} {path.split('?')[0]} refused the token "
                            f"(status={status}): {raw[:200]!r}")
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, parsed

    async def _user_id_for(self, login: str = "") -> str:
        path = "users" + (f"?login={urllib.parse.quote(login)}" if login else "")
        status, data = await self._helix("GET", path)
        try:
            return str(data["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise TwitchError(f"twitch eventsub: Helix GET users login={login!r} found no user "
                              f"(status={status})") from None

    async def _subscribe(self, session_id: str) -> None:
        if not self._broadcaster_id:
            self._broadcaster_id = await self._user_id_for(self._channel)
        if not self._user_id and any(t.startswith("channel.chat.") for t in self._subscriptions):
            self._user_id = await self._user_id_for()
        for sub_type in self._subscriptions:
            body = eventsub.subscription_request(sub_type, session_id, broadcaster_user_id=self._broadcaster_id,
                                                 user_id=self._user_id)
            status, data = await self._helix("POST", "eventsub/subscriptions", body)
            if status in (200, 202, 409):  # 409: this subscription already exists
                log.info("twitch eventsub: subscribed type=%s status=%d", sub_type, status)
            else:
                log.error("twitch eventsub: subscribe failed type=%s status=%d body=%.200s", sub_type, status, data)

    # -- websocket

    async def _run(self) -> None:
        url, previous = self._cfg.eventsub_url, None
        while True:
            ws: Any = None
            next_url: str | None = None
            try:
                ws = await self._connect(url, logger=self._ws_logger)
                next_url = await self._serve(ws, previous)
            except InvalidURI as exc:
                raise TwitchError(f"twitch eventsub: not a websocket URL: {exc}") from exc
            except (*_NETWORK_ERRORS, eventsub.EventSubError, TwitchError) as exc:
                if isinstance(exc, AuthError):
                    raise
                log.warning("twitch eventsub: connection lost: %s channel=%s", exc, self._channel)
            finally:
                if previous is not None:
                    await previous.close()
                previous = None
                if next_url is None and ws is not None:
                    await ws.close()
            if next_url is not None:
                url, previous = next_url, ws
                continue
            url = self._cfg.eventsub_url
            self.status.state = "reconnecting"
            delay = self._backoff.next_delay()
            log.info("twitch eventsub: reconnecting in %.2fs channel=%s", delay, self._channel)
            await asyncio.sleep(delay)

    async def _serve(self, ws: Any, previous: Any) -> str | None:
        """Run one session; returns the reconnect URL on ``session_reconnect``, None when it ended otherwise."""
        # asyncio.timeout, not wait_for: Python 3.11's wait_for returns a message that came in the same instant as a
        # cancel and drops the cancel, and stopping the bridge then waits for this loop forever
        async with asyncio.timeout(self._welcome_timeout_s):
            first = await ws.recv()
        welcome = self._state.receive(first, self._clock())
        if not isinstance(welcome, eventsub.Welcome):
            raise eventsub.EventSubError(f"twitch eventsub: first message is not session_welcome: {welcome!r:.80}")
        self.session_id = welcome.session_id
        if previous is not None:
            await previous.close()
            log.info("twitch eventsub: moved to the new session channel=%s", self._channel)
        else:
            await self._subscribe(welcome.session_id)
        self._backoff.reset()
        self.status.state = "connected"
        self.status.connections += 1
        while True:
            left = self._state.keepalive_timeout_s + self._grace_s - (self._clock() - self._state.last_message_at)
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    text = await ws.recv()
            except TimeoutError:
                if self._state.expired(self._clock(), self._grace_s):
                    log.warning("twitch eventsub: no message within the keepalive timeout=%.0fs, reconnecting",
                                self._state.keepalive_timeout_s)
                    return None
                continue
            msg = self._state.receive(text, self._clock())
            if isinstance(msg, eventsub.Notification):
                try:
                    event = eventsub.to_chat_event(msg)
                except eventsub.EventSubError as exc:
                    log.warning("%s message_id=%s", exc, msg.message_id)
                    continue
                if event is not None:
                    self._pump.put(event)
            elif isinstance(msg, eventsub.SessionReconnect):
                log.info("twitch eventsub: server asked to reconnect channel=%s", self._channel)
                return msg.reconnect_url
            elif isinstance(msg, eventsub.Revocation):
                log.warning("twitch eventsub: subscription revoked type=%s status=%s", msg.subscription_type,
                            msg.status)
