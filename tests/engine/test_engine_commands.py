"""Commands under real traffic, on the engine with the REAL tiny generator (CPU): the same action twice
restarts it (the session owns action timing and passes serial + progress down), a cancelled speech goes
silent at once and a cancelled action ends at the next chunk, and a command storm never freezes the picture
(``SlowStandIn`` where generation must be slower than real time on purpose, said so there)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from backend.actions import action
from backend.config import EngineConfig
from backend.engine import Engine
from backend.events import AudioChunk, Command, CommandKind, VideoFrame
from tests.engine.engine_helpers import SlowStandIn, real_generator
from tests.engine.test_engine_stream import FPS, collect, read_log


@pytest.fixture(scope="module")
def gen():
    return real_generator()


class ConditionSpy:
    """Forwards to the real generator; records each chunk's conditions and the generator's own progress."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.calls: list = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def next_chunk(self, conditions, *, mouth=None, steps=None, chunk_frames=None):
        self.calls.append(conditions)
        return self._inner.next_chunk(conditions, mouth=mouth, steps=steps, chunk_frames=chunk_frames)


async def wait_shown(ticket, seconds: float = 10.0) -> int:
    async with asyncio.timeout(seconds):
        seq = await ticket.shown
    assert seq is not None
    return seq


async def test_the_same_action_twice_restarts_it_with_progress_from_the_session(gen, engine_cfg):
    """Before: Conditions.serial was never set, so a second "wave" went on from the first one's progress, and
    progress was counted by the generator at a fixed 25 FPS while the engine ran at 20."""
    spy = ConditionSpy(gen)
    async with Engine(engine_cfg, spy, None, max_steps=2, max_chunk_frames=1) as engine:
        first = await engine.submit(Command(CommandKind.ACT, "wave"))
        await wait_shown(first)
        await collect(engine.subscribe(), 0.3)  # part of the first wave plays
        second = await engine.submit(Command(CommandKind.ACT, "wave"))
        await wait_shown(second)
        await asyncio.sleep(0.2)
    waves = [c for c in spy.calls if c.action == "wave"]
    serials = sorted({c.serial for c in waves})
    assert len(serials) == 2, serials  # two plays of the same action
    first_play = [c for c in waves if c.serial == serials[0]]
    second_play = [c for c in waves if c.serial == serials[1]]
    assert first_play[0].progress[0] == 0.0 and second_play[0].progress[0] == 0.0  # each starts from 0
    assert first_play[-1].progress[-1] > 0.0
    # progress per frame at the ENGINE's fps: one frame = 1 / (duration * 20 fps)
    step = 1.0 / (action("wave").duration_s * FPS)
    assert np.allclose(np.diff(second_play[0].progress), step, atol=1e-6)
    assert len(second_play[0].progress) == 4  # one value per video frame of the chunk (1 latent x 4)


async def test_cancel_silences_speech_at_once_and_ends_an_action_at_the_next_chunk(gen, engine_cfg):
    """Before: there was no way to stop a command that had started: a deleted message's `say` spoke on."""
    sr = 16000
    pcm = (0.3 * np.sin(np.arange(sr * 3) * 2 * np.pi * 220 / sr)).astype(np.float32)  # 3 s of speech
    async with Engine(engine_cfg, gen, None, max_steps=2, max_chunk_frames=1) as engine:
        sub = engine.subscribe(slot_frames=64, audio_chunks=4096)
        say = await engine.speak(pcm, sr, text="a long sentence")
        await wait_shown(say)
        await collect(sub, 0.4)  # it speaks for a while
        assert engine.status()["speaking"]
        cancel = await engine.submit(Command(CommandKind.CANCEL, say.command_id, source="twitch"))
        assert not engine.status()["speaking"]  # silent at once: no audio after the cancel returns
        after = await collect(sub, 0.6)
        assert not [x for x in after if isinstance(x, AudioChunk) and x.pts > 0.25 + after[0].pts]
        await wait_shown(cancel)
        assert engine.status()["directive"]["action"] == "idle"

        wave = await engine.submit(Command(CommandKind.ACT, "wave"))
        await wait_shown(wave)
        cancel_wave = await engine.submit(Command(CommandKind.CANCEL, wave.command_id))
        at = await wait_shown(cancel_wave)
        frames = [f for f in await collect(sub, 0.5) if isinstance(f, VideoFrame)]
        nothing = await engine.submit(Command(CommandKind.CANCEL, "no-such-command"))
        async with asyncio.timeout(10):
            assert await nothing.shown is None
        status = engine.status()
    later = [f for f in frames if f.seq >= at]
    assert later and all(f.directive_id != wave.command_id for f in later)  # the wave ended with the cancel
    wave_seqs = [f.seq for f in frames if f.directive_id == wave.command_id]
    assert not wave_seqs or at - min(wave_seqs) < action("wave").duration_s * FPS  # cut short
    assert status["directive"]["action"] == "idle" and status["commands_cancelled"] >= 2
    outcomes = {r["command_id"]: r["outcome"] for r in read_log(engine_cfg.log_path)}
    assert outcomes[cancel.command_id] == "shown" and outcomes[nothing.command_id] == "ignored"


