"""The director driving the REAL engine (real tiny generator on CPU), as ``liveidol serve`` wires them
(``Director(cfg, engine.submit)``): the engine's session times the actions (the director's own clock is
frozen here and never ends anything), and a message deleted, or a viewer banned, after their command
started stops it: speech at once, an action at the next chunk. The TTS is a stand-in returning a 3 s tone
(the real voices are tested in tests/voice; here only the engine's audio path matters)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import numpy as np
import pytest

from backend.config import DirectorConfig, EngineConfig
from backend.director import Director
from backend.engine import Engine
from backend.events import AudioChunk, Ban, Deletion, VideoFrame
from tests.director.director_kit import FakeClock, chat
from tests.engine.engine_helpers import real_generator

FPS = 20.0
SR = 16000
DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def gen():
    return real_generator()


def tone(text: str) -> tuple[np.ndarray, int]:
    return (0.3 * np.sin(np.arange(SR * 3) * 2 * np.pi * 220 / SR)).astype(np.float32), SR


async def until(what: str, done, engine: Engine) -> None:
    try:
        async with asyncio.timeout(DEADLINE_S):
            while not done():  # noqa: ASYNC110 - polling the engine's and director's state
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}: engine={engine.status()['directive']}")


@pytest.fixture
async def idol(gen) -> AsyncIterator[tuple[Engine, Director, list]]:
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), gen, None, max_steps=2, max_chunk_frames=1,
                    tts=tone, sample_rate=SR)
    cfg = dataclasses.replace(DirectorConfig(), user_cooldown_s=0.0, global_cooldown_s=0.0, dedup_window_s=0.0)
    seen: list = []

    async def watch() -> None:
        async for item in engine.subscribe(slot_frames=256, audio_chunks=8192):
            seen.append(item)

    async with engine:
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.wait_for(engine.wait_started(), 60)
        # the director's clock never moves: anything that ends, the engine ended
        async with Director(cfg, engine.submit, clock=FakeClock()) as director:
            watcher = asyncio.create_task(watch())
            try:
                yield engine, director, seen
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)


async def test_the_engine_times_the_actions_not_the_directors_clock(idol) -> None:
    """Before: the next queued action was sent when the director's clock passed the first one's duration; with
    that clock frozen, the second never played."""
    engine, director, seen = idol
    first = await director.handle(chat("!blink", user="a"))
    second = await director.handle(chat("!nod", user="b"))
    assert (first.decision, second.decision) == ("queued", "queued")
    await until("the blink to play", lambda: engine.status()["directive"]["action"] == "blink", engine)
    await until("the nod to follow the blink", lambda: engine.status()["directive"]["action"] == "nod", engine)
    finished = [d for d in director.decisions if d.decision == "finished"]
    assert finished and finished[0].command_id == first.command_id and finished[0].reason == "played"
    blink = [f.seq for f in seen if isinstance(f, VideoFrame) and f.directive_id == first.command_id]
    assert len(blink) >= 0.8 * FPS - 4  # it played its whole 0.8 s (rounded to chunks) before the nod


async def test_a_deleted_say_stops_speaking_at_once_and_a_banned_viewers_action_ends(idol) -> None:
    """Before: deleting a message or banning its sender after the command started changed nothing on screen."""
    engine, director, seen = idol
    msg = chat("!say hello everyone, this is a long sentence", user="eve")
    said = await director.handle(msg)
    assert said.decision == "queued"
    await until("the idol to speak", lambda: engine.status()["speaking"], engine)
    await asyncio.sleep(0.3)
    decision = await director.handle(Deletion(msg.platform, msg.channel, msg.message_id))
    assert decision is not None and decision.decision == "cancelled" and decision.reason == "deleted"
    await asyncio.sleep(0)  # the cancel is sent by handle(); the engine silences at once
    assert not engine.status()["speaking"]
    cut = len(seen)
    await asyncio.sleep(0.5)
    audio_pts = [x.pts for x in seen[:cut] if isinstance(x, AudioChunk)]
    late_audio = [x for x in seen[cut:] if isinstance(x, AudioChunk)]
    assert audio_pts and not late_audio  # of the 3 s of speech, nothing after the deletion
    assert director.current is None

    wave = chat("!wave", user="mallory")
    queued = await director.handle(wave)
    await until("the wave to play", lambda: engine.status()["directive"]["action"] == "wave", engine)
    banned = await director.handle(Ban(wave.platform, wave.channel, user_id=wave.user_id, user_name="mallory"))
    assert banned is not None and banned.decision == "cancelled" and banned.command_id == queued.command_id
    await until("the wave to end", lambda: engine.status()["directive"]["action"] == "idle", engine)
    waved = [f for f in seen if isinstance(f, VideoFrame) and f.directive_id == queued.command_id]
    assert len(waved) < 2.4 * FPS  # cut short: a wave lasts 2.4 s


async def test_a_deleted_bilibili_super_chat_stops_its_action(idol) -> None:
    """Bilibili's equivalent of a deletion: SUPER_CHAT_MESSAGE_DELETE (a Deletion of the super chat's id)."""
    from backend.events import PaidMessage

    engine, director, _ = idol
    sc = PaidMessage("bilibili", "777", "42", "观众", "!wave", value_cents=420, kind="super_chat", message_id="5")
    queued = await director.handle(sc)
    await until("the wave to play", lambda: engine.status()["directive"]["action"] == "wave", engine)
    decision = await director.handle(Deletion("bilibili", "777", "5"))
    assert decision is not None and (decision.decision, decision.command_id) == ("cancelled", queued.command_id)
    await until("the wave to end", lambda: engine.status()["directive"]["action"] == "idle", engine)
