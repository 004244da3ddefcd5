"""The streaming segmenter: utterances cut at silence, padded, short blips dropped, long speech split;
the same result whatever the block sizes; and the real Silero VAD finds real (piper) speech."""

from __future__ import annotations

import numpy as np
import pytest

from backend.voice.segmenter import Segmenter, SegmenterOptions
from backend.voice.vad import VAD_WINDOW

SR = 16000


def energy_probs(audio: np.ndarray) -> np.ndarray:
    """A deterministic stand-in for a VAD: speech wherever a window is loud (for exact boundaries)."""
    rms = np.sqrt(np.mean(audio.reshape(-1, VAD_WINDOW) ** 2, axis=1))
    return (rms > 0.01).astype(np.float32)


def track(*parts: tuple[str, float]) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = []
    for kind, seconds in parts:
        n = int(seconds * SR)
        out.append(0.3 * rng.standard_normal(n).astype(np.float32) if kind == "s" else np.zeros(n, np.float32))
    return np.concatenate(out)


def run(seg: Segmenter, audio: np.ndarray, block: int = 1000) -> list:
    utts = []
    for i in range(0, len(audio), block):
        utts += seg.feed(audio[i:i + block])
    return utts + seg.flush()


def test_one_utterance_cut_after_silence_with_padding() -> None:
    seg = Segmenter(energy_probs, SegmenterOptions(min_silence_duration_ms=500, speech_pad_ms=200))
    (utt,) = run(seg, track(("q", 1.024), ("s", 1.024), ("q", 1.5)))
    assert utt.reason == "silence"
    assert utt.start_s == pytest.approx(1.024, abs=0.033)
    assert utt.end_s == pytest.approx(2.048, abs=0.033)
    assert utt.cut_s - utt.end_s == pytest.approx(0.5, abs=0.033)  # waited min_silence, no more
    assert utt.duration_s == pytest.approx(1.024 + 2 * 0.2, abs=0.04)  # padded both sides
    loud = np.abs(utt.pcm) > 0
    assert not loud[: int(0.15 * SR)].any() and loud[int(0.25 * SR)] and not loud[-int(0.15 * SR):].any()


def test_short_gaps_join_long_gaps_split_and_blips_are_dropped() -> None:
    opts = SegmenterOptions(min_silence_duration_ms=500, min_speech_duration_ms=250)
    joined = run(Segmenter(energy_probs, opts), track(("q", 0.5), ("s", 0.6), ("q", 0.3), ("s", 0.6), ("q", 1)))
    assert len(joined) == 1 and joined[0].end_s - joined[0].start_s == pytest.approx(1.5, abs=0.07)
    split = run(Segmenter(energy_probs, opts), track(("q", 0.5), ("s", 0.6), ("q", 0.8), ("s", 0.6), ("q", 1)))
    assert len(split) == 2
    blip = run(Segmenter(energy_probs, opts), track(("q", 0.5), ("s", 0.1), ("q", 1)))
    assert blip == []


def test_long_speech_is_split_at_max_length_and_flush_ends_the_last() -> None:
    seg = Segmenter(energy_probs, SegmenterOptions(max_speech_duration_s=1.0))
    utts = run(seg, track(("q", 0.2), ("s", 2.5)))
    assert [u.reason for u in utts] == ["max_length", "max_length", "flush"]
    assert all(u.end_s - u.start_s <= 1.0 + VAD_WINDOW / SR for u in utts)  # whole windows
    assert not seg.in_speech


def test_block_size_does_not_change_the_result() -> None:
    audio = track(("q", 0.7), ("s", 0.8), ("q", 0.9), ("s", 0.5), ("q", 0.8))
    ref = [(u.start_s, u.end_s, len(u.pcm)) for u in run(Segmenter(energy_probs), audio, block=len(audio))]
    for block in (100, 512, 777, 4096):
        got = [(u.start_s, u.end_s, len(u.pcm)) for u in run(Segmenter(energy_probs), audio, block=block)]
        assert got == ref
    assert len(ref) == 2


def test_probability_function_must_answer_every_window() -> None:
    seg = Segmenter(lambda a: np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="2 windows"):
        seg.feed(np.zeros(2 * VAD_WINDOW, np.float32))


def test_from_faster_whisper_vad_options() -> None:
    pytest.importorskip("faster_whisper")
    from faster_whisper.vad import VadOptions

    opts = SegmenterOptions.from_vad_options(VadOptions(threshold=0.6, min_silence_duration_ms=300))
    assert (opts.threshold, opts.min_silence_duration_ms, opts.low) == (0.6, 300, pytest.approx(0.45))


def test_silero_vad_finds_real_speech(speech) -> None:
    from backend.voice.vad import SileroVad

    a, b = speech("Idol, wave to chat."), speech("I really like this game.")
    gap = np.zeros(SR, np.float32)
    audio = np.concatenate([gap[: SR // 2], a, gap, b, gap])
    utts = run(Segmenter(SileroVad()), audio, block=2048)
    assert len(utts) == 2
    first_end = 0.5 + len(a) / SR
    second_start = first_end + 1.0
    assert utts[0].start_s == pytest.approx(0.5, abs=0.3) and utts[0].end_s == pytest.approx(first_end, abs=0.3)
    assert utts[1].start_s == pytest.approx(second_start, abs=0.3)
    assert all(u.reason == "silence" for u in utts)
    quiet = run(Segmenter(SileroVad()), np.zeros(2 * SR, np.float32) + 1e-4)
    assert quiet == []
