"""Cutting a live 16 kHz audio stream into utterances (sans-I/O: samples in, utterances out, no clock).

Per 512-sample window (32 ms) a speech probability (from :class:`~backend.voice.vad.SileroVad`, or any
callable) drives a hysteresis like faster-whisper's ``get_speech_timestamps``: speech starts at
``threshold``; while in speech, a window at or above ``neg_threshold`` still counts as speech; the utterance
is cut once speech has been absent for ``min_silence_duration_ms``, padded by ``speech_pad_ms`` both sides.
Utterances shorter than ``min_speech_duration_ms`` are dropped; longer than ``max_speech_duration_s`` are
cut there. The thresholds come from faster-whisper's :class:`~faster_whisper.vad.VadOptions`.

Usage::

    seg = Segmenter(SileroVad())
    for block in blocks:                      # float32 16 kHz, any block size
        for utt in seg.feed(block): ...       # Utterance(pcm, start_s, end_s, cut_s, reason)
    tail = seg.flush()                        # end of stream, or push-to-talk released
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .vad import VAD_SAMPLE_RATE, VAD_WINDOW

__all__ = ["Segmenter", "SegmenterOptions", "Utterance"]

ProbabilityFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SegmenterOptions:
    """The subset of faster-whisper's VadOptions used here, with command-friendly defaults
    (faster-whisper's own: 2000 ms silence, 400 ms pad - too slow for a spoken command)."""

    threshold: float = 0.5
    neg_threshold: float | None = None  # None: threshold - 0.15, as faster-whisper
    min_speech_duration_ms: int = 250
    max_speech_duration_s: float = 15.0
    min_silence_duration_ms: int = 500
    speech_pad_ms: int = 200

    @classmethod
    def from_vad_options(cls, opts: object) -> SegmenterOptions:
        """From a ``faster_whisper.vad.VadOptions`` (or anything with the same attributes)."""
        names = [f for f in cls.__dataclass_fields__]
        return cls(**{n: getattr(opts, n) for n in names if getattr(opts, n, None) is not None})

    @property
    def low(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


@dataclass(frozen=True)
class Utterance:
    """One stretch of speech. Times are stream seconds (samples fed / 16000)."""

    pcm: np.ndarray = field(repr=False)  # (samples,) float32 at 16 kHz, padded
    start_s: float  # speech start (before padding)
    end_s: float  # end of speech (last speech window's end, before padding)
    cut_s: float  # stream time at which the cut was decided (end_s + silence, or the flush)
    reason: str  # "silence", "max_length", "flush"

    @property
    def duration_s(self) -> float:
        return self.pcm.shape[0] / VAD_SAMPLE_RATE


class Segmenter:
    """Streaming utterance cutter; see the module docstring."""

    sample_rate = VAD_SAMPLE_RATE

    def __init__(self, probabilities: ProbabilityFn, options: SegmenterOptions | None = None) -> None:
        self.options = options or SegmenterOptions()
        self._probs = probabilities
        o, sr = self.options, VAD_SAMPLE_RATE
        self._pad = int(o.speech_pad_ms * sr / 1000)
        self._min_silence = int(o.min_silence_duration_ms * sr / 1000)
        self._min_speech = int(o.min_speech_duration_ms * sr / 1000)
        self._max_len = int(o.max_speech_duration_s * sr)
        self._history: collections.deque[np.ndarray] = collections.deque(maxlen=max(1, math.ceil(self._pad / VAD_WINDOW)))
        self.reset()

    def reset(self) -> None:
        """Forget everything (the stream clock restarts at 0)."""
        self._pending = np.zeros(0, dtype=np.float32)
        self._history.clear()
        self._chunks: list[np.ndarray] = []
        self._chunks_start = 0  # stream sample of self._chunks[0][0]
        self._speech_start: int | None = None  # stream sample; None = not in speech
        self._speech_end = 0  # stream sample just after the last speech window
        self.samples_fed = 0  # stream samples scored so far (whole windows)
        reset = getattr(self._probs, "reset", None)
        if callable(reset):
            reset()

    @property
    def in_speech(self) -> bool:
        return self._speech_start is not None

    @property
    def samples_received(self) -> int:
        """Stream samples taken so far (scored ones plus the partial window waiting)."""
        return self.samples_fed + len(self._pending)

    @property
    def time_s(self) -> float:
        return self.samples_fed / VAD_SAMPLE_RATE

    def feed(self, block: np.ndarray) -> list[Utterance]:
        """Take float32 16 kHz samples; return the utterances that ended in them."""
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        audio = np.concatenate([self._pending, block]) if len(self._pending) else block
        n = len(audio) // VAD_WINDOW
        self._pending = audio[n * VAD_WINDOW:].copy()
        if n == 0:
            return []
        windows = audio[:n * VAD_WINDOW]
        probs = np.asarray(self._probs(windows), dtype=np.float32).reshape(-1)
        if len(probs) != n:
            raise ValueError(f"segmenter: probability function gave {len(probs)} values for {n} windows")
        out: list[Utterance] = []
        for i in range(n):
            utt = self._step(windows[i * VAD_WINDOW:(i + 1) * VAD_WINDOW], float(probs[i]))
            if utt is not None:
                out.append(utt)
        return out

    def flush(self) -> list[Utterance]:
        """End of input (or push-to-talk released): the utterance in progress, if any, ends now."""
        out = []
        if self._speech_start is not None:
            utt = self._cut(self.samples_fed, "flush")
            if utt is not None:
                out.append(utt)
        self._pending = np.zeros(0, dtype=np.float32)
        self._history.clear()
        return out

    # ------------------------------------------------------------------------- internals

    def _step(self, window: np.ndarray, p: float) -> Utterance | None:
        start = self.samples_fed
        self.samples_fed += VAD_WINDOW
        o = self.options
        if self._speech_start is None:
            if p >= o.threshold:
                pre = list(self._history)
                self._chunks = [*pre, window]
                self._chunks_start = start - VAD_WINDOW * len(pre)
                self._speech_start = start
                self._speech_end = self.samples_fed
            self._history.append(window)
            return None
        self._chunks.append(window)
        self._history.append(window)
        if p >= o.low:
            self._speech_end = self.samples_fed
        if self.samples_fed - self._speech_start >= self._max_len:
            utt = self._cut(self.samples_fed, "max_length")
            self._speech_start, self._speech_end = self.samples_fed, self.samples_fed
            self._chunks, self._chunks_start = [], self.samples_fed
            return utt
        if self.samples_fed - self._speech_end >= self._min_silence:
            return self._cut(self.samples_fed, "silence")
        return None

    def _cut(self, now: int, reason: str) -> Utterance | None:
        assert self._speech_start is not None
        start, end = self._speech_start, min(self._speech_end, now)
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        lo = max(start - self._pad, self._chunks_start) - self._chunks_start
        hi = min(end + self._pad, now) - self._chunks_start
        self._speech_start, self._chunks = None, []
        if end - start < self._min_speech:
            return None
        return Utterance(audio[lo:hi].copy(), start / VAD_SAMPLE_RATE, end / VAD_SAMPLE_RATE,
                         now / VAD_SAMPLE_RATE, reason)
