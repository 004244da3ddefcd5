"""Fan-out of the engine's output: one :class:`Subscription` per consumer.

Video goes through ONE bounded slot per subscriber that keeps only the newest frame(s): a slow
subscriber loses frames (``dropped_frames``) and never stalls the engine or the others. Audio gets its
own bounded queue so a slow subscriber does not lose speech; only if that overflows is the oldest chunk
dropped (``dropped_audio``). Publishing never awaits.

Usage::

    sub = broadcaster.subscribe()
    async for item in sub:          # VideoFrame or AudioChunk, audio first when both wait
        ...
    sub.close()                     # or broadcaster.close() ends every iteration
"""

from __future__ import annotations

import asyncio
import collections

from backend.events import AudioChunk, VideoFrame

__all__ = ["Broadcaster", "Subscription"]


class Subscription:
    """An async iterator of the newest video frames and every audio chunk (see module docstring)."""

    def __init__(self, owner: Broadcaster | None, *, video: bool = True, audio: bool = True,
                 slot_frames: int = 1, audio_chunks: int = 512) -> None:
        if slot_frames < 1 or audio_chunks < 1:
            raise ValueError("slot_frames and audio_chunks must be >= 1")
        self._owner = owner
        self.video, self.audio = video, audio
        self._frames: collections.deque[VideoFrame] = collections.deque(maxlen=slot_frames)
        self._audio: collections.deque[AudioChunk] = collections.deque(maxlen=audio_chunks)
        self._ready = asyncio.Event()
        self.closed = False
        self.received_frames = 0
        self.dropped_frames = 0
        self.dropped_audio = 0

    def push_frame(self, frame: VideoFrame) -> None:
        if self.closed or not self.video:
            return
        if len(self._frames) == self._frames.maxlen:
            self.dropped_frames += 1
        self._frames.append(frame)
        self.received_frames += 1
        self._ready.set()

    def push_audio(self, chunk: AudioChunk) -> None:
        if self.closed or not self.audio:
            return
        if len(self._audio) == self._audio.maxlen:
            self.dropped_audio += 1
        self._audio.append(chunk)
        self._ready.set()

    @property
    def pending(self) -> int:
        return len(self._frames) + len(self._audio)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._ready.set()
            if self._owner is not None:
                self._owner.discard(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> VideoFrame | AudioChunk:
        while True:
            if self._audio:
                return self._audio.popleft()
            if self._frames:
                return self._frames.popleft()
            if self.closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()

    def get_nowait(self) -> VideoFrame | AudioChunk | None:
        if self._audio:
            return self._audio.popleft()
        if self._frames:
            return self._frames.popleft()
        return None


class Broadcaster:
    """The set of live subscriptions."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def subscribe(self, **kwargs: object) -> Subscription:
        sub = Subscription(self, **kwargs)  # type: ignore[arg-type]
        self._subs.add(sub)
        return sub

    def discard(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def __len__(self) -> int:
        return len(self._subs)

    def publish_frame(self, frame: VideoFrame) -> None:
        for sub in tuple(self._subs):
            sub.push_frame(frame)

    def publish_audio(self, chunk: AudioChunk) -> None:
        for sub in tuple(self._subs):
            sub.push_audio(chunk)

    def close(self) -> None:
        for sub in tuple(self._subs):
            sub.close()
