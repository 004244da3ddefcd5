"""``Ticket.ended``: why a command's play finished, the word ``/control`` passes on to a director in another process
(docs/protocol.md, "Command events"). The engine with the REAL tiny generator (CPU)."""

from __future__ import annotations

import asyncio

import pytest

from backend.config import EngineConfig
from backend.engine import Engine
from backend.events import Command, CommandKind
from tests.engine.engine_helpers import real_generator


@pytest.fixture(scope="module")
def gen():
    return real_generator()


async def ended(ticket, seconds: float = 10.0) -> tuple[int | None, int | None, str]:
    async with asyncio.timeout(seconds):
        end = await ticket.finished
    return ticket.shown.result(), end, ticket.ended


async def test_each_ticket_says_why_it_finished(gen, engine_cfg: EngineConfig) -> None:
    async with Engine(engine_cfg, gen, None, max_steps=2, max_chunk_frames=1) as engine:
        blink = await engine.submit(Command(CommandKind.ACT, "blink"))
        start, end, why = await ended(blink)
        assert why == "played" and start is not None and end is not None and end > start

        wave = await engine.submit(Command(CommandKind.ACT, "wave"))
        async with asyncio.timeout(10):
            await wave.shown
        nod = await engine.submit(Command(CommandKind.ACT, "nod"))
        _, end, why = await ended(wave)
        assert why == "replaced" and end == nod.shown.result()

        cancel = await engine.submit(Command(CommandKind.CANCEL, nod.command_id))
        _, end, why = await ended(nod)
        assert why == "cancelled" and end == cancel.shown.result()
        assert (await ended(await engine.submit(Command(CommandKind.CANCEL, nod.command_id))))[1:] == (None, "ignored")

        # withdrawn before it applied (nothing runs between the two submits) / replaced before it showed
        bow = await engine.submit(Command(CommandKind.ACT, "bow"))
        await engine.submit(Command(CommandKind.CANCEL, bow.command_id))
        assert await ended(bow) == (None, None, "cancelled")
        heart = await engine.submit(Command(CommandKind.ACT, "heart"))
        like = await engine.submit(Command(CommandKind.ACT, "like"))
        assert await ended(heart) == (None, None, "replaced")
        happy = await engine.submit(Command(CommandKind.EMOTION, "happy"))  # occupies no action: ends once shown
        start, end, why = await ended(happy)
        assert why == "played" and start == end is not None
        assert not like.finished.done()  # the emotion does not end the like's play


async def test_an_action_with_an_emotion_at_the_same_boundary_still_plays_and_says_so(gen, engine_cfg) -> None:
    """Before: an emotion that took effect at the same chunk boundary as an action (a viewer's ``!angry`` right
    after the director sent a ``!wave``) made the action's ticket "superseded": shown None and finished at once,
    though the wave played, so the director sent the next action over it."""
    async with Engine(engine_cfg, gen, None, max_steps=2, max_chunk_frames=1) as engine:
        sub = engine.subscribe(audio=False, slot_frames=256)
        wave = await engine.submit(Command(CommandKind.ACT, "wave"))
        angry = await engine.submit(Command(CommandKind.EMOTION, "angry"))  # nothing runs between the two
        start, end, why = await ended(wave)
        assert start is not None and why == "played"
        assert angry.shown.result() == start and angry.ended == "played"
        frames = []
        while not frames or frames[-1].seq < end:
            frames.append(await sub.__anext__())
    assert end - start >= 2.4 * engine_cfg.fps  # the whole wave
    assert [f.seq for f in frames if f.directive_id == angry.command_id] == list(range(start, end))
