"""Streamer voice -> commands, end to end on real parts: piper speech, the real Silero VAD, the real
whisper-base model, the wake phrase and push-to-talk, and the real director's command sink."""

from __future__ import annotations

import numpy as np
import pytest

from backend.config import DirectorConfig, VoiceConfig
from backend.events import Command, CommandKind
from backend.voice.listener import VoiceListener
from backend.voice.sources import pcm_blocks

SR = 16000


def gap(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


class Recorder:
    def __init__(self, fail_first: bool = False) -> None:
        self.texts: list[str] = []
        self.fail_first = fail_first

    async def __call__(self, text: str) -> str:
        self.texts.append(text)
        if self.fail_first and len(self.texts) == 1:
            raise RuntimeError("director down")
        return f"ok:{text}"


async def test_spoken_commands_become_commands_and_chatter_does_not(speech, whisper) -> None:
    """Real time pacing, so the measured latency is the streamer's: end of speech -> command handled."""
    audio = np.concatenate([gap(0.3), speech("Idol, wave to chat."), gap(1.0), speech("I really like this game."),
                            gap(1.0), speech("Idol, look surprised.")])
    rec = Recorder()
    listener = VoiceListener.from_config(VoiceConfig(), rec, transcriber=whisper)
    await listener.run(pcm_blocks(audio, SR, realtime=True, tail_silence_s=0.8))
    assert rec.texts == ["wave to chat", "look surprised"]
    heard = list(listener.heard)
    assert [h.command for h in heard] == ["wave to chat", None, "look surprised"]
    assert "like this game" in heard[1].text.lower()
    assert heard[0].result == "ok:wave to chat"
    for h in heard:
        assert h.vad_wait_s == pytest.approx(0.5, abs=0.05)
        assert h.vad_wait_s + h.transcribe_s - 0.05 <= h.latency_s  # how fast: the README's measured figures
    stats = listener.stats()
    assert stats["commands"] == 2 and stats["dropped"] == 0
    assert stats["latency_last_s"] == pytest.approx(heard[2].latency_s, abs=1e-3)
    print(f"latency end-of-speech->command: {[round(h.latency_s, 2) for h in heard]} "
          f"(transcribe {[round(h.transcribe_s, 2) for h in heard]})")


async def test_voice_reaches_the_real_director(speech, whisper) -> None:
    from backend.director import Director

    sent: list[Command] = []

    async def sink(command: Command) -> None:
        sent.append(command)

    director = Director(DirectorConfig(), sink)
    listener = VoiceListener.from_config(VoiceConfig(), lambda t: director.handle_streamer(t, source="voice"),
                                         transcriber=whisper)
    audio = np.concatenate([gap(0.3), speech("Idol, look surprised.")])
    await listener.run(pcm_blocks(audio, SR))
    (heard,) = listener.heard
    assert heard.command is not None and "surprised" in heard.command.lower()
    assert sent and sent[0].kind is CommandKind.EMOTION and sent[0].argument == "surprised"
    assert sent[0].source == "voice"


async def test_push_to_talk_listens_only_while_held(speech, whisper) -> None:
    rec = Recorder()
    listener = VoiceListener.from_config(VoiceConfig(push_to_talk=True), rec, transcriber=whisper)

    async def source():
        async for block in pcm_blocks(np.concatenate([speech("Idol, wave to chat."), gap(0.3)]), SR):
            yield block  # key not held: never transcribed
        listener.set_push_to_talk(True)
        async for block in pcm_blocks(np.concatenate([gap(0.2), speech("Look surprised.")]), SR,
                                      tail_silence_s=0.0):
            yield block
        listener.set_push_to_talk(False)  # released right after speaking: the utterance ends now
        async for block in pcm_blocks(speech("Idol, wave to chat."), SR):
            yield block

    await listener.run(source())
    assert len(listener.heard) == 1
    assert [t.lower().rstrip(".") for t in rec.texts] == ["look surprised"]  # no wake phrase needed


async def test_a_failing_handler_does_not_stop_listening(speech, whisper) -> None:
    rec = Recorder(fail_first=True)
    listener = VoiceListener.from_config(VoiceConfig(wake_phrase=""), rec, transcriber=whisper)
    audio = np.concatenate([gap(0.3), speech("Wave to chat."), gap(0.8), speech("Look surprised.")])
    await listener.run(pcm_blocks(audio, SR))
    assert [t.lower() for t in rec.texts] == ["wave to chat", "look surprised"]
    first, second = listener.heard
    assert isinstance(first.result, RuntimeError) and second.result == "ok:" + rec.texts[1]
