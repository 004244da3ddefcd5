"""Audio in: the microphone (sounddevice, imported lazily) or any PCM / wav, as async iterators of float32
16 kHz mono blocks - what :class:`~backend.voice.listener.VoiceListener` consumes.

Usage::

    async with Microphone(cfg.voice.input_device) as mic:
        await listener.run(mic)
    await listener.run(pcm_blocks(pcm, 48000, realtime=True))
    await listener.run(wav_blocks("speech.wav"))
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AudioDeviceError, MissingPackageError
from .resample import resample
from .tts import read_wav
from .vad import VAD_SAMPLE_RATE, VAD_WINDOW

__all__ = ["Microphone", "pcm_blocks", "wav_blocks"]

log = logging.getLogger(__name__)

_PORTAUDIO_HINT = ("it also needs the PortAudio library: apt install libportaudio2 (Debian/Ubuntu), "
                   "brew install portaudio (macOS)")


def _import_sounddevice() -> Any:
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: the module is there but libportaudio is not
        raise MissingPackageError("sounddevice", "listening to the microphone",
                                  f"{_PORTAUDIO_HINT}; import failed: {exc}") from exc
    return sounddevice


class Microphone:
    """The streamer's microphone as 16 kHz mono float32 blocks of ``block`` samples.

    PortAudio's callback thread hands blocks to the event loop through a bounded queue; when the consumer
    falls behind, the oldest blocks are dropped (``dropped`` counts them) - capture never blocks.
    """

    def __init__(self, device: str = "", *, block: int = VAD_WINDOW, queue_blocks: int = 256) -> None:
        self.device: int | str | None = int(device) if device.strip().isdigit() else (device.strip() or None)
        self.block, self.dropped = block, 0
        self._queue: collections.deque[np.ndarray] = collections.deque(maxlen=queue_blocks)
        self._ready = asyncio.Event()
        self._stream: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def __aenter__(self) -> Microphone:
        sd = _import_sounddevice()
        self._loop = asyncio.get_running_loop()
        try:
            self._stream = sd.InputStream(samplerate=VAD_SAMPLE_RATE, channels=1, dtype="float32",
                                          blocksize=self.block, device=self.device, callback=self._callback)
            self._stream.start()
        except Exception as exc:  # PortAudioError, ValueError (no such device) ...
            try:
                inputs = [f"{i}: {d['name']}" for i, d in enumerate(sd.query_devices())
                          if d.get("max_input_channels", 0) > 0]
            except Exception:  # the listing is only a hint
                inputs = []
            raise AudioDeviceError(f"cannot open microphone voice.input_device={self.device!r} at 16 kHz: {exc}; "
                                   f"input devices: {'; '.join(inputs) or 'none found'}") from exc
        log.info("microphone open device=%s", self.device if self.device is not None else "default")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        self._ready.set()
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
        if self.dropped:
            log.warning("microphone dropped blocks=%d", self.dropped)

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status:
            log.debug("microphone status=%s", status)
        block = np.array(indata[:, 0], dtype=np.float32)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._put, block)

    def _put(self, block: np.ndarray) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(block)
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[np.ndarray]:
        return self._blocks()

    async def _blocks(self) -> AsyncIterator[np.ndarray]:
        while not self._closed:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            yield self._queue.popleft()


async def pcm_blocks(pcm: np.ndarray, sample_rate: int, *, block: int = VAD_WINDOW * 4,
                     realtime: bool = False, lead_silence_s: float = 0.0,
                     tail_silence_s: float = 1.0) -> AsyncIterator[np.ndarray]:
    """Any PCM as 16 kHz blocks (resampled once). ``realtime`` paces blocks like a microphone (each block
    is yielded when its last sample would have been captured); otherwise they come as fast as consumed.
    Silence is added before/after so the VAD sees the speech end."""
    x = np.asarray(pcm, dtype=np.float32)
    x = x.mean(axis=1) if x.ndim == 2 else x.reshape(-1)
    if sample_rate != VAD_SAMPLE_RATE:
        x = resample(x, sample_rate, VAD_SAMPLE_RATE)
    x = np.concatenate([np.zeros(int(lead_silence_s * VAD_SAMPLE_RATE), np.float32), x,
                        np.zeros(int(tail_silence_s * VAD_SAMPLE_RATE), np.float32)])
    t0 = time.monotonic()
    for start in range(0, len(x), block):
        chunk = x[start:start + block]
        if realtime:
            delay = t0 + (start + len(chunk)) / VAD_SAMPLE_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
        yield chunk


async def wav_blocks(path: str | Path, **kwargs: Any) -> AsyncIterator[np.ndarray]:
    """A PCM wav file as 16 kHz blocks (see :func:`pcm_blocks` for the options)."""
    pcm, sr = read_wav(Path(path))
    async for chunk in pcm_blocks(pcm, sr, **kwargs):
        yield chunk
