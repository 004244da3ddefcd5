"""Chat drives the idol, end to end: a loopback chat server -> the real bridge -> ``backend.app._pump`` -> the
real Director -> the real Engine (the real tiny random Generator at 20 fps) -> shown frames.

The chat servers are the loopback ones of the bridge tests (real websockets servers on 127.0.0.1 speaking the
real Twitch IRC line protocol / the real binary Bilibili danmaku protocol with a brotli batch, plus the loopback
HTTP room APIs). What took effect is read from the engine's side only: ``VideoFrame.directive_id`` of the
frames a subscriber receives, ``engine.status()["directive"]`` and the engine's input log.

Nothing is mocked. One thing is injected: the director's clock (its documented test hook), so a test ends
the playing action when it has seen it on screen instead of sleeping through its 1.6-2.4 s duration, and a
slow machine cannot end it before the next chat batch has arrived. For that the director's sink does not hand
back the engine's ticket (whose ``finished`` would otherwise time the action, as in ``liveidol serve``).
The engine runs on real time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets.asyncio.server

from backend.actions import action
from backend.app import _pump
from backend.config import DirectorConfig, EngineConfig, TwitchConfig
from backend.director.director import Decision, Director
from backend.engine import Engine
from backend.events import ChatEvent, VideoFrame
from chat_bridges.base import Backoff
from chat_bridges.bilibili.client import BilibiliBridge
from chat_bridges.twitch import TwitchBridge
from tests.chat.test_bilibili_client import (  # noqa: F401 - `api` is the loopback room-API fixture
    DANMU,
    DanmakuServer,
    api,
    brotli_batch,
    packet,
    web_cfg,
)
from tests.chat.test_twitch_client import FakeTwitch, IrcPeer, run_server
from tests.director.director_kit import FakeClock
from tests.server.server_helpers import FPS, real_generator

DEADLINE_S = 10.0  # generous: the whole suite may share the 2 cores


@pytest.fixture(scope="module")
def gen():
    return real_generator()


@dataclass
class Idol:
    engine: Engine
    director: Director
    clock: FakeClock  # the director's clock: it moves only when the test advances it, so an action ends on
    # the director's side exactly when the test has seen it on screen, however slow the engine is
    handled: list[tuple[ChatEvent, Decision | None]] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)  # directive ids of the shown frames, each change once

    async def handle(self, event: ChatEvent) -> Decision | None:
        """What ``_pump`` calls: the director's ``handle``, recording every event and its decision."""
        decision = await self.director.handle(event)
        self.handled.append((event, decision))
        return decision

    async def until(self, what: str, done: Callable[[], bool]) -> None:
        """Poll ``done`` until true; fail naming ``what`` and the engine's state after DEADLINE_S."""
        try:
            async with asyncio.timeout(DEADLINE_S):
                while not done():  # noqa: ASYNC110 - polling the state of three tasks and a thread
                    await asyncio.sleep(0.02)
        except TimeoutError:
            pytest.fail(f"timed out waiting for {what}: engine={self.engine.status()['directive']} "
                        f"director={self.director.state()} shown={self.shown}")

    async def plays(self, command_id: str, name: str) -> None:
        """Wait until the engine shows ``command_id`` (the action ``name``) on screen."""
        def on_screen() -> bool:
            d = self.engine.status()["directive"]
            return d["command_id"] == command_id and self.shown[-1:] == [command_id]

        await self.until(f"{name} ({command_id}) on screen", on_screen)
        assert self.engine.status()["directive"]["action"] == name

    async def finish_current(self) -> None:
        """End the director's current action now (skip its remaining duration on the director's clock)."""
        current = self.director.current
        assert current is not None
        self.clock.advance(action(current.argument).duration_s)


async def _set_or_closed(event: asyncio.Event, ws: Any) -> bool:
    """In a server script: wait until the test sets ``event`` (True), or the connection closes (False), so a
    failing test that never sets it still shuts its server down."""
    waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(ws.wait_closed())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    return event.is_set()


async def _record(engine: Engine, shown: list[str]) -> None:
    sub = engine.subscribe(audio=False)
    try:
        async for item in sub:
            if isinstance(item, VideoFrame) and (not shown or shown[-1] != item.directive_id):
                shown.append(item.directive_id)
    finally:
        sub.close()


@contextlib.asynccontextmanager
async def running_idol(gen: Any) -> AsyncIterator[Idol]:
    """Engine (real tiny generator, 20 fps) + director (small cooldowns, manual clock), frames recorded."""
    clock = FakeClock()
    cfg = DirectorConfig(user_cooldown_s=1.0, global_cooldown_s=0.0, cooldown_reply_interval_s=1.0)
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), gen, None, max_steps=2, max_chunk_frames=1)
    async with engine:
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.wait_for(engine.wait_started(), 60)
        async def submit(command: Any) -> None:  # the ticket is not handed back, so the director ends an
            await engine.submit(command)  # action on its (manual) clock: the test decides when, see docstring

        async with Director(cfg, submit, clock=clock) as director:
            idol = Idol(engine, director, clock)
            async with _background(_record(engine, idol.shown), "test-frame-recorder"):
                yield idol
    assert engine.error is None


