"""The live engine's policies against a stand-in generator timed like the H200's stages, in real time, on a CPU.

    PYTHONPATH=$PWD python -m tests.engine.measure_live_policy [--pass-ms 32 32 32 32 29] [--scale 0.98]
        [--snapshot-ms 2] [--defer-cache] [--lookahead 8] [--cover 0] [--finish 0] [--seconds 20]

The real engine (restart_on_command, 25 FPS, 1-latent chunks of 4 frames) runs a stand-in whose chunk is made of
timed passes (sleeps: the four denoising passes and the cache pass, checked for the interrupt before each, as the
Wan generator is), a snapshot of ``--snapshot-ms`` before each chunk, a rewind of 2 ms, and frames that reach
the host 11 ms after the passes (the decode on the second CUDA stream). With ``--defer-cache`` the last pass (the
cache pass) runs at the start of the next chunk instead, as ``WanGenerator.defer_cache_pass`` does (frames ready
after the denoising passes; a chunk stopped after that pass keeps it). The measure is ``bench --live``'s: after
the warm-up, a command every 2 s for ``--seconds``; one JSON line with shown and distinct FPS, repeats, command to
frame p50/p95 and every latency, chunks restarted, let finish and dropped. The passes sleep, so the CPU's load
barely matters. With ``--scale 0.98`` (the passes of session 5's H200 run: 155.8 ms a chunk in the worker) it gave
24.04-24.09 distinct, 196-200 / 222-237 ms (two runs), against the H200's 23.94, 198 / 236 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import numpy as np

from backend.actions import ACTIONS
from backend.config import EngineConfig
from backend.engine import Engine
from backend.events import Command, CommandKind


class _Pending:
    def __init__(self, frames: np.ndarray, delay_s: float) -> None:
        self.frames, self.count, self.at = frames, int(frames.shape[0]), time.monotonic() + delay_s

    def done(self) -> bool:
        return time.monotonic() >= self.at

    def result(self) -> np.ndarray:
        delay = self.at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return self.frames


class TimedStandIn:
    """A generator of timed passes (see the module docstring); frames carry nothing but their shape."""

    def __init__(self, passes_s: list[float], snapshot_s: float, restore_s: float = 0.002, decode_s: float = 0.011,
                 frames_per_latent: int = 4, defer_cache: bool = False) -> None:
        self.passes_s, self.snapshot_s, self.restore_s, self.decode_s = passes_s, snapshot_s, restore_s, decode_s
        self.defer_cache = defer_cache
        self.pending = False  # the last chunk's cache pass waits for the next chunk (defer_cache)
        self._snap: dict[str, Any] | None = None
        self.tf = frames_per_latent
        self.interrupt: Any = None
        self.g = 0
        self.output_size = (16, 8)
        self.state: dict[str, Any] = {}

    def reset(self, reference_rgba: Any, conditions: Any) -> None:
        self.g, self.pending = 0, False

    def frames_per_chunk(self, chunk_frames: int | None = None) -> int:
        return (chunk_frames or 1) * self.tf

    def snapshot(self) -> dict[str, Any]:
        _sleep(self.snapshot_s)
        self._snap = {"g": self.g, "pending": self.pending, "flushed": False}
        return self._snap

    def restore(self, snap: dict[str, Any]) -> None:
        _sleep(self.restore_s)
        self.g, self.pending = snap["g"], snap["pending"] and not snap["flushed"]

    def start_chunk(self, conditions: Any, *, mouth: Any = None, steps: Any = None, chunk_frames: Any = None) -> _Pending:
        from backend.model.generator import ChunkInterrupted

        *passes, cache = self.passes_s
        if self.defer_cache:
            passes = [cache, *passes] if self.pending else passes
        else:
            passes = self.passes_s
        for i, seconds in enumerate(passes):
            if self.interrupt is not None and self.interrupt():
                raise ChunkInterrupted("interrupted between passes")
            _sleep(seconds)
            if i == 0 and self.pending and self._snap is not None:
                self._snap["flushed"] = True  # the previous chunk's cache pass ran: a rewind keeps it
        n = self.frames_per_chunk(chunk_frames)
        self.g, self.pending = self.g + n, self.defer_cache
        return _Pending(np.zeros((n, 8, 16, 4), np.uint8), self.decode_s)

    def next_chunk(self, conditions: Any, **kw: Any) -> np.ndarray:
        return self.start_chunk(conditions, **kw).result()


def _sleep(seconds: float) -> None:
    """Sleep to within ~0.1 ms (plain sleep overshoots by up to a millisecond on a busy machine)."""
    end = time.perf_counter() + seconds
    while (left := end - time.perf_counter()) > 0:
        time.sleep(left - 0.001 if left > 0.002 else 0)


async def measure(cfg: EngineConfig, gen: TimedStandIn, *, seconds: float, every_s: float = 2.0) -> dict[str, Any]:
    actions = [a.name for a in ACTIONS if not a.loop]
    async with Engine(cfg, gen, None, max_steps=4, max_chunk_frames=1) as engine:
        await asyncio.wait_for(engine.wait_started(), 60)
        while engine.counters["chunks_made"] < 14:  # noqa: ASYNC110 - the bench's warm-up: a cache's worth
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        before = dict(engine.counters)
        latencies: list[float] = []

        async def command(i: int) -> None:
            t0 = time.perf_counter()
            ticket = await engine.submit(Command(CommandKind.ACT, actions[i % len(actions)]))
            if await ticket.shown is not None:
                latencies.append(time.perf_counter() - t0)

        tasks, start, i = [], time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            tasks.append(asyncio.create_task(command(i)))
            i += 1
            await asyncio.sleep(every_s)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        d = {k: v - before[k] for k, v in engine.counters.items()}
        ms = sorted(round(1000 * x) for x in latencies)
        return {"fps_shown": round(d["frames_shown"] / elapsed, 2),
                "distinct_fps": round((d["frames_shown"] - d["frames_repeated"]) / elapsed, 2),
                "frames_repeated": d["frames_repeated"], "command_to_frame_ms_p50": round(float(np.percentile(ms, 50))),
                "command_to_frame_ms_p95": round(float(np.percentile(ms, 95))), "latencies_ms": ms,
                "chunks_restarted": d["chunks_restarted"], "chunks_finished_for_command": d["chunks_finished_for_command"],
                "chunks_dropped": d["chunks_dropped"], "chunk_ms": round(1000 * (engine._chunk_s or 0), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pass-ms", type=float, nargs="+", default=[32, 32, 32, 32, 29])
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every pass time")
    p.add_argument("--snapshot-ms", type=float, default=2.0)
    p.add_argument("--defer-cache", action="store_true", help="the cache pass at the start of the next chunk")
    p.add_argument("--lookahead", type=int, default=8)
    p.add_argument("--cover", type=float, default=0.0, help="engine.lookahead_cover")
    p.add_argument("--finish", type=float, default=0.0, help="engine.finish_within_s")
    p.add_argument("--seconds", type=float, default=20.0)
    a = p.parse_args()
    cfg = EngineConfig(fps=25.0, lookahead_frames=a.lookahead, min_steps=4, restart_on_command=True,
                       lookahead_cover=a.cover, finish_within_s=a.finish)
    gen = TimedStandIn([a.scale * ms / 1000 for ms in a.pass_ms], a.snapshot_ms / 1000, defer_cache=a.defer_cache)
    result = asyncio.run(measure(cfg, gen, seconds=a.seconds))
    print(json.dumps({"args": vars(a), **result}))


if __name__ == "__main__":
    main()
