"""The live setting's two engine policies (``engine.lookahead_cover``, ``engine.finish_within_s``), on the CPU with
the real engine:

* ``lookahead_cover``: the producer queues only what covers the next chunk's making (the measured seconds per
  chunk) plus that many frames, never up to ``lookahead_frames`` when that is more;
* ``finish_within_s``: a command that comes while a chunk is being made lets that chunk finish when the command's
  first frame still shows within the budget (or no later than after a restart): the chunk is shown, nothing is
  thrown away, and the command's frames follow it; otherwise the chunk restarts as before.

The decisions are tested on an injected clock; where a command must land mid-chunk, :class:`GatedStandIn` holds the
stand-in generator's thread before a chosen step (a CPU's speed cannot be relied on for that timing). No timed
assertions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backend.config import EngineConfig
from backend.engine import Engine
from backend.events import Command, CommandKind, VideoFrame
from tests.engine.engine_helpers import MidChunkGate, PipelinedStandIn

DEADLINE_S = 60.0


class GatedStandIn(PipelinedStandIn, MidChunkGate):
    """:class:`PipelinedStandIn` whose thread waits before the interrupt check of step ``at_step`` of a chunk while
    armed, so a command submitted meanwhile is certain to land in the middle of that chunk."""

    def __init__(self, at_step: int, **kw: Any) -> None:
        PipelinedStandIn.__init__(self, **kw)
        MidChunkGate.__init__(self)
        self.at_step = at_step
        self.held_g: list[int] = []  # the first frame index of each chunk held at the gate

    def start_chunk(self, conditions, *, mouth=None, steps=None, chunk_frames=None):
        check, n = self.interrupt, [0]

        def gated() -> bool:
            n[0] += 1
            if n[0] == self.at_step and self.armed.is_set():
                self.hold(lambda: self.held_g.append(self.g))
            return check() if check is not None else False

        self.interrupt = gated if check is not None else None
        try:
            return super().start_chunk(conditions, mouth=mouth, steps=steps, chunk_frames=chunk_frames)
        finally:
            self.interrupt = check


def _frame_index(frame: VideoFrame) -> int:
    return int(frame.rgba[0, 0, 0]) + 256 * int(frame.rgba[0, 0, 1])


async def _command_mid_chunk(cfg: EngineConfig) -> tuple[Engine, GatedStandIn, list[tuple[int, str]], int]:
    """Run the engine, land one command at the 3rd of 4 steps of a chunk; return the engine, the stand-in, the
    (frame index, directive id) of each distinct frame shown, and the frame the command showed at."""
    gen = GatedStandIn(at_step=3, seconds_per_step=0.002, frames_per_latent=4)
    engine = Engine(cfg, gen, None, max_steps=4, max_chunk_frames=1)
    shown: list[tuple[int, str]] = []
    async with engine:
        sub = engine.subscribe(audio=False, slot_frames=4096)

        async def watch() -> None:
            last = None
            async for item in sub:
                if isinstance(item, VideoFrame) and item.rgba is not last:
                    shown.append((_frame_index(item), item.directive_id))
                    last = item.rgba

        watcher = asyncio.create_task(watch())
        try:
            async with asyncio.timeout(DEADLINE_S):
                await asyncio.wait_for(engine.wait_started(), 60)
                while engine.counters["chunks_made"] < 3:  # noqa: ASYNC110 - a chunk time measured first
                    await asyncio.sleep(0.01)
                ticket = await gen.command_mid_chunk(engine, Command(CommandKind.ACT, "wave"))
                at = await ticket.shown
                assert at is not None
                while len(shown) < 40:  # noqa: ASYNC110 - frames arrive from the engine's tasks
                    await asyncio.sleep(0.01)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert engine.error is None
    return engine, gen, shown, at


async def test_a_command_late_in_a_chunk_lets_it_finish_and_follows_it() -> None:
    # a generous budget: finishing always pays, whatever this CPU's speed
    cfg = EngineConfig(fps=25.0, lookahead_frames=8, min_steps=4, restart_on_command=True, finish_within_s=5.0)
    engine, gen, shown, _ = await _command_mid_chunk(cfg)
    held = gen.held_g[0]  # the first frame of the chunk in the making when the command came
    assert engine.counters["chunks_finished_for_command"] == 1 and engine.counters["chunks_restarted"] == 0
    assert gen.interrupted == 0
    indices = [i for i, _ in shown]
    assert indices == list(range(indices[0], indices[0] + len(indices)))  # every frame once, in order: none dropped
    frames = dict(shown)
    first_new = next(i for i, d in shown if d)  # the command's first frame
    assert all(not frames[held + k] for k in range(4))  # the finished chunk was shown, under the old directive
    assert first_new == held + 4  # and the command's frames follow it at once


async def test_without_a_budget_the_chunk_in_the_making_restarts() -> None:
    cfg = EngineConfig(fps=25.0, lookahead_frames=8, min_steps=4, restart_on_command=True)
    engine, gen, shown, _ = await _command_mid_chunk(cfg)
    held = gen.held_g[0]
    assert engine.counters["chunks_finished_for_command"] == 0 and engine.counters["chunks_restarted"] == 1
    assert gen.interrupted == 1
    frames = dict(shown)
    assert frames[held]  # the chunk was made again, under the command, from the same frame on


def test_finishing_pays_while_the_commands_first_frame_stays_within_the_budget() -> None:
    now = [100.0]
    engine = Engine(EngineConfig(fps=25.0, restart_on_command=True, finish_within_s=0.24), PipelinedStandIn(), None,
                    max_steps=4, max_chunk_frames=1, clock=lambda: now[0])
    engine._chunk_s = 0.156  # 4 frames at 25 FPS take 0.16 s to show
    assert not engine._finish_pays(0.0)  # no command
    engine.pacer.start(t0=100.0)
    engine._command_at = (100.0, 100.0)  # it came now; nothing queued
    # finishing: the chunk's 4 frames at 100.04 (the first slot after it is ready), the command's from 100.20
    assert engine._finish_pays(0.01)
    # with 0.1 s of the chunk left: its frames from 100.12, the command's from 100.28 > 100.24, and a restart
    # shows the command's first frame at 100.20: restart
    assert not engine._finish_pays(0.1)
    engine._command_at = (100.0, 100.2)  # 5 frames were queued: a restart waits for them too (100.20) ...
    assert not engine._finish_pays(0.01)  # ... but finishing shows the chunk after them: 100.36
    engine.cfg = EngineConfig(fps=25.0, restart_on_command=True, finish_within_s=0.0)
    engine._command_at = (100.0, 100.0)
    assert not engine._finish_pays(0.0)  # no budget: always restart


def test_lookahead_cover_queues_what_covers_the_next_chunk_and_that_many_frames_more() -> None:
    def engine(**kw: Any) -> Engine:
        cfg = EngineConfig(fps=20.0, restart_on_command=True, **kw)
        return Engine(cfg, PipelinedStandIn(), None, max_steps=4, max_chunk_frames=1)

    e = engine(lookahead_frames=24, lookahead_cover=1.5)
    assert e._lookahead() == 24  # no chunk measured yet
    e._chunk_s = 0.1  # 2 frames at 20 FPS
    assert e._lookahead() == pytest.approx(3.5)
    e._chunk_s = 2.0
    assert e._lookahead() == 24  # never more than lookahead_frames
    e = engine(lookahead_frames=24)
    e._chunk_s = 0.1
    assert e._lookahead() == 24  # off
    e = Engine(EngineConfig(fps=20.0, lookahead_frames=24, lookahead_cover=1.5), PipelinedStandIn(), None,
               max_steps=4, max_chunk_frames=1)
    e._chunk_s = 0.1
    assert e._lookahead() == 24  # without restarts a command waits for the chunk in the making anyway


async def test_with_lookahead_cover_the_buffer_holds_no_more_than_the_cover() -> None:
    gen: Any = PipelinedStandIn(seconds_per_step=0.001, frames_per_latent=4)
    cfg = EngineConfig(fps=25.0, lookahead_frames=40, min_steps=4, restart_on_command=True, lookahead_cover=1.0)
    engine = Engine(cfg, gen, None, max_steps=4, max_chunk_frames=1)
    samples: list[tuple[int, float]] = []
    async with engine:
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.wait_for(engine.wait_started(), 60)
            settled = False  # the chunks made before a chunk time was measured have been shown
            while len(samples) < 200:
                if engine._chunk_s is not None:
                    b, lim = engine.buffer_frames, engine._lookahead()
                    settled = settled or b < lim
                    if settled:
                        samples.append((b, lim))
                await asyncio.sleep(0.005)
    assert engine.error is None
    # the producer starts a chunk only below the cover, and a chunk adds 4 frames: never near 40
    assert max(b - lim for b, lim in samples) <= 4
    assert max(b for b, _ in samples) < 40
