"""A director in another process knows when the idol finished each action: the backend pushes each command's
``started`` and ``finished`` over ``/control`` (docs/protocol.md, "Command events") and
:class:`backend.remote.ControlClient` turns them into tickets shaped like the engine's. Real server on loopback,
real engine with the real tiny generator on the CPU, real websockets clients.

Every check is on the engine's frame sequence numbers (the frames a subscriber saw, the events' ``frame``), never
on the wall clock; the remote director's own clock is frozen, so whatever ends, the backend's word ended."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from backend.actions import action
from backend.config import DirectorConfig, EngineConfig, ServerConfig
from backend.director import Director
from backend.engine import Engine
from backend.events import Command, CommandKind, VideoFrame
from backend.remote import ControlClient, RemoteError, RemoteTicket
from backend.server import Server
from backend.server.protocol import EndReason, Event, decode_server
from tests.director.director_kit import FakeClock, chat
from tests.server.server_helpers import TOKEN, frames_for, recv_msg

FPS = 10.0  # a chunk (4 frames) shows for 0.4 s: the remote director's round trip fits well inside one
DEADLINE_S = 20.0


@dataclasses.dataclass
class Backend:
    engine: Engine
    server: Server
    frames: list[VideoFrame]  # every frame the engine showed since the test began (seq, directive_id)

    @property
    def url(self) -> str:
        return self.server.url + "/control"

    def seqs_of(self, command_id: str) -> list[int]:
        return [f.seq for f in self.frames if f.directive_id == command_id]


@pytest.fixture
async def backend(gen) -> AsyncIterator[Backend]:
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), gen, None, max_steps=2, max_chunk_frames=1)
    async with engine, Server(ServerConfig(port=0), engine, token=TOKEN, event_queue=4) as server:
        await asyncio.wait_for(engine.wait_started(), 60)
        frames: list[VideoFrame] = []

        async def watch() -> None:
            async for item in engine.subscribe(audio=False, slot_frames=4096):
                if isinstance(item, VideoFrame):
                    frames.append(item)

        watcher = asyncio.create_task(watch())
        try:
            yield Backend(engine, server, frames)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def until(what: str, done: Any) -> None:
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not done():  # noqa: ASYNC110 - polling state the test does not own
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def settled(backend: Backend, *tickets: RemoteTicket) -> None:
    """Wait for the tickets' ends and for the watcher to have seen the frames up to them."""
    async with asyncio.timeout(DEADLINE_S):
        ends = await asyncio.gather(*(t.finished for t in tickets))
    last = max([e for e in ends if e is not None], default=0)
    await until("the frames up to the last end", lambda: backend.frames and backend.frames[-1].seq >= last)


async def test_a_remote_directors_queued_actions_play_back_to_back(backend: Backend) -> None:
    """Before: a director over /control went by each action's estimated duration on its own clock; with that clock
    frozen, the second action never started (and with a wrong estimate actions overlapped or left gaps). Now
    each one starts when the backend says the one before finished: in full, no overlap, no gap beyond a chunk."""
    n = backend.engine._gen.frames_per_chunk(1)  # video frames per chunk at the engine's level (1 latent)
    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0, dedup_window_s=0.0)
    tickets: list[RemoteTicket] = []
    async with ControlClient(backend.url, TOKEN) as control:
        async def sink(command: Command) -> object:
            ticket = await control.command(command)
            tickets.append(ticket)
            return ticket

        async with Director(cfg, sink, clock=FakeClock()) as director:
            plays = ["blink", "nod", "blink"]  # the same action twice plays twice
            for i, name in enumerate(plays):
                assert (await director.handle(chat(f"!{name}", user=f"u{i}"))).decision == "queued"
            await until("all three to be sent", lambda: len(tickets) == 3)
            await settled(backend, *tickets)
            await until("the director to see the last one end", lambda: director.current is None)
    finished = [d for d in director.decisions if d.decision == "finished"]
    assert [(d.argument, d.reason, d.detail) for d in finished] == [(p, "played", "played") for p in plays]
    for name, ticket in zip(plays, tickets, strict=True):
        start, end = ticket.started.result(), ticket.finished.result()
        assert ticket.reason is EndReason.PLAYED, ticket
        assert backend.seqs_of(ticket.command_id) == list(range(start, end)), "its frames are exactly its events'"
        assert end - start >= math.ceil(action(name).duration_s * FPS), f"{name} was cut short"
    for before, after in itertools.pairwise(tickets):
        gap = after.started.result() - before.finished.result()
        assert 0 <= gap <= n, f"{gap} idle frames between two queued actions (a chunk is {n})"


async def test_a_replaced_command_reports_replaced(backend: Backend) -> None:
    async with ControlClient(backend.url, TOKEN) as control:
        wave = await control.command(Command(CommandKind.ACT, "wave"))
        async with asyncio.timeout(DEADLINE_S):
            await wave.started
        nod = await control.command(Command(CommandKind.ACT, "nod"))
        async with asyncio.timeout(DEADLINE_S):
            await nod.started
        # two at once: the newest wins before the first ever shows
        heart, like = await asyncio.gather(control.command(Command(CommandKind.ACT, "heart")),
                                           control.command(Command(CommandKind.ACT, "like")))
        await settled(backend, wave, nod, heart, like)
    assert (wave.reason, nod.reason, heart.reason, like.reason) == (EndReason.REPLACED,) * 3 + (EndReason.PLAYED,)
    assert (wave.ended, like.ended) == ("replaced", "played")  # as the engine's Ticket.ended says it
    assert wave.finished.result() == nod.started.result()  # cut where the nod began
    assert backend.seqs_of(wave.command_id) == list(range(wave.started.result(), wave.finished.result()))
    assert nod.finished.result() == like.started.result()
    assert (heart.started.result(), heart.finished.result()) == (None, None)  # never shown
    assert backend.seqs_of(heart.command_id) == []