async def test_a_command_storm_never_freezes_the_picture():
    """Generation slower than real time (``SlowStandIn``: 0.15 s a step x 2 steps for 8 frames at 25 fps =
    0.3 s of work for 0.32 s of video, and the policy cannot go lower) and a new command every 0.2 s, faster
    than a chunk is made. Before: each command threw away the chunk being made, nothing new was ever shown.
    Now the chunk in progress is kept and the commands coalesce at the next boundary (counted)."""
    stand_in = SlowStandIn(seconds_per_step=0.15)
    cfg = EngineConfig(fps=25.0, lookahead_frames=8, min_steps=2, min_chunk_frames=2)
    cycle = ["wave", "heart", "nod", "like", "bow"]
    async with Engine(cfg, stand_in, None, max_steps=2, max_chunk_frames=2) as engine:
        sub = engine.subscribe(slot_frames=256)
        async with asyncio.timeout(10):
            await asyncio.wait_for(engine.wait_started(), 60)
        tickets = []
        seen: list[VideoFrame] = []

        async def watch() -> None:
            async for item in sub:
                if isinstance(item, VideoFrame):
                    seen.append(item)

        watcher = asyncio.create_task(watch())
        try:
            for i in range(20):  # 4 s at 5 commands a second
                tickets.append(await engine.submit(Command(CommandKind.ACT, cycle[i % len(cycle)])))
                await asyncio.sleep(0.2)
        finally:
            watcher.cancel()
        status = engine.status()
    generated = {int(f.rgba[0, 0, 0]) for f in seen}  # the stand-in writes its generated frame index there
    shown_ids = {f.directive_id for f in seen} - {""}
    assert len(generated) >= 16, f"picture froze: {len(generated)} distinct generated frames"
    assert len(shown_ids & {t.command_id for t in tickets}) >= 2, shown_ids
    assert status["commands_coalesced"] >= 1


async def test_a_say_cancelled_while_its_speech_is_synthesized_never_speaks(gen, engine_cfg):
    """A deletion can come while the TTS is still working on the `say` (seconds on a busy CPU)."""
    started, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_tts(text: str):
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)
        return np.zeros(16000, np.float32) + 0.2, 16000

    async with Engine(engine_cfg, gen, None, max_steps=2, max_chunk_frames=1, tts=slow_tts) as engine:
        say = asyncio.create_task(engine.submit(Command(CommandKind.SAY, "hello", command_id="say-1")))
        await started.wait()
        await engine.submit(Command(CommandKind.CANCEL, "say-1"))
        release.set()
        ticket = await say
        async with asyncio.timeout(10):
            assert await ticket.shown is None
        await asyncio.sleep(0.3)
        assert not engine.status()["speaking"] and engine.status()["directive"]["action"] == "idle"
    outcomes = {r["command_id"]: r["outcome"] for r in read_log(engine_cfg.log_path)}
    assert outcomes["say-1"] == "cancelled"
