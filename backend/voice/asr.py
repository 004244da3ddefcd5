"""Speech to text: a faster-whisper model, loaded once, transcribing one utterance at a time.

Synchronous (the listener runs it in a helper thread). int8 on CPU, float16 on CUDA unless the config says
otherwise; the model directory comes from ``VoiceConfig.asr_model`` ('' = the offline whisper-base, see
:mod:`backend.voice.models`).

Usage::

    asr = Transcriber.from_config(cfg.voice)
    result = asr.transcribe(pcm_16k)   # Transcript(text="wave to chat", language="en", seconds=0.41)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.config import VoiceConfig

from .errors import MissingPackageError, ModelNotFoundError, VoiceError
from .models import resolve_asr_model
from .vad import VAD_SAMPLE_RATE

__all__ = ["Transcriber", "Transcript", "command_prompt", "pick_device"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    seconds: float  # wall time spent transcribing
    audio_s: float  # length of the audio


def pick_device(device: str = "auto", compute_type: str = "auto") -> tuple[str, str]:
    """('cuda' | 'cpu', compute type): 'auto' is CUDA when CTranslate2 sees a GPU; int8 on CPU, float16 on CUDA."""
    if device == "auto":
        try:
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        except ImportError:
            device = "cpu"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    return device, compute_type


def command_prompt(wake_phrase: str) -> str:
    """A decoder prompt of typical spoken commands. whisper-base hears a bare "idol" as "Ible" or "Hidle";
    with this prompt it writes "Idol, wave to chat." (measured on piper and espeak-ng speech)."""
    wake = wake_phrase.strip().capitalize()
    lines = ("wave to chat.", "look surprised.", "make a heart.", "say hello everyone.")
    return " ".join(f"{wake}, {line}" if wake else line.capitalize() for line in lines)


class Transcriber:
    """A loaded faster-whisper model. ``hotwords`` (e.g. the wake phrase) and ``prompt`` (e.g. a line of
    typical commands) nudge the decoder toward the streamer's vocabulary."""

    sample_rate = VAD_SAMPLE_RATE

    def __init__(self, model_dir: str | Path, *, device: str = "auto", compute_type: str = "auto",
                 language: str = "en", beam_size: int = 1, cpu_threads: int = 0, hotwords: str = "",
                 prompt: str = "") -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise MissingPackageError("faster-whisper", "speech recognition") from exc
        self.model_dir = resolve_asr_model(str(model_dir))
        self.device, self.compute_type = pick_device(device, compute_type)
        self.language = language or None
        self.beam_size, self.hotwords, self.prompt = beam_size, hotwords or None, prompt or None
        t0 = time.perf_counter()
        try:
            self._model = WhisperModel(str(self.model_dir), device=self.device, compute_type=self.compute_type,
                                       cpu_threads=cpu_threads)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelNotFoundError(f"could not load the whisper model in {self.model_dir} on {self.device} "
                                     f"({self.compute_type}): {exc}") from exc
        log.info("whisper loaded dir=%s device=%s compute=%s load_s=%.2f", self.model_dir, self.device,
                 self.compute_type, time.perf_counter() - t0)

    @classmethod
    def from_config(cls, cfg: VoiceConfig, **kwargs: object) -> Transcriber:
        """``prompt`` defaults to :func:`command_prompt` of the wake phrase (English only)."""
        kwargs.setdefault("hotwords", cfg.wake_phrase)
        if cfg.language in ("en", ""):
            kwargs.setdefault("prompt", command_prompt(cfg.wake_phrase))
        return cls(cfg.asr_model, compute_type=cfg.asr_compute_type, language=cfg.language,
                   **kwargs)  # type: ignore[arg-type]

    def transcribe(self, pcm: np.ndarray) -> Transcript:
        """Transcribe float32 mono 16 kHz audio (one utterance, up to 30 s)."""
        pcm = np.asarray(pcm, dtype=np.float32)
        if pcm.ndim != 1:
            raise VoiceError(f"transcribe: pcm must be (samples,) float32 at 16 kHz, got shape {pcm.shape}")
        t0 = time.perf_counter()
        segments, info = self._model.transcribe(
            pcm, language=self.language, beam_size=self.beam_size, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True, hotwords=self.hotwords,
            initial_prompt=self.prompt)
        text = " ".join(s.text.strip() for s in segments).strip()  # the generator does the work
        took = time.perf_counter() - t0
        log.debug("transcribed audio_s=%.2f took_s=%.3f text=%r", len(pcm) / self.sample_rate, took, text)
        return Transcript(text, info.language, took, len(pcm) / self.sample_rate)
