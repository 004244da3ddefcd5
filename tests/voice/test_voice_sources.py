"""Audio sources: the microphone's clear error when sounddevice/PortAudio is missing (no microphone
exists on the CI machine, so only the error path runs here), and PCM / wav sources as 16 kHz blocks."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time

import numpy as np
import pytest

from backend.voice.errors import MissingPackageError
from backend.voice.sources import Microphone, pcm_blocks, wav_blocks


async def test_microphone_without_sounddevice_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # as if not installed
    with pytest.raises(MissingPackageError, match=r"pip install sounddevice.*libportaudio2"):
        async with Microphone("2"):
            pass


def test_microphone_device_parsing() -> None:
    assert Microphone("").device is None
    assert Microphone(" 3 ").device == 3
    assert Microphone("USB Mic").device == "USB Mic"


async def test_pcm_blocks_resample_pad_and_pace() -> None:
    pcm = np.full(24000, 0.5, np.float32)  # 0.5 s at 48 kHz
    blocks = [b async for b in pcm_blocks(pcm, 48000, block=1000, lead_silence_s=0.1, tail_silence_s=0.2)]
    audio = np.concatenate(blocks)
    assert all(b.dtype == np.float32 for b in blocks) and max(len(b) for b in blocks) == 1000
    assert len(audio) == 1600 + 8000 + 3200
    assert np.abs(audio[:1500]).max() == 0 and np.abs(audio[-3100:]).max() == 0
    assert audio[4000] == pytest.approx(0.5, abs=1e-3)
    t0 = time.monotonic()
    n = sum([len(b) async for b in pcm_blocks(pcm, 48000, realtime=True, tail_silence_s=0.0)])
    assert n == 8000 and time.monotonic() - t0 >= 0.45  # paced like a microphone


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
async def test_wav_file_source(tmp_path) -> None:
    wav = tmp_path / "hello.wav"
    proc = await asyncio.create_subprocess_exec("espeak-ng", "-w", str(wav), "hello there")
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    audio = np.concatenate([b async for b in wav_blocks(wav, tail_silence_s=0.0)])
    assert 0.5 < len(audio) / 16000 < 3.0 and np.abs(audio).max() > 0.1
