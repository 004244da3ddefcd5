"""TwitchBridge against a loopback Twitch IRC server: a real websockets server on 127.0.0.1 speaking the
real line protocol (CAP/PASS/NICK/JOIN handshake, PRIVMSG, PING/PONG, RECONNECT, drops). Nothing is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from backend.config import TwitchConfig
from backend.events import ChatMessage, PaidMessage
from chat_bridges.base import Backoff
from chat_bridges.twitch import AuthError, TwitchBridge, TwitchError

TIMEOUT = 5.0


class IrcPeer:
    """The server side of one connection, reading whole lines out of websocket frames."""

    def __init__(self, ws: ServerConnection):
        self.ws = ws
        self._pending: list[str] = []

    async def line(self) -> str:
        while not self._pending:
            frame = await asyncio.wait_for(self.ws.recv(), TIMEOUT)
            self._pending = [x for x in str(frame).split("\r\n") if x]
        return self._pending.pop(0)

    async def send(self, *lines: str) -> None:
        await self.ws.send("".join(line + "\r\n" for line in lines))

    async def login(self, server: FakeTwitch) -> str:
        """Expect CAP REQ, [PASS], NICK; answer CAP ACK + 001; expect JOIN; confirm it. Returns the nick."""
        cap = await self.line()
        assert cap == "CAP REQ :twitch.tv/tags twitch.tv/commands"
        line = await self.line()
        if line.startswith("PASS "):
            server.passwords.append(line[5:])
            line = await self.line()
        assert line.startswith("NICK ")
        nick = line[5:]
        server.nicks.append(nick)
        await self.send(":tmi.twitch.tv CAP * ACK :twitch.tv/tags twitch.tv/commands",
                        f":tmi.twitch.tv 001 {nick} :Welcome, GLHF!",
                        f":tmi.twitch.tv 376 {nick} :>")
        join = await self.line()
        assert join == f"JOIN #{server.channel}"
        await self.send(f":{nick}!{nick}@{nick}.tmi.twitch.tv JOIN #{server.channel}",
                        f":{nick}.tmi.twitch.tv 353 {nick} = #{server.channel} :{nick}")
        return nick


Script = Callable[[IrcPeer, "FakeTwitch", int], Awaitable[None]]


class FakeTwitch:
    def __init__(self, script: Script, channel: str = "dallas"):
        self.script = script
        self.channel = channel
        self.passwords: list[str] = []
        self.nicks: list[str] = []
        self.received: list[str] = []
        self.connections = 0
        self.errors: list[BaseException] = []
        self.line_seen = asyncio.Event()

    async def got_lines(self, n: int) -> None:
        while len(self.received) < n:
            self.line_seen.clear()
            await self.line_seen.wait()

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        try:
            await self.script(IrcPeer(ws), self, self.connections)
        except Exception as exc:  # surfaced by the test through self.errors
            self.errors.append(exc)
            raise


@contextlib.asynccontextmanager
async def run_server(fake: FakeTwitch) -> AsyncIterator[str]:
    async with serve(fake.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


def bridge(url: str, **kw) -> TwitchBridge:
    cfg_kw = {k: kw.pop(k) for k in ("nick", "oauth_token") if k in kw}
    cfg = TwitchConfig(channel="Dallas", url=url, **cfg_kw)
    kw.setdefault("env", {})
    return TwitchBridge(cfg, backoff=Backoff(base_s=0.01, max_s=0.05), **kw)


def privmsg(i: int, text: str, extra: str = "") -> str:
    return (f"@badges=subscriber/3;display-name=Fan{i};id=msg-{i};room-id=1;subscriber=1;"
            f"tmi-sent-ts=1700000000000;user-id={100 + i}{extra} :fan{i}!fan{i}@fan{i}.tmi.twitch.tv "
            f"PRIVMSG #dallas :{text}")


async def test_login_chat_ping_reconnect_and_drop():
    pong_seen = asyncio.Event()

    async def script(peer: IrcPeer, server: FakeTwitch, n: int) -> None:
        await peer.login(server)
        if n == 1:
            await peer.send(privmsg(1, "!dance 🎉"), "@id=bad;bits=x :a!a@a PRIVMSG #dallas :broken",
                            privmsg(2, "cheer50 hi", ";bits=50"))
            await peer.send("PING :tmi.twitch.tv")
            assert await peer.line() == "PONG :tmi.twitch.tv"
            pong_seen.set()
            await peer.send(":tmi.twitch.tv RECONNECT")
            await asyncio.sleep(0.05)  # Twitch closes shortly after RECONNECT
        elif n == 2:
            await peer.send(privmsg(3, "after reconnect"))
            await asyncio.sleep(0.05)
            peer.ws.transport.abort()  # an abrupt drop, no close frame
        else:
            await peer.send(privmsg(4, "after drop"))
            await peer.ws.wait_closed()

    fake = FakeTwitch(script)
    async with run_server(fake) as url:
        async with bridge(url) as chat:
            got = []
            async with asyncio.timeout(TIMEOUT):
                async for event in chat.events():
                    got.append(event)
                    if len(got) == 4:
                        break
            assert chat.anonymous and chat.connections == 3
            assert await chat.send_reply("hi") is False  # anonymous is read-only
    assert not fake.errors
    assert pong_seen.is_set()
    assert [type(e) for e in got] == [ChatMessage, PaidMessage, ChatMessage, ChatMessage]
    assert [e.text for e in got] == ["!dance 🎉", "hi", "after reconnect", "after drop"]
    assert got[1].value_cents == 50 and got[0].user_name == "Fan1" and got[0].channel == "dallas"
    assert fake.passwords == []  # anonymous: no PASS at all
    assert all(nick.startswith("justinfan") for nick in fake.nicks) and len(fake.nicks) == 3


async def test_token_login_env_wins_and_send_reply_rate_limit(caplog):
    now = [1000.0]

    async def script(peer: IrcPeer, server: FakeTwitch, n: int) -> None:
        await peer.login(server)
        await peer.send(privmsg(1, "hello bot"))
        with contextlib.suppress(ConnectionClosed):
            while True:
                server.received.append(await peer.line())
                server.line_seen.set()

    fake = FakeTwitch(script)
    caplog.set_level(logging.DEBUG)
    async with run_server(fake) as url:
        chat = bridge(url, nick="MyBot", oauth_token="cfg-token", env={"LIVEIDOL_TWITCH_TOKEN": "env-token"},
                      clock=lambda: now[0])
        async with chat:
            async with asyncio.timeout(TIMEOUT):
                event = await anext(aiter(chat.events()))
            assert chat.joined and not chat.anonymous
            assert await chat.send_reply("hi @Fan1", reply_to=event.message_id)
            for i in range(19):
                assert await chat.send_reply(f"reply {i}")
            assert await chat.send_reply("one too many") is False  # 20 msgs / 30 s
            now[0] += 30.0
            assert await chat.send_reply("window passed")
            async with asyncio.timeout(TIMEOUT):
                await fake.got_lines(21)
    assert fake.passwords == ["oauth:env-token"]
    assert fake.nicks == ["mybot"]
    assert fake.received[0] == "@reply-parent-msg-id=msg-1 PRIVMSG #dallas :hi @Fan1"
    assert fake.received[-1] == "PRIVMSG #dallas :window passed"
    assert "one too many" not in " ".join(fake.received)
    assert not fake.errors
    # the fake server's own frame logs show the PASS line; everything on the client side must not
    client_logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server"))
    assert "TEXT" in caplog.text  # frame logging was on (DEBUG), so the check below means something
    assert "env-token" not in client_logs and "cfg-token" not in client_logs


async def test_refused_login_raises_auth_error_without_the_token(caplog):
    async def script(peer: IrcPeer, server: FakeTwitch, n: int) -> None:
        await peer.line()  # CAP
        server.passwords.append((await peer.line())[5:])
        await peer.line()  # NICK
        await peer.send(":tmi.twitch.tv NOTICE * :Login authentication failed")
        await peer.ws.wait_closed()

    fake = FakeTwitch(script)
    async with run_server(fake) as url:
        async with bridge(url, nick="mybot", oauth_token="oauth:wrong-token") as chat:
            with pytest.raises(AuthError, match="Login authentication failed") as info:
                async with asyncio.timeout(TIMEOUT):
                    async for _ in chat.events():
                        pass
    assert "wrong-token" not in str(info.value) and "wrong-token" not in caplog.text
    assert fake.connections == 1  # a refused login is not retried
    assert chat.status.state == "failed" and "Login authentication failed" in chat.status.error  # /control status
    assert any(r.levelname == "ERROR" and "login refused" in r.getMessage() for r in caplog.records)


async def test_unreachable_server_keeps_retrying_then_connects():
    """The first attempts hit a closed port (connection refused); the bridge backs off and retries."""
    attempts: list[str] = []

    async def script(peer: IrcPeer, server: FakeTwitch, n: int) -> None:
        await peer.login(server)
        await peer.send(privmsg(1, "finally"))
        await peer.ws.wait_closed()

    fake = FakeTwitch(script)
    async with run_server(fake) as url:
        from websockets.asyncio.client import connect

        def flaky_connect(target: str, **kw):
            attempts.append(target)
            # the first two attempts go to a port where nothing listens
            return connect("ws://127.0.0.1:9" if len(attempts) <= 2 else target, **kw)

        async with bridge(url, connect=flaky_connect) as chat:
            async with asyncio.timeout(TIMEOUT):
                event = await anext(aiter(chat.events()))
    assert event.text == "finally"
    assert len(attempts) == 3


def test_config_errors_are_clear():
    with pytest.raises(TwitchError, match="channel is empty"):
        TwitchBridge(TwitchConfig(channel=""), env={})
    with pytest.raises(TwitchError, match="nick"):
        TwitchBridge(TwitchConfig(channel="dallas"), env={"LIVEIDOL_TWITCH_TOKEN": "t"})
    with pytest.raises(TwitchError, match="channel must be a non-empty word"):
        TwitchBridge(TwitchConfig(channel="two words"), env={})
    with pytest.raises(TwitchError, match="nick must be"):
        TwitchBridge(TwitchConfig(channel="dallas", nick="my bot", oauth_token="t"), env={})


async def test_slow_consumer_loses_events_but_ping_is_still_answered():
    pong_seen = asyncio.Event()

    async def script(peer: IrcPeer, server: FakeTwitch, n: int) -> None:
        await peer.login(server)
        await peer.send(*(privmsg(i, f"m{i}") for i in range(5)))
        await peer.send("PING :tmi.twitch.tv")
        assert await peer.line() == "PONG :tmi.twitch.tv"
        pong_seen.set()
        await peer.ws.wait_closed()

    fake = FakeTwitch(script)
    async with run_server(fake) as url:
        async with bridge(url, queue_size=2) as chat:
            await asyncio.wait_for(pong_seen.wait(), TIMEOUT)  # nobody reads events meanwhile
            events = aiter(chat.events())
            got = [await anext(events), await anext(events)]
            assert chat.dropped == 3
            with pytest.raises(TwitchError, match="only once"):
                await chat.__aenter__()
    assert [e.text for e in got] == ["m0", "m1"]
    assert not fake.errors


async def test_bad_url_stops_with_a_clear_error():
    async with bridge("http://127.0.0.1:1/not-ws") as chat:
        with pytest.raises(TwitchError, match=r"chat\.twitch\.url is not a websocket URL"):
            async with asyncio.timeout(TIMEOUT):
                async for _ in chat.events():
                    pass


async def test_cheers_carry_commands_me_flag_and_notice_before_welcome():
    """Real cheer lines (a cheermote before or after the command, a /me cheer, a custom channel cheermote) and a
    harmless NOTICE before the 001 welcome, over the loopback server, into the real Director: every cheer runs
    its command with the bits as the paid priority; the NOTICE does not end the login."""
    import dataclasses

    from backend.config import DirectorConfig
    from backend.director import Director
    from tests.director.director_kit import Recorder

    async def script(peer: IrcPeer, server: FakeTwitch, n: int) -> None:
        await peer.line()  # CAP
        nick = (await peer.line())[5:]
        await peer.send(":tmi.twitch.tv NOTICE * :This server is shutting down for maintenance soon")
        await peer.send(f":tmi.twitch.tv 001 {nick} :Welcome, GLHF!")
        assert await peer.line() == "JOIN #dallas"
        await peer.send(f":{nick}!{nick}@{nick}.tmi.twitch.tv JOIN #dallas")
        await peer.send(privmsg(1, "Cheer100 !wave", ";bits=100"), privmsg(2, "!heart Cheer100", ";bits=100"),
                        privmsg(3, "\x01ACTION Kappa5 Kappa5 !nod\x01", ";bits=10"),
                        privmsg(4, "!bow mychan50", ";bits=50"), privmsg(5, "/me-less !like"))
        await peer.ws.wait_closed()

    fake = FakeTwitch(script)
    sink = Recorder()
    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0, dedup_window_s=0.0)
    director = Director(cfg, sink)
    got = []
    async with run_server(fake) as url:
        async with bridge(url) as chat:
            async with asyncio.timeout(TIMEOUT):
                async for event in chat.events():
                    got.append(event)
                    if len(got) == 5:
                        break
            assert chat.connections == 1 and chat.status.state == "connected"
    assert not fake.errors and fake.connections == 1
    wave, heart, nod, bow, plain = got
    assert [e.text for e in got] == ["!wave", "!heart", "!nod", "!bow", "/me-less !like"]
    assert [getattr(e, "value_cents", 0) for e in got] == [100, 100, 10, 50, 0]
    assert nod.me and not wave.me and not plain.me
    decisions = [await director.handle(e) for e in (wave, heart, nod, bow)]
    assert [d.decision for d in decisions] == ["queued"] * 4, decisions
    assert {d.reason for d in decisions} == {"tier_paid"}
    await director.tick()
    assert sink.pairs == [("act", "wave")]  # the first paid command plays; the others wait their turn
    # the bits are the priority: 100 before 50 before 10
    assert [i["argument"] for i in director.state()["next"]] == ["heart", "bow", "nod"]
