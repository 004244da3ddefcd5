"""The streamer speaks, the idol obeys: audio blocks -> VAD utterances -> whisper -> wake phrase -> command.

Two tasks inside :meth:`VoiceListener.run`: the *segmenter* loop feeds each 16 kHz block to the
:class:`~backend.voice.segmenter.Segmenter` and puts finished utterances on a small bounded queue (the
oldest is dropped when transcription falls behind); the *transcriber* loop runs whisper in a helper thread,
asks the :class:`~backend.voice.wake.CommandGate` whether it is a command, and awaits ``on_command(text)``
(the app passes ``lambda text: director.handle_streamer(text, source="voice")``).

Latency, end of speech -> command handled, is measured for every command (:attr:`VoiceListener.heard`,
:meth:`VoiceListener.stats`, and logged). The end of speech is placed on the wall clock from the block that
contained it, assuming the source delivers blocks as they are captured (true for the microphone and for
``pcm_blocks(..., realtime=True)``); it includes the VAD's silence wait.

Usage::

    listener = VoiceListener.from_config(cfg.voice, lambda t: director.handle_streamer(t, source="voice"))
    async with Microphone(cfg.voice.input_device) as mic:
        await listener.run(mic)                # until cancelled or the source ends
    listener.set_push_to_talk(True / False)    # the control command 'ptt'
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from backend.config import VoiceConfig

from .segmenter import Segmenter, SegmenterOptions, Utterance
from .vad import VAD_SAMPLE_RATE, SileroVad
from .wake import CommandGate

__all__ = ["Heard", "SpeechToText", "VoiceListener"]

log = logging.getLogger(__name__)

OnCommand = Callable[[str], Awaitable[object]]


class SpeechToText(Protocol):
    """What the listener needs from :class:`~backend.voice.asr.Transcriber`."""

    def transcribe(self, pcm: np.ndarray) -> Any: ...  # -> object with .text


@dataclass(frozen=True)
class Heard:
    """One utterance and what became of it."""

    text: str  # the transcript
    command: str | None  # what went to on_command; None = chatter (no wake phrase, or ptt released)
    start_s: float  # stream seconds
    end_s: float
    vad_wait_s: float  # silence the segmenter waited for before cutting
    transcribe_s: float
    latency_s: float  # end of speech -> on_command returned (or -> decided not a command)
    result: object = None  # what on_command returned (e.g. the director's Decision), or the exception


@dataclass
class _Job:
    utterance: Utterance
    speech_end_wall: float
    while_held: bool


class VoiceListener:
    """See the module docstring. ``run`` may be called again after it returned (a new source)."""

    def __init__(self, on_command: OnCommand, transcriber: SpeechToText, *, gate: CommandGate | None = None,
                 segmenter: Segmenter | None = None, queue_size: int = 4, history: int = 64,
                 clock: Callable[[], float] = time.monotonic,
                 on_heard: Callable[[Heard], Awaitable[object]] | None = None) -> None:
        self.on_command, self.transcriber = on_command, transcriber
        self.on_heard = on_heard  # every utterance, command or chatter (the mood listens to all of it)
        self.gate = gate or CommandGate()
        self.segmenter = segmenter or Segmenter(SileroVad())
        self.heard: collections.deque[Heard] = collections.deque(maxlen=history)
        self.dropped = 0
        self._clock = clock
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=queue_size)
        self._fed_wall = 0.0  # wall time the last block arrived
        self._fed_end = 0  # stream sample just after the last block
        self._running = False  # utterances are queued only while run() is feeding the worker

    @classmethod
    def from_config(cls, cfg: VoiceConfig, on_command: OnCommand, *, transcriber: SpeechToText | None = None,
                    vad_options: object = None, **kwargs: Any) -> VoiceListener:
        """Builds the whisper :class:`~backend.voice.asr.Transcriber` (unless given) and the Silero segmenter;
        ``vad_options``: a faster_whisper ``VadOptions`` (default: :class:`SegmenterOptions`)."""
        if transcriber is None:
            from .asr import Transcriber

            transcriber = Transcriber.from_config(cfg)
        opts = SegmenterOptions.from_vad_options(vad_options) if vad_options is not None else None
        kwargs.setdefault("segmenter", Segmenter(SileroVad(), opts))
        gate = CommandGate(cfg.wake_phrase, cfg.push_to_talk)
        return cls(on_command, transcriber, gate=gate, **kwargs)

    # ------------------------------------------------------------------------- controls

    def set_push_to_talk(self, held: bool) -> None:
        """Push-to-talk pressed / released. Releasing ends the utterance in progress at once."""
        was, self.gate.held = self.gate.held, bool(held)
        if was and not held:
            for utt in self.segmenter.flush():
                if self._running:
                    self._enqueue(utt, while_held=True)
        log.debug("push_to_talk held=%s", held)

    def stats(self) -> dict[str, Any]:
        """Counts and latency figures (seconds) of the recent commands."""
        lat = sorted(h.latency_s for h in self.heard if h.command is not None)
        return {
            "utterances": len(self.heard),
            "commands": len(lat),
            "dropped": self.dropped,
            "latency_last_s": round(next((h.latency_s for h in reversed(self.heard) if h.command), 0.0), 3),
            "latency_p50_s": round(lat[len(lat) // 2], 3) if lat else None,
            "latency_max_s": round(lat[-1], 3) if lat else None,
        }

    # ------------------------------------------------------------------------- run

    async def run(self, source: AsyncIterable[np.ndarray]) -> None:
        """Listen to ``source`` (float32 16 kHz blocks) until it ends (then the last utterance is finished
        and handled) or the task is cancelled."""
        if self._running:
            raise RuntimeError("VoiceListener.run: already running")
        try:
            async with asyncio.TaskGroup() as tg:  # on error or cancel, the worker is cancelled too
                self._running = True
                tg.create_task(self._transcribe_loop(), name="voice-transcribe")
                await self._segment_loop(source)
                for utt in self.segmenter.flush():
                    self._enqueue(utt, while_held=self.gate.held)
                self._running = False
                await self._queue.put(None)  # the worker stops after the queued utterances
        finally:
            self._running = False

    async def _segment_loop(self, source: AsyncIterable[np.ndarray]) -> None:
        async for block in source:
            block = np.asarray(block, dtype=np.float32).reshape(-1)
            if not self.gate.listening:
                continue
            self._fed_wall = self._clock()
            self._fed_end = self.segmenter.samples_received + len(block)
            for utt in self.segmenter.feed(block):
                self._enqueue(utt, while_held=self.gate.held)

    def _enqueue(self, utt: Utterance, *, while_held: bool) -> None:
        lag = (self._fed_end - utt.end_s * VAD_SAMPLE_RATE) / VAD_SAMPLE_RATE
        job = _Job(utt, self._fed_wall - max(lag, 0.0), while_held)
        if self._queue.full():
            old = self._queue.get_nowait()
            self.dropped += 1
            log.warning("voice queue full: dropped utterance start_s=%.2f", old.utterance.start_s if old else -1)
        self._queue.put_nowait(job)
        log.debug("utterance start_s=%.2f end_s=%.2f reason=%s", utt.start_s, utt.end_s, utt.reason)

    async def _transcribe_loop(self) -> None:
        while (job := await self._queue.get()) is not None:
            await self._handle(job)

    async def _handle(self, job: _Job) -> None:
        utt = job.utterance
        t0 = self._clock()
        try:
            transcript = await asyncio.to_thread(self.transcriber.transcribe, utt.pcm)
        except Exception as exc:  # a broken utterance must not stop listening
            log.error("transcription failed start_s=%.2f error=%s", utt.start_s, exc)
            return
        text = str(getattr(transcript, "text", transcript)).strip()
        took = self._clock() - t0
        command = self.gate.command(text, spoken_while_held=job.while_held)
        result: object = None
        if command is not None:
            try:
                result = await self.on_command(command)
            except Exception as exc:  # the director refusing loudly must not stop listening
                log.error("voice command failed command=%r error=%s", command, exc)
                result = exc
        latency = self._clock() - job.speech_end_wall
        heard = Heard(text, command, utt.start_s, utt.end_s, utt.cut_s - utt.end_s, took, latency, result)
        self.heard.append(heard)
        if self.on_heard is not None:
            try:
                await self.on_heard(heard)
            except Exception as exc:  # a listener of transcripts must not stop listening
                log.error("voice on_heard failed error=%s", exc)
        if command is None:
            log.info("voice heard chatter text=%r transcribe_s=%.2f", text, took)
        else:
            log.info("voice command=%r latency_s=%.2f vad_wait_s=%.2f transcribe_s=%.2f", command, latency,
                     heard.vad_wait_s, took)