@contextlib.asynccontextmanager
async def pumping(bridge: Any, idol: Idol) -> AsyncIterator[asyncio.Task[None]]:
    """``backend.app._pump`` feeding the bridge's events to the director, as the app runs it."""
    async with _background(_pump(bridge, idol.handle), "test-pump") as task:
        yield task


@contextlib.asynccontextmanager
async def _background(coro: Any, name: str) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``coro`` as a task for the block; cancel and await it on the way out."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _first_command_plays(idol, text: str, action: str):
    """The first chat event is ``text``: it is queued and its action plays (the director is busy from then)."""
    await idol.until(f"{text} to be handled", lambda: len(idol.handled) == 1)
    decision = _decided(idol, text)
    assert decision is not None and decision.decision == "queued"
    await idol.plays(decision.command_id, action)
    return decision


def _decided(idol: Idol, text: str) -> Decision | None:
    [decision] = [d for e, d in idol.handled if getattr(e, "text", None) == text]
    return decision


def _log(engine: Engine) -> list[tuple[str, str, str]]:
    return [(r.command_id, r.argument, r.outcome) for r in engine.session.log.records()]


async def _play_out(idol: Idol, expected: list[tuple[str, str]]) -> None:
    """The current action and then each queued one: check it is on screen, then end it on the director's clock."""
    for command_id, name in expected:
        await idol.plays(command_id, name)
        await idol.finish_current()
    await idol.until("the director to finish its queue",
                     lambda: idol.director.current is None and not idol.director.state()["next"])


# ----------------------------------------------------------------------------- Twitch


def _privmsg(i: int, text: str, *, mod: bool = False) -> str:
    """A PRIVMSG as Twitch sends it with the tags capability: a plain viewer (no badges) or a moderator."""
    who, badges = ("mod", "moderator/1") if mod else ("fan", "")
    return (f"@badges={badges};display-name={who.title()}{i};id=msg-{i};mod={int(mod)};room-id=1;"
            f"tmi-sent-ts=1700000000000;user-id={100 + i} :{who}{i}!{who}{i}@{who}{i}.tmi.twitch.tv "
            f"PRIVMSG #dallas :{text}")


async def test_twitch_chat_drives_the_idol_in_priority_order(gen) -> None:
    busy = asyncio.Event()  # the test saw the first command on screen: send the rest while it plays

    async def script(peer: IrcPeer, server: FakeTwitch, n: int) -> None:
        await peer.login(server)
        await peer.send(_privmsg(1, "!nod"))
        if not await _set_or_closed(busy, peer.ws):
            return
        await peer.send(_privmsg(2, "!wave"),                   # a viewer
                        _privmsg(3, "make a heart", mod=True),  # a moderator, free text
                        _privmsg(4, "hello everyone"),          # chatter
                        _privmsg(5, "!bow"),                    # a viewer ...
                        "@login=fan5;room-id=1;target-msg-id=msg-5;tmi-sent-ts=1700000000001 "
                        ":tmi.twitch.tv CLEARMSG #dallas :!bow")  # ... whose message a moderator deletes
        await peer.ws.wait_closed()

    fake = FakeTwitch(script)
    async with running_idol(gen) as idol, run_server(fake) as url:
        bridge = TwitchBridge(TwitchConfig(channel="dallas", url=url), env={}, backoff=Backoff(0.01, 0.05))
        async with pumping(bridge, idol):
            nod = await _first_command_plays(idol, "!nod", "nod")
            busy.set()
            await idol.until("all six chat events to be handled", lambda: len(idol.handled) == 6)

            wave, heart, bow = _decided(idol, "!wave"), _decided(idol, "make a heart"), _decided(idol, "!bow")
            assert _decided(idol, "hello everyone") is None  # chatter: no decision, no command
            assert wave is not None and (wave.decision, wave.reason, wave.argument) == ("queued", "tier_viewer",
                                                                                      "wave")
            assert heart is not None and (heart.decision, heart.argument, heart.user) == ("queued", "heart", "Mod3")
            assert bow is not None and bow.decision == "queued"
            purge = idol.handled[-1][1]
            assert purge is not None and (purge.decision, purge.reason, purge.command_id) == (
                "purged", "deleted", bow.command_id)
            # the moderator's request jumped the viewer's, which arrived first
            assert [i["id"] for i in idol.director.state()["next"]] == [heart.command_id, wave.command_id]

            await _play_out(idol, [(nod.command_id, "nod"), (heart.command_id, "heart"),
                                   (wave.command_id, "wave")])
            assert not fake.errors

    commanded = [nod.command_id, heart.command_id, wave.command_id]
    assert [i for i in idol.shown if i] == commanded  # the frames, in order; nothing else was ever shown
    assert _log(idol.engine) == [(nod.command_id, "nod", "shown"), (heart.command_id, "heart", "shown"),
                                 (wave.command_id, "wave", "shown")]  # the bow never reached the engine
    assert all(e.user_name != "Fan4" for e in idol.engine.session.log.records())


