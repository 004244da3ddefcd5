"""Helpers for the engine tests: the real generator at a tiny size, and a stand-in for timing tests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from backend.config import AutoencoderConfig, DiTSizes, ModelConfig


def tiny_model_config(**kw: object) -> ModelConfig:
    """The real model at a size that runs a chunk in ~20 ms on one CPU core."""
    base = dict(checkpoint="random", device="cpu", steps=2, chunk_frames=1, window_frames=4,
                output_width=64, output_height=36,
                dit=DiTSizes(dim=32, ffn_dim=64, num_heads=2, num_layers=1, text_dim=16, freq_dim=16),
                autoencoder=AutoencoderConfig(width=8, native_width=32, native_height=16))
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def real_generator(**kw: object):
    """The real ``backend.model.generator.Generator`` at a tiny size, warmed up (first chunk is slow)."""
    from backend.model.generator import Conditions, Generator

    gen = Generator(tiny_model_config(**kw))
    gen.reset(None, Conditions())
    for steps in (1, 2, 1, 2, 1, 2):  # warm-up (kernel selection per cache length) outside timed parts
        gen.next_chunk(Conditions(), steps=steps, chunk_frames=1)
    return gen


class SlowStandIn:
    """A stand-in generator whose chunk time is set by the test (sleep), to put the engine behind real
    time on purpose -- the real model cannot be made reliably slow/fast on a shared CI machine.
    Frames encode their generated index in pixel [0, 0, 0]; snapshot/restore roll the index back."""

    def __init__(self, seconds_per_step: float = 0.0, frames_per_latent: int = 4, size: tuple[int, int] = (16, 8)):
        self.seconds_per_step = seconds_per_step
        self.tf = frames_per_latent
        self.output_size = size
        self.g = 0
        self.calls: list[dict] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def reset(self, reference_rgba, conditions) -> None:
        self.threads.add(threading.current_thread().name)
        self.g = 0

    def frames_per_chunk(self, chunk_frames=None) -> int:
        return (chunk_frames or 2) * self.tf

    def next_chunk(self, conditions, *, mouth=None, steps=None, chunk_frames=None) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        steps = steps or 4
        n = self.frames_per_chunk(chunk_frames)
        time.sleep(self.seconds_per_step * steps)
        self.calls.append({"action": conditions.action, "emotion": conditions.emotion, "steps": steps,
                           "chunk_frames": chunk_frames, "mouth": None if mouth is None else np.array(mouth), "g": self.g})
        w, h = self.output_size
        out = np.zeros((n, h, w, 4), np.uint8)
        out[:, 0, 0, 0] = (self.g + np.arange(n)) % 256
        out[..., 3] = 255
        self.g += n
        return out

    def snapshot(self) -> int:
        return self.g

    def restore(self, snap: int) -> None:
        self.g = snap

    @property
    def state(self) -> dict:
        return {"frames_made": self.g}


class MidChunkGate:
    """The handshake that holds a generator thread in the middle of a chunk while a test submits a command: the
    test arms it (``command_mid_chunk``), the thread calls :meth:`hold` where it should stop, the test submits while
    it is held and then lets it go."""

    def __init__(self) -> None:
        self.armed, self.caught, self.go = threading.Event(), threading.Event(), threading.Event()

    def hold(self, note: Callable[[], None] | None = None) -> None:
        """On the generator thread, when armed: disarm, ``note()`` what is held, signal the test, wait for its release."""
        self.armed.clear()
        if note is not None:
            note()
        self.caught.set()
        self.go.wait(30)
        self.go.clear()

    async def command_mid_chunk(self, engine, command):
        """Wait for a chunk to reach the gate, submit ``command`` while it is held there, release it."""
        import asyncio

        self.armed.set()
        assert await asyncio.to_thread(self.caught.wait, 30), "no chunk reached the gate"
        self.caught.clear()
        try:
            return await engine.submit(command)
        finally:
            self.go.set()


class PassGate(MidChunkGate):
    """Holds the generator's worker thread before a chosen pass of a chunk until the test lets it go, so a
    command lands mid-chunk for certain: the only way to do that on a CPU whose speed varies. It wraps the
    generator's own ``_before_pass`` (which then runs as usual, interrupt check included) and ``_chunk_args``
    (called at each chunk's start, to count its passes).

    Usage::

        gate = PassGate(gen, at_pass=3)
        ticket = await gate.command_mid_chunk(engine, Command(CommandKind.ACT, "wave"))
    """

    def __init__(self, gen, at_pass: int = 2) -> None:
        super().__init__()
        self.gen, self.at_pass = gen, at_pass
        self.held = 0
        self._n = 0
        before, args = gen._before_pass, gen._chunk_args

        def chunk_args(*a):
            self._n = 0
            return args(*a)

        def gate() -> None:
            self._n += 1
            if self.gen.interrupt is not None and self._n == self.at_pass and self.armed.is_set():
                self.hold(self._count_hold)
            before()

        gen._before_pass, gen._chunk_args = gate, chunk_args

    def _count_hold(self) -> None:
        self.held += 1


class FakePending:
    """A chunk's frames that reach the host ``delay_s`` after they are made, as with decode on a second CUDA
    stream (which a CPU has not): ``done()`` asks, ``result()`` waits."""

    def __init__(self, frames: np.ndarray, delay_s: float) -> None:
        self.frames, self.count = frames, int(frames.shape[0])
        self.ready_at = time.monotonic() + delay_s
        self.waited = 0

    def done(self) -> bool:
        return time.monotonic() >= self.ready_at

    def result(self) -> np.ndarray:
        delay = self.ready_at - time.monotonic()
        if delay > 0:
            self.waited += 1
            time.sleep(delay)
        return self.frames


class PipelinedStandIn(SlowStandIn):
    """:class:`SlowStandIn` with the two hooks of the real generators that the engine's latency path uses:
    ``interrupt`` (checked before each of its steps, raising the generator's ChunkInterrupted: the index rolls
    back by the engine's restore) and ``start_chunk`` (frames handed back as :class:`FakePending`, ready
    ``decode_s`` later). Frames encode their generated index in pixel [0, 0, 0:2] (16 bits)."""

    def __init__(self, seconds_per_step: float = 0.0, decode_s: float = 0.0, **kw) -> None:
        super().__init__(seconds_per_step, **kw)
        self.decode_s = decode_s
        self.interrupt = None
        self.interrupted = 0
        self.pending: list[FakePending] = []

    def start_chunk(self, conditions, *, mouth=None, steps=None, chunk_frames=None) -> FakePending:
        from backend.model.generator import ChunkInterrupted

        steps = steps or 4
        for _ in range(steps):
            time.sleep(self.seconds_per_step)
            if self.interrupt is not None and self.interrupt():
                self.interrupted += 1
                raise ChunkInterrupted("interrupted")
        frames = SlowStandIn.next_chunk(self, conditions, mouth=mouth, steps=1, chunk_frames=chunk_frames)
        g0 = self.g - frames.shape[0]
        idx = g0 + np.arange(frames.shape[0])
        frames[:, 0, 0, 0], frames[:, 0, 0, 1] = idx % 256, idx // 256
        pending = FakePending(frames, self.decode_s)
        self.pending.append(pending)
        return pending

    def next_chunk(self, conditions, *, mouth=None, steps=None, chunk_frames=None) -> np.ndarray:
        return self.start_chunk(conditions, mouth=mouth, steps=steps, chunk_frames=chunk_frames).result()


def frames_digest(frames: list[np.ndarray]) -> str:
    """SHA-256 over the frames' bytes in order (computed here, independently of ``backend.replay``'s own)."""
    h = hashlib.sha256()
    for f in frames:
        h.update(np.ascontiguousarray(f).tobytes())
    return h.hexdigest()


@contextlib.asynccontextmanager
async def record_shown(engine: Any) -> AsyncIterator[list[np.ndarray]]:
    """A list that gets each newly shown frame of ``engine`` (a subscription without audio; a repeat is the same
    array: skipped) while the block runs; the recording task is stopped on the way out."""
    from backend.events import VideoFrame

    shown: list[np.ndarray] = []
    sub = engine.subscribe(audio=False, slot_frames=1024)  # now: no frame shown from here on is missed

    async def watch() -> None:
        last = None
        async for item in sub:
            if isinstance(item, VideoFrame) and item.rgba is not last:
                shown.append(item.rgba)
                last = item.rgba

    watcher = asyncio.create_task(watch())
    try:
        yield shown
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