async def test_cancel_reports_cancelled_and_a_cancel_of_nothing_ignored(backend: Backend) -> None:
    async with ControlClient(backend.url, TOKEN) as control:
        bow = await control.command(Command(CommandKind.ACT, "bow"))
        async with asyncio.timeout(DEADLINE_S):
            await bow.started
        cancel = await control.command(Command(CommandKind.CANCEL, bow.command_id))
        await settled(backend, bow)
        again = await control.command(Command(CommandKind.CANCEL, bow.command_id))  # nothing of it plays now
        await settled(backend, again)
    assert bow.reason is EndReason.CANCELLED
    assert bow.finished.result() == cancel.started.result()  # it stopped where the cancel took effect
    assert len(backend.seqs_of(bow.command_id)) < math.ceil(action("bow").duration_s * FPS)
    assert (again.reason, again.started.result(), again.finished.result()) == (EndReason.IGNORED, None, None)


async def test_a_client_that_never_reads_events_does_not_stall_anyone(backend: Backend) -> None:
    """A control client asks for events, then stops reading (its socket's buffers fill with 300 status replies).
    Its events queue (4 at most here) and the oldest are dropped and counted; the engine, a /stream viewer and
    another control client go on as if it were not there; when it reads again, events say how many it lost."""
    engine, server = backend.engine, backend.server
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    async with connect(server.url + "/control", sock=sock, max_queue=1, close_timeout=0.1) as stuck, \
            connect(server.url + "/stream", max_size=None) as stream, ControlClient(backend.url, TOKEN) as good:
        await stuck.send(json.dumps({"type": "auth", "token": TOKEN}))
        assert json.loads(await stuck.recv())["type"] == "ok"
        await recv_msg(stream)
        shown_before = engine.status()["frames_shown"]
        for i in range(100):  # from here on it reads nothing
            await stuck.send(json.dumps({"type": "command", "kind": "act", "argument": ["wave", "nod"][i % 2],
                                         "id": f"c{i}", "events": 1}))
            for j in range(3):
                await stuck.send(json.dumps({"type": "status", "id": f"s{i}.{j}"}))
        await until("events of the stuck client to be dropped", lambda: server.stats()["control_events_dropped"] > 0)
        watching = asyncio.ensure_future(frames_for(stream, 1.5))
        blink = await good.command(Command(CommandKind.ACT, "blink"))
        await settled(backend, blink)
        frames = await watching
        dropped = server.stats()["control_events_dropped"]
        metrics = server.metrics_text()
        # reading again: events arrive, stamped with the number this connection lost
        lost = 0
        async with asyncio.timeout(DEADLINE_S):
            while not lost:
                msg = decode_server(await stuck.recv())
                if isinstance(msg, Event):
                    lost = msg.dropped
    assert blink.reason is EndReason.PLAYED
    assert backend.seqs_of(blink.command_id) == list(range(blink.started.result(), blink.finished.result()))
    seqs = {f.seq for f in frames}
    shown = {f.seq for f in backend.frames if min(seqs) <= f.seq <= max(seqs)}  # what the engine showed meanwhile
    assert len(seqs) >= 5 and len(shown - seqs) <= 0.1 * len(shown)  # the viewer got (nearly) every one of them
    assert engine.status()["frames_shown"] > shown_before
    assert dropped > 0 and 0 < lost <= dropped
    assert f'liveidol_control_events_total{{state="dropped"}} {dropped}' in metrics


async def test_on_disconnect_tickets_fail_clearly_and_the_director_goes_by_its_estimate(backend: Backend) -> None:
    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0, dedup_window_s=0.0)
    clock = FakeClock()
    tickets: list[RemoteTicket] = []
    async with ControlClient(backend.url, TOKEN) as control:
        async def sink(command: Command) -> object:
            ticket = await control.command(command)
            tickets.append(ticket)
            return ticket

        async with Director(cfg, sink, clock=clock) as director:
            await director.handle(chat("!wave", user="a"))
            await until("the wave to be sent", lambda: tickets)
            async with asyncio.timeout(DEADLINE_S):
                await tickets[0].started
            await backend.server.stop()  # the backend goes away while the wave plays
            with pytest.raises(RemoteError, match="connection lost"):
                async with asyncio.timeout(DEADLINE_S):
                    await tickets[0].finished
            await director.tick()
            assert director.current is not None  # no word came: the estimate decides, not the error
            clock.advance(action("wave").duration_s)
            await director.tick()
            assert director.current is None
        with pytest.raises(RemoteError, match="connection lost"):
            await control.status()  # the client says so too, at once
    [finished] = [d for d in director.decisions if d.decision == "finished"]
    assert finished.reason == "duration_elapsed"


async def test_an_older_backend_without_events_leaves_the_director_on_its_estimate(backend: Backend) -> None:
    """``events=False`` makes the client ask for none, as a backend that predates them would answer."""
    async with ControlClient(backend.url, TOKEN, events=False) as control:
        ticket = await control.command(Command(CommandKind.ACT, "nod"))
        assert ticket.ok.events == 0 and ticket.command_id
        with pytest.raises(RemoteError, match="no command events"):
            await ticket.finished