# ----------------------------------------------------------------------------- Bilibili


def _danmu(uid: int, name: str, text: str) -> dict:
    return {**DANMU, "info": [DANMU["info"][0], text, [uid, name, 0], *DANMU["info"][3:]]}


SUPER_CHAT_HEART = {"cmd": "SUPER_CHAT_MESSAGE", "data": {"id": 9, "uid": 77, "price": 30, "message": "比心",
                                                           "user_info": {"uname": "金主"}}}


async def test_bilibili_danmaku_drives_the_idol_paid_first(gen, api) -> None:  # noqa: F811 - the fixture
    fake_api, api_url = api
    busy = asyncio.Event()

    async def script(ws: Any, number: int) -> None:
        await ws.send(packet(8, {"code": 0}, ver=1))  # auth OK
        await ws.send(packet(5, _danmu(41, "观众甲", "!nod")))
        if not await _set_or_closed(busy, ws):
            return
        await ws.send(brotli_batch(_danmu(42, "观众乙", "!bow"), _danmu(43, "观众丙", "哈哈哈好可爱"),
                                   SUPER_CHAT_HEART))
        await ws.wait_closed()

    danmaku = DanmakuServer(script)
    async with running_idol(gen) as idol, websockets.asyncio.server.serve(danmaku.handler, "127.0.0.1", 0) as ws:
        fake_api.ws_port = ws.sockets[0].getsockname()[1]
        bridge = BilibiliBridge(web_cfg(api_url), backoff=Backoff(0.01, 0.05),
                                nav_url=f"{api_url}/x/web-interface/nav", env={})
        async with pumping(bridge, idol):
            nod = await _first_command_plays(idol, "!nod", "nod")
            busy.set()
            await idol.until("the batch to be handled", lambda: len(idol.handled) == 4)

            bow, heart = _decided(idol, "!bow"), _decided(idol, "比心")
            assert _decided(idol, "哈哈哈好可爱") is None
            assert bow is not None and (bow.decision, bow.reason, bow.argument) == ("queued", "tier_viewer", "bow")
            assert heart is not None and (heart.decision, heart.reason, heart.argument, heart.user) == (
                "queued", "tier_paid", "heart", "金主")
            assert [i["id"] for i in idol.director.state()["next"]] == [heart.command_id, bow.command_id]
            assert idol.director.state()["next"][0]["value_cents"] == 420  # 30 CNY

            await _play_out(idol, [(nod.command_id, "nod"), (heart.command_id, "heart"), (bow.command_id, "bow")])
        assert danmaku.connections == 1

    assert [i for i in idol.shown if i] == [nod.command_id, heart.command_id, bow.command_id]
    assert _log(idol.engine) == [(nod.command_id, "nod", "shown"), (heart.command_id, "heart", "shown"),
                                 (bow.command_id, "bow", "shown")]


async def test_refused_bilibili_auth_shows_in_control_status(gen: Any, api: Any) -> None:  # noqa: F811
    """A room whose danmaku server refuses every auth: `/control` status (over a real socket) shows the bridge
    as failed with the reason, the way `liveidol serve` wires it (``backend.app._chat_status``)."""
    from backend.app import _chat_status
    from backend.config import ServerConfig
    from backend.remote import ControlClient
    from backend.server import Server

    fake, api_url = api

    async def script(ws: Any, number: int) -> None:
        await ws.send(packet(8, {"code": -101}, ver=1))
        await ws.wait_closed()

    server = DanmakuServer(script)
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), gen, None, max_steps=2, max_chunk_frames=1)
    async with websockets.asyncio.server.serve(server.handler, "127.0.0.1", 0) as ws_server:
        fake.ws_port = ws_server.sockets[0].getsockname()[1]
        bridge = BilibiliBridge(web_cfg(api_url), backoff=Backoff(base_s=0.01, max_s=0.05),
                                nav_url=f"{api_url}/x/web-interface/nav", env={})
        async with engine, Server(ServerConfig(port=0), engine, token="tok",
                                  chat_fn=lambda: _chat_status([bridge])) as backend:
            async with _background(_pump(bridge, lambda event: asyncio.sleep(0)), "test-pump") as task:
                async with asyncio.timeout(DEADLINE_S):
                    await task  # _pump enters the bridge and returns when it stops
                async with ControlClient(f"{backend.url}/control", "tok") as control:
                    status = await control.status()
    [chat] = status.server["chat"]
    assert chat["platform"] == "bilibili" and chat["state"] == "failed"
    assert "refused auth" in chat["error"] and "code=-101" in chat["error"]
