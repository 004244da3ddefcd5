"""Twitch EventSub: the sans-I/O parser on messages shaped as in Twitch's EventSub reference, and
TwitchEventSubClient against a loopback EventSub websocket server on 127.0.0.1 (welcome, keepalive,
notifications, session_reconnect to a new URL, silence past the keepalive timeout).

Mocked: only the Helix HTTP calls (``GET users``, ``POST eventsub/subscriptions``), through the client's
injected ``http`` callable, since there is no Twitch account or internet here; the callable records them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from backend.config import TwitchConfig
from backend.events import Deletion, PaidMessage
from chat_bridges.base import Backoff
from chat_bridges.twitch import AuthError, TwitchError, TwitchEventSubClient
from chat_bridges.twitch import eventsub as es

TIMEOUT = 5.0
TS = "2023-07-19T14:56:51.634234626Z"


def welcome(session_id: str, keepalive: float = 10) -> str:
    return json.dumps({
        "metadata": {"message_id": f"w-{session_id}", "message_type": "session_welcome", "message_timestamp": TS},
        "payload": {"session": {"id": session_id, "status": "connected", "connected_at": TS,
                                "keepalive_timeout_seconds": keepalive, "reconnect_url": None,
                                "recovery_url": None}},
    })


def keepalive(n: int) -> str:
    return json.dumps({"metadata": {"message_id": f"k-{n}", "message_type": "session_keepalive",
                                    "message_timestamp": TS}, "payload": {}})


def notification(sub_type: str, event: dict[str, Any], message_id: str) -> str:
    return json.dumps({
        "metadata": {"message_id": message_id, "message_type": "notification", "message_timestamp": TS,
                     "subscription_type": sub_type, "subscription_version": "1"},
        "payload": {"subscription": {"id": "f1c2a387-161a-49f9-a165-0f21d7a4e1c4", "status": "enabled",
                                     "type": sub_type, "version": "1", "cost": 0,
                                     "condition": {"broadcaster_user_id": "1337"},
                                     "transport": {"method": "websocket", "session_id": "s"},
                                     "created_at": TS},
                    "event": event},
    })


def redemption(redemption_id: str, user_input: str = "", title: str = "!dance") -> str:
    return notification(es.REDEMPTION_ADD, {
        "id": redemption_id, "broadcaster_user_id": "1337", "broadcaster_user_login": "dallas",
        "broadcaster_user_name": "Dallas", "user_id": "9001", "user_login": "cooler_user",
        "user_name": "Cooler_User", "user_input": user_input, "status": "unfulfilled",
        "reward": {"id": "92af127c-7326-4483-a52b-b0da0be61c01", "title": title, "cost": 100, "prompt": ""},
        "redeemed_at": TS,
    }, f"n-{redemption_id}")


CHEER_EVENT = {"is_anonymous": False, "user_id": "1234", "user_login": "cool_user", "user_name": "Cool_User",
               "broadcaster_user_id": "1337", "broadcaster_user_login": "dallas", "broadcaster_user_name": "Dallas",
               "message": "pogchamp !wave", "bits": 1000}


def session_reconnect(url: str) -> str:
    return json.dumps({
        "metadata": {"message_id": "r-1", "message_type": "session_reconnect", "message_timestamp": TS},
        "payload": {"session": {"id": "s1", "status": "reconnecting", "keepalive_timeout_seconds": None,
                                "reconnect_url": url, "connected_at": TS}},
    })


# ----------------------------------------------------------------------------- sans-I/O


def test_parse_each_message_type():
    w = es.parse_message(welcome("AQoQexAWVYKSTIu4ec_2VAxyuhAB", 30))
    assert w == es.Welcome("AQoQexAWVYKSTIu4ec_2VAxyuhAB", 30.0, "w-AQoQexAWVYKSTIu4ec_2VAxyuhAB")
    assert es.parse_message(keepalive(1)) == es.Keepalive("k-1")
    n = es.parse_message(redemption("r1", "wave please"))
    assert isinstance(n, es.Notification) and n.subscription_type == es.REDEMPTION_ADD
    assert n.timestamp == pytest.approx(1689778611.634234, abs=1e-3)
    assert es.parse_message(session_reconnect("wss://eventsub.wss.twitch.tv?...")) == es.SessionReconnect(
        "wss://eventsub.wss.twitch.tv?...", "s1", "r-1")
    revoked = json.dumps({"metadata": {"message_id": "v", "message_type": "revocation", "message_timestamp": TS,
                                       "subscription_type": "channel.follow", "subscription_version": "1"},
                          "payload": {"subscription": {"id": "sub-1", "status": "authorization_revoked",
                                                       "type": "channel.follow", "version": "1"}}})
    assert es.parse_message(revoked) == es.Revocation("channel.follow", "authorization_revoked", "sub-1", "v")


@pytest.mark.parametrize(("text", "error"), [
    ("not json", "not JSON"),
    ("[1, 2]", "message must be an object"),
    ('{"payload": {}}', "metadata must be an object"),
    ('{"metadata": {"message_type": "surprise"}, "payload": {}}', "unknown message_type"),
    ('{"metadata": {"message_type": "session_welcome"}, "payload": {"session": {}}}', "session.id"),
    ('{"metadata": {"message_type": "notification"}, "payload": {"subscription": {"type": "x"}}}', "payload.event"),
])
def test_parse_errors_name_the_problem(text, error):
    with pytest.raises(es.EventSubError, match=error):
        es.parse_message(text)


def test_notifications_map_to_chat_events():
    paid = es.to_chat_event(es.parse_message(redemption("r1", "  wave please ")))
    assert paid == PaidMessage("twitch", "dallas", "9001", "Cooler_User", "wave please", 0, "redemption",
                               message_id="r1", timestamp=paid.timestamp)
    # a reward without text input: the title is the command
    assert es.to_chat_event(es.parse_message(redemption("r2"))).text == "!dance"
    cheer = es.to_chat_event(es.parse_message(notification(es.CHEER, CHEER_EVENT, "c1")))
    assert (cheer.kind, cheer.value_cents, cheer.text, cheer.user_name) == ("bits", 1000, "pogchamp !wave", "Cool_User")
    anon = es.to_chat_event(es.parse_message(notification(es.CHEER, {**CHEER_EVENT, "is_anonymous": True,
                                                                     "user_id": None}, "c2")))
    assert (anon.user_id, anon.user_name) == ("", "anonymous")
    deleted = es.to_chat_event(es.parse_message(notification(es.MESSAGE_DELETE, {
        "broadcaster_user_id": "1337", "broadcaster_user_login": "dallas", "broadcaster_user_name": "Dallas",
        "target_user_id": "7734", "target_user_login": "uncool", "target_user_name": "Uncool",
        "message_id": "ab24e0b0-2260-4bac-94e4-05eedd4ecd0e"}, "d1")))
    assert deleted == Deletion("twitch", "dallas", "ab24e0b0-2260-4bac-94e4-05eedd4ecd0e")
    assert es.to_chat_event(es.parse_message(notification("channel.follow", {"user_id": "1"}, "f1"))) is None
    with pytest.raises(es.EventSubError, match="bits"):
        es.to_chat_event(es.parse_message(notification(es.CHEER, {**CHEER_EVENT, "bits": "many"}, "c3")))


def test_subscription_request_body():
    assert es.subscription_request(es.REDEMPTION_ADD, "sess", broadcaster_user_id="1337") == {
        "type": "channel.channel_points_custom_reward_redemption.add", "version": "1",
        "condition": {"broadcaster_user_id": "1337"},
        "transport": {"method": "websocket", "session_id": "sess"},
    }
    body = es.subscription_request(es.MESSAGE_DELETE, "sess", broadcaster_user_id="1337", user_id="42")
    assert body["condition"] == {"broadcaster_user_id": "1337", "user_id": "42"}
    with pytest.raises(ValueError, match="user_id"):
        es.subscription_request(es.MESSAGE_DELETE, "sess", broadcaster_user_id="1337")
    with pytest.raises(ValueError, match="session id"):
        es.subscription_request(es.REDEMPTION_ADD, "", broadcaster_user_id="1337")


@pytest.mark.parametrize(("stamp", "expected"), [
    ("2023-07-19T14:56:51.634234626Z", 1689778611.634234),
    ("2023-07-19T16:56:51.634234626+02:00", 1689778611.634234),
    ("2023-07-19T14:56:51Z", 1689778611.0),
    ("2023-07-19T14:56:51.5", 1689778611.5),  # no zone: UTC
    ("yesterday", 0.0),
])
def test_timestamps(stamp, expected):
    assert es._timestamp(stamp) == pytest.approx(expected, abs=1e-6)


def test_keepalive_timeout_is_a_function_of_time():
    assert not es.keepalive_expired(100.0, 111.9, 10.0)
    assert es.keepalive_expired(100.0, 112.1, 10.0)
    assert es.keepalive_expired(100.0, 110.5, 10.0, grace_s=0.0)
    session = es.EventSubSession(now=0.0)
    session.receive(welcome("s", 30), now=5.0)
    assert session.keepalive_timeout_s == 30.0 and session.session_id == "s"
    assert not session.expired(36.0) and session.expired(37.5)
    session.receive(keepalive(1), now=37.0)  # any message resets the clock
    assert not session.expired(60.0)


def test_session_drops_duplicates_and_malformed(caplog):
    session = es.EventSubSession(now=0.0)
    assert isinstance(session.receive(redemption("r1"), 1.0), es.Notification)
    assert session.receive(redemption("r1"), 2.0) is None  # Twitch may resend a message id
    with caplog.at_level(logging.WARNING):
        assert session.receive("{broken", 3.0) is None
    assert "not JSON" in caplog.text
    assert session.last_message_at == 3.0


# ----------------------------------------------------------------------------- loopback client


class Helix:
    """The injected ``http`` callable: records requests, answers like Helix (the only mocked part)."""

    def __init__(self, status: int = 202):
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []
        self.status = status
        self.subscribed = asyncio.Event()

    async def __call__(self, method: str, url: str, headers: dict[str, str], body: bytes | None):
        self.calls.append((method, url, headers, json.loads(body) if body else None))
        if self.status in (401, 403):
            return self.status, b'{"error":"Unauthorized","status":401,"message":"Invalid OAuth token"}'
        if method == "GET" and "/users" in url:
            return 200, json.dumps({"data": [{"id": "1337", "login": "dallas"}]}).encode()
        self.subscribed.set()
        return self.status, json.dumps({"data": [{"id": "sub-1", "status": "enabled"}], "total": 1}).encode()


Script = Callable[[ServerConnection, str], Awaitable[None]]


@contextlib.asynccontextmanager
async def eventsub_server(script: Script) -> AsyncIterator[str]:
    async def handler(ws: ServerConnection) -> None:
        await script(ws, ws.request.path)

    async with serve(handler, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def client(url: str, http: Helix, **kw) -> TwitchEventSubClient:
    cfg = TwitchConfig(channel="dallas", client_id="app-client-id", eventsub_url=url + "/ws",
                       helix_url="https://api.example/helix")
    return TwitchEventSubClient(cfg, "oauth:user-token", http=http, backoff=Backoff(base_s=0.01, max_s=0.05), **kw)


async def collect(source: TwitchEventSubClient, n: int) -> list[Any]:
    got = []
    async with asyncio.timeout(TIMEOUT):
        async for event in source.events():
            got.append(event)
            if len(got) == n:
                break
    return got


async def test_welcome_subscribe_notify_and_session_reconnect():
    http = Helix()
    old_closed = asyncio.Event()
    paths: list[str] = []

    async def script(ws: ServerConnection, path: str) -> None:
        paths.append(path)
        base = f"ws://127.0.0.1:{ws.local_address[1]}"
        if path == "/ws":
            await ws.send(welcome("s1"))
            await asyncio.wait_for(http.subscribed.wait(), TIMEOUT)
            await ws.send(keepalive(1))
            await ws.send(redemption("r1", "wave please"))
            await ws.send(redemption("r1", "wave please"))  # resent: dropped
            await ws.send('{"metadata": {"message_type": "surprise"}}')  # bad: skipped
            await ws.send(notification(es.REDEMPTION_ADD, {"id": "r-bad"}, "n-bad"))  # no user: skipped
            await ws.send(notification(es.CHEER, CHEER_EVENT, "c1"))
            await ws.send(session_reconnect(base + "/reconnect?id=s1"))
            await ws.wait_closed()  # the client closes it after the new welcome
            old_closed.set()
        else:
            await ws.send(welcome("s2"))
            await ws.send(redemption("r2"))
            await ws.wait_closed()

    async with eventsub_server(script) as url:
        sub = client(url, http)
        async with sub:
            got = await collect(sub, 3)
            await asyncio.wait_for(old_closed.wait(), TIMEOUT)
            assert sub.session_id == "s2"
    assert [(type(e), e.kind, e.text) for e in got] == [
        (PaidMessage, "redemption", "wave please"), (PaidMessage, "bits", "pogchamp !wave"),
        (PaidMessage, "redemption", "!dance")]
    assert paths == ["/ws", "/reconnect?id=s1"]
    (get, post) = http.calls  # no second subscription after session_reconnect
    assert get[:2] == ("GET", "https://api.example/helix/users?login=dallas")
    method, post_url, headers, body = post
    assert (method, post_url) == ("POST", "https://api.example/helix/eventsub/subscriptions")
    assert headers["Authorization"] == "Bearer user-token" and headers["Client-Id"] == "app-client-id"
    assert body == es.subscription_request(es.REDEMPTION_ADD, "s1", broadcaster_user_id="1337")


async def test_silence_past_keepalive_reconnects_and_resubscribes():
    http = Helix()
    connections = []

    async def script(ws: ServerConnection, path: str) -> None:
        connections.append(path)
        await ws.send(welcome(f"s{len(connections)}", keepalive=0.2))
        if len(connections) == 2:
            await ws.send(redemption("after-silence"))
        await ws.wait_closed()  # then silence: no keepalives

    async with eventsub_server(script) as url:
        sub = client(url, http, keepalive_grace_s=0.05)
        async with sub:
            (event,) = await collect(sub, 1)
    assert event.message_id == "after-silence"
    assert len(connections) == 2
    posts = [c for c in http.calls if c[0] == "POST"]
    assert [p[3]["transport"]["session_id"] for p in posts] == ["s1", "s2"]  # a fresh session subscribes again


async def test_helix_refusal_raises_auth_error_without_the_token(caplog):
    http = Helix(status=401)

    async def script(ws: ServerConnection, path: str) -> None:
        await ws.send(welcome("s1"))
        await ws.wait_closed()

    async with eventsub_server(script) as url:
        async with client(url, http) as sub:
            with pytest.raises(AuthError, match="status=401") as info:
                await collect(sub, 1)
    assert "user-token" not in str(info.value) and "user-token" not in caplog.text


def test_eventsub_config_errors():
    with pytest.raises(TwitchError, match="client_id"):
        TwitchEventSubClient(TwitchConfig(channel="dallas"), "tok")
    with pytest.raises(TwitchError, match="token"):
        TwitchEventSubClient(TwitchConfig(channel="dallas", client_id="c"), "oauth:")


def test_mangled_messages_raise_only_eventsub_errors():
    """Real messages with random fields replaced by values of the wrong type or removed."""
    rng = random.Random(0)
    seeds = [welcome("s"), keepalive(1), redemption("r", "x"), notification(es.CHEER, CHEER_EVENT, "c"),
             session_reconnect("ws://x"), notification(es.MESSAGE_DELETE, {"message_id": "m"}, "d")]
    junk = [None, 0, -1, 1.5, True, "", "x", [], {}, [1], {"a": 1}]

    def mangle(obj: Any) -> Any:
        if isinstance(obj, dict) and obj:
            key = rng.choice(list(obj))
            if rng.random() < 0.3:
                obj.pop(key)
            elif rng.random() < 0.5:
                obj[key] = rng.choice(junk)
            else:
                mangle(obj[key])
        return obj

    for _ in range(1500):
        data = mangle(json.loads(rng.choice(seeds)))
        try:
            msg = es.parse_message(json.dumps(data))
            if isinstance(msg, es.Notification):
                es.to_chat_event(msg)
        except es.EventSubError:
            pass
