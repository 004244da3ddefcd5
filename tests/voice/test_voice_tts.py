"""The idol's voice: real piper and espeak-ng speech as float32 mono at the configured rate, blocked words
refused or cleaned, clear errors for missing engines and voices, and the mouth following the speech."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from backend.config import VoiceConfig
from backend.voice.errors import (
    BlockedTextError,
    MissingPackageError,
    ModelNotFoundError,
    SynthesisError,
    VoiceError,
)
from backend.voice.lipsync import mouth_envelope
from backend.voice.tts import EspeakSynthesizer, IdolVoice, filter_blocked, make_synthesizer

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def assert_speech(pcm: np.ndarray, sr: int, rate: int, min_s: float = 0.4, max_s: float = 6.0) -> None:
    assert sr == rate
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert min_s < len(pcm) / sr < max_s
    assert 0.3 < np.abs(pcm).max() <= 0.9 + 1e-6  # audible, peak-normalised, never clipping
    assert np.isfinite(pcm).all()


async def test_piper_speaks_at_the_configured_rate(piper) -> None:
    voice = IdolVoice(piper, sample_rate=48000)
    pcm, sr = voice("Hello everyone, thanks for the raid!")
    assert_speech(pcm, sr, 48000, min_s=1.0)
    assert voice.last_synthesis_s > 0
    pcm2, sr2 = await voice.synthesize("Thank you!")  # the async form
    assert_speech(pcm2, sr2, 48000, max_s=len(pcm) / sr)


@needs_espeak
def test_espeak_speaks_and_resamples_from_its_22050() -> None:
    voice = IdolVoice.from_config(VoiceConfig(tts_engine="espeak", sample_rate=44100))
    assert voice.synth.name == "espeak"
    pcm, sr = voice("--help is not an option, just words")  # text goes through stdin: no option injection
    assert_speech(pcm, sr, 44100, min_s=1.0)


@needs_espeak
def test_auto_falls_back_to_espeak_when_the_piper_voice_is_missing(tmp_path) -> None:
    synth = make_synthesizer("auto", str(tmp_path / "missing.onnx"))
    assert synth.name == "espeak"


def test_missing_piper_voice_names_the_file_and_the_package(tmp_path) -> None:
    pytest.importorskip("piper")
    with pytest.raises(ModelNotFoundError, match=r"missing\.onnx"):
        make_synthesizer("piper", str(tmp_path / "missing.onnx"))
    onnx = tmp_path / "v.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match=r"v\.onnx\.json is missing"):
        make_synthesizer("piper", str(onnx))


def test_coqui_needs_a_speaker_sample_and_the_package(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"speaker sample \.wav"):
        make_synthesizer("coqui", str(tmp_path / "me.wav"))
    sample = tmp_path / "me.wav"
    sample.write_bytes(b"RIFF")
    try:
        import TTS  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("coqui-tts imports here; the missing-package error cannot be shown")
    with pytest.raises(MissingPackageError, match="pip install coqui-tts"):
        make_synthesizer("coqui", str(sample))


def test_missing_espeak_program_says_apt_install() -> None:
    with pytest.raises(MissingPackageError, match="apt install espeak-ng"):
        EspeakSynthesizer(executable="no-such-espeak-program")


def test_missing_piper_package_says_pip_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # as if piper-tts were not installed
    with pytest.raises(MissingPackageError, match="pip install piper-tts"):
        make_synthesizer("piper")


def test_blocked_words_refused_or_cleaned() -> None:
    words = ["badword", "Spam Link", "坏话"]
    with pytest.raises(BlockedTextError, match="1 blocked word"):
        filter_blocked("well BADWORD to you", words)
    assert filter_blocked("well BADWORD to you", words, mode="clean") == "well to you"
    assert filter_blocked("click this spam   link now", words, mode="clean") == "click this spam link now"
    assert filter_blocked("a spam link!", words, mode="clean") == "a !"
    assert filter_blocked("badwords and notbadword", words) == "badwords and notbadword"  # whole words only
    assert filter_blocked("你好坏话呀", words, mode="clean") == "你好呀"  # CJK: substrings
    assert filter_blocked("ｂａｄｗｏｒｄ", ["badword"], mode="clean") == ""  # full-width folded


class _Broken:
    name = "broken"

    def synthesize(self, text: str):
        raise RuntimeError("onnx exploded")


class _Silent:
    name = "silent"

    def synthesize(self, text: str):
        return np.zeros(0, np.float32), 22050


def test_voice_front_refuses_bad_text_and_reports_engine_failures() -> None:
    voice = IdolVoice(_Silent(), blocked_words=["badword"], max_chars=20)
    with pytest.raises(BlockedTextError):
        voice("say badword")
    with pytest.raises(VoiceError, match="empty"):
        voice(" \x00\n ")
    with pytest.raises(VoiceError, match="more than 20"):
        voice("x" * 21)
    with pytest.raises(SynthesisError, match="no usable audio"):
        voice("hello")
    with pytest.raises(SynthesisError, match=r"broken failed.*onnx exploded"):
        IdolVoice(_Broken())("hello")
    cleaning = IdolVoice(_Silent(), blocked_words=["badword"], on_blocked="clean")
    assert cleaning.prepare("hi badword there") == "hi there"


def test_mouth_follows_the_speech_envelope(piper) -> None:
    voice = IdolVoice(piper, sample_rate=48000)
    a, sr = voice("Hello everyone!")
    b, _ = voice("Thanks for the raid!")
    gap_s, fps = 1.0, 25.0
    pcm = np.concatenate([a, np.zeros(int(gap_s * sr), np.float32), b])
    mouth = mouth_envelope(pcm, sr, fps)
    assert mouth.shape == (int(np.ceil(len(pcm) * fps / sr)),) and mouth.dtype == np.float32
    first = mouth[: int(len(a) / sr * fps)]
    gap = mouth[int(len(a) / sr * fps) + 3: int((len(a) / sr + gap_s) * fps) - 1]  # after the release
    second = mouth[int((len(a) / sr + gap_s) * fps) + 1:]
    assert first.max() > 0.8 and second.max() > 0.8  # loud -> open
    assert (first > 0.5).mean() > 0.3 and (second > 0.5).mean() > 0.3  # open much of the time while talking
    assert gap.max() < 0.05  # silence -> closed
    assert len(gap) >= 20
