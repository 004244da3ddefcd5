"""Voice activity: faster-whisper's bundled Silero VAD (``silero_vad_v6.onnx``) as a streaming scorer.

:class:`SileroVad` turns 16 kHz audio, a whole number of 512-sample windows at a time, into one speech
probability per window. Each call re-feeds the previous window so the first new one gets its real
64-sample context (the model scores windows independently given that context).
"""

from __future__ import annotations

import numpy as np

from .errors import MissingPackageError

__all__ = ["VAD_SAMPLE_RATE", "VAD_WINDOW", "SileroVad"]

VAD_SAMPLE_RATE = 16000
VAD_WINDOW = 512  # samples per probability at 16 kHz (32 ms), as faster_whisper.vad uses


class SileroVad:
    """Callable: ``probs = vad(audio)``, ``audio`` (n * 512,) float32 at 16 kHz -> (n,) float32 in [0, 1]."""

    def __init__(self) -> None:
        try:
            from faster_whisper.vad import get_vad_model
        except ImportError as exc:
            raise MissingPackageError("faster-whisper", "voice activity detection (Silero VAD)") from exc
        self._model = get_vad_model()
        self._prev = np.zeros(VAD_WINDOW, dtype=np.float32)

    def reset(self) -> None:
        self._prev = np.zeros(VAD_WINDOW, dtype=np.float32)

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) % VAD_WINDOW:
            raise ValueError(f"SileroVad: {len(audio)} samples is not a multiple of {VAD_WINDOW}")
        if len(audio) == 0:
            return np.zeros(0, dtype=np.float32)
        probs = np.asarray(self._model(np.concatenate([self._prev, audio]))).reshape(-1)
        self._prev = audio[-VAD_WINDOW:].copy()
        return probs[1:].astype(np.float32)
