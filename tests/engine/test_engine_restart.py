"""The engine's latency path (``engine.restart_on_command``, the Wan tier's live setting), on the CPU:

* a command that lands while a chunk is being made stops that chunk and it is made again under the command:
  exact -- the live session (the REAL small shipped model) is re-rendered frame for frame by `liveidol replay`,
  which makes each chunk once, cleanly, with the command applied from its chunk on;
* frames handed back pending (as decode on a second CUDA stream does) are shown in order once they arrive, every
  generated frame exactly once, none lost or shown twice, across restarts and dropped chunks; the engine's
  counts (shown, repeated, made, dropped) add up; the look-ahead bound holds;
* of the frames made ahead, a command keeps only those that cover the making of the next chunk.

Where a command must land mid-chunk, :class:`PassGate` holds the worker thread at a pass (a CPU's speed cannot
be relied on for that timing); where frames must arrive late, :class:`FakePending` stands in for the second
CUDA stream (a CPU has none). Everything else is the real engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from backend.config import EngineConfig, load_config
from backend.engine import Engine
from backend.events import Command, CommandKind, VideoFrame
from tests.engine.engine_helpers import PassGate, PipelinedStandIn, frames_digest, record_shown

DEADLINE_S = 90.0


async def test_a_command_mid_chunk_restarts_it_exactly_as_a_clean_replay(tmp_path: Path) -> None:
    from backend.app import build_generator, replay_header
    from backend.replay import replay

    log = tmp_path / "inputs.jsonl"
    cfg = load_config(None, {"model.device": "cpu", "model.steps": 2, "model.chunk_frames": 1,
                             "model.output_width": 64, "model.output_height": 36, "engine.fps": 25.0,
                             "engine.lookahead_frames": 8, "engine.min_steps": 2, "engine.restart_on_command": True,
                             "engine.log_path": str(log)})
    generator, reference, character = build_generator(cfg)
    gate = PassGate(generator, at_pass=3)  # 2 denoising passes have written the chunk's cache slots by then
    engine = Engine(cfg.engine, generator, reference, max_steps=2, max_chunk_frames=1, character=character,
                    log_header=replay_header(cfg))
    async with engine, record_shown(engine) as shown:
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.wait_for(engine.wait_started(), 60)
            for kind, arg in (("act", "wave"), ("emotion", "happy"), ("act", "wave"), ("act", "heart")):
                ticket = await gate.command_mid_chunk(engine, Command(CommandKind(kind), arg))
                assert await ticket.shown is not None
            while len(shown) < 40:  # noqa: ASYNC110 - frames arrive from the engine's tasks
                await asyncio.sleep(0.05)
    assert engine.error is None and gate.held == 4
    assert engine.counters["chunks_restarted"] == 4  # each command stopped the chunk it found in the making
    summary = replay(None, log, max_frames=len(shown))
    assert summary["frames"] == len(shown) and summary["commands"] == 4
    assert summary["sha256"] == frames_digest(shown)  # the same frames as a clean run with each command from its chunk


async def test_pending_frames_are_shown_once_each_in_order_across_restarts_and_drops() -> None:
    gen: Any = PipelinedStandIn(seconds_per_step=0.004, decode_s=0.03, frames_per_latent=4)
    cfg = EngineConfig(fps=40.0, lookahead_frames=8, min_steps=4, restart_on_command=True)
    engine = Engine(cfg, gen, None, max_steps=4, max_chunk_frames=1)
    seen: list[int] = []
    published = 0
    buffered: list[int] = []
    async with engine:
        sub = engine.subscribe(audio=False, slot_frames=4096)

        async def watch() -> None:
            nonlocal published
            last = None
            async for item in sub:
                if isinstance(item, VideoFrame):
                    published += 1
                    if item.rgba is not last:
                        seen.append(int(item.rgba[0, 0, 0]) + 256 * int(item.rgba[0, 0, 1]))
                        last = item.rgba

        async def sample() -> None:
            while True:
                buffered.append(engine.buffer_frames)
                await asyncio.sleep(0.002)

        tasks = [asyncio.create_task(watch()), asyncio.create_task(sample())]
        try:
            async with asyncio.timeout(DEADLINE_S):
                await asyncio.wait_for(engine.wait_started(), 60)
                for i in range(12):  # commands at all phases of the chunks, some mid-chunk, some between
                    await asyncio.sleep(0.013 * (i % 5))
                    await engine.submit(Command(CommandKind.ACT, ("wave", "heart", "nod")[i % 3]))
                await asyncio.sleep(0.5)
                status = engine.status()
                await asyncio.sleep(0.1)  # the subscriber catches up with what was published up to `status`
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert engine.error is None
    assert seen[:len(seen)] == list(range(len(seen)))  # every generated frame once, in order, none skipped
    distinct = status["frames_shown"] - status["frames_repeated"]
    assert len(seen) >= distinct > 0 and published >= status["frames_shown"]
    # every frame made was shown once, or dropped by a command before it showed, or is still in the buffer
    assert status["frames_made"] == distinct + status["frames_dropped"] + status["buffer_frames"]
    assert status["chunks_restarted"] >= 1 and gen.interrupted == status["chunks_restarted"]
    assert max(buffered) <= cfg.lookahead_frames - 1 + gen.frames_per_chunk(1)  # the look-ahead bound


async def test_a_command_keeps_only_the_frames_that_cover_the_next_chunk(tmp_path: Path) -> None:
    log = tmp_path / "inputs.jsonl"
    gen: Any = PipelinedStandIn(seconds_per_step=0.0, frames_per_latent=4)
    cfg = EngineConfig(fps=20.0, lookahead_frames=12, min_steps=4, restart_on_command=True, log_path=str(log))
    engine = Engine(cfg, gen, None, max_steps=4, max_chunk_frames=1)
    async with engine:
        async with asyncio.timeout(DEADLINE_S):
            await asyncio.wait_for(engine.wait_started(), 60)
            while engine.buffer_frames < 11:  # noqa: ASYNC110 - the producer fills the look-ahead
                await asyncio.sleep(0.005)
            engine._chunk_s = 0.1  # as if measured: 0.1 s a chunk, so 1.4 to 2.4 frames at 20 FPS cover it
            assert engine._last is not None
            last_g = int(engine._last.rgba[0, 0, 0]) + 256 * int(engine._last.rgba[0, 0, 1])
            ticket = await engine.submit(Command(CommandKind.ACT, "wave"))
            await ticket.shown
    assert engine.error is None
    at_g = next(json.loads(line)["at_g"] for line in log.read_text().splitlines()
                if json.loads(line)["event"] == "applied")
    kept = at_g - last_g - 1  # frames after the one on screen at the command that were shown before it took effect
    # 11+ frames were ready; a whole-chunk prefix just covering 1.4-2.4 frames stayed (at most 1 + a chunk of 4,
    # plus a frame or two the pacer showed while the command was being applied), the rest was dropped and remade
    assert 2 <= kept <= 8, kept
    assert engine.counters["chunks_dropped"] >= 1


def test_the_cover_is_the_next_chunks_making_less_the_time_to_the_next_slot() -> None:
    now = [100.0]
    stand_in: Any = PipelinedStandIn()
    engine = Engine(EngineConfig(fps=20.0, restart_on_command=True), stand_in, None, max_steps=4,
                    max_chunk_frames=1, clock=lambda: now[0])
    assert engine._cover_frames() == float("inf")  # nothing measured yet: keep everything
    engine._chunk_s = 0.1  # needs 1.1 * 0.1 + 0.01 = 0.12 s
    assert engine._cover_frames() == pytest.approx(0.12 * 20 + 1)  # no clock yet: a frame of margin
    engine.pacer.start(t0=100.0)
    assert engine._cover_frames() == pytest.approx(2.4)  # the next slot is due now: 0.12 s = 2.4 frames
    now[0] = 100.12  # slots 0, 1, 2 shown; slot 3 is due at 100.15, 0.03 s away
    engine.pacer._next = 3
    assert engine._cover_frames() == pytest.approx((0.12 - 0.03) * 20)
    engine._chunk_s = 0.001
    assert engine._cover_frames() == 0.0  # ready before the next slot: nothing needs keeping


def test_the_live_preset_is_the_wan_preset_with_the_latency_settings() -> None:
    from backend.cli import _preset

    base, live = _preset("wan-1.3b"), _preset("wan-1.3b-live")
    assert {k: v for k, v in live.items() if base.get(k) != v} == {
        "model.chunk_frames": 1, "engine.fps": 25.0, "engine.lookahead_frames": 8, "engine.lookahead_cover": 2.0,
        "engine.min_steps": 4}
    assert base["engine.restart_on_command"] is True and base["model.family"] == "wan"
    cfg = load_config(None, live)
    assert dataclasses.astuple(cfg.engine)[:1] == (25.0,) and cfg.model.chunk_frames == 1
