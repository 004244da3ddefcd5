"""Voice in `serve`: the idol keeps speaking when the microphone cannot work, push-to-talk can be pressed over
/control, and `say` speaks sentence by sentence.

Real parts: the real server on loopback, the real engine with the real tiny generator, real websockets
clients, real espeak-ng speech through ``IdolVoice``, and this machine's real missing PortAudio where a test
says so. The one thing injected: a gate inside the TTS callable that holds the second sentence's synthesis
until the test has seen the first sentence's audio, so "before" does not depend on this machine's speed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import shutil
import threading

import numpy as np
import pytest

from backend.config import Config, EngineConfig, ServerConfig, VoiceConfig
from backend.engine import Engine
from backend.events import AudioChunk, Command, CommandKind
from backend.server import Server
from backend.voice.sentences import split_sentences
from backend.voice.service import SpokenCommands, build_voice
from backend.voice.tts import EspeakSynthesizer, IdolVoice
from tests.server.server_helpers import FPS, TOKEN, control, real_generator

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
DEADLINE_S = 30.0


def portaudio_missing() -> bool:
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        return True
    return False


@pytest.fixture(scope="module")
def gen():
    return real_generator()


async def test_ptt_control_command_presses_and_releases_push_to_talk(gen) -> None:
    spoken = SpokenCommands(VoiceConfig(push_to_talk=True))  # what the app hands the server under --voice
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), gen, None, max_steps=2, max_chunk_frames=1)
    async with engine, Server(ServerConfig(host="127.0.0.1", port=0), engine, token=TOKEN) as server:
        ws = await control(server.url)
        try:
            await ws.send(json.dumps({"type": "ptt", "held": True, "id": "p1"}))
            reply = json.loads(await ws.recv())
            assert (reply["type"], reply["code"]) == ("error", "unavailable") and "--voice" in reply["message"]
            server.push_to_talk = spoken.set_push_to_talk
            await ws.send(json.dumps({"type": "ptt", "held": True, "id": "p2"}))
            reply = json.loads(await ws.recv())
            assert (reply["type"], reply["id"]) == ("ok", "p2") and spoken.held
            await ws.send(json.dumps({"type": "ptt", "held": False, "id": "p3"}))
            reply = json.loads(await ws.recv())
            assert (reply["type"], reply["id"]) == ("ok", "p3") and not spoken.held
            await ws.send(json.dumps({"type": "ptt", "held": "yes"}))
            reply = json.loads(await ws.recv())
            assert (reply["type"], reply["code"]) == ("error", "bad_message") and "held" in reply["message"]
        finally:
            await ws.close()


@needs_espeak
@pytest.mark.skipif(not portaudio_missing(), reason="this machine has PortAudio: the missing case cannot be run")
async def test_serve_voice_without_portaudio_keeps_speaking(tmp_path, caplog) -> None:
    """`serve --voice` on this machine (PortAudio is missing here for real): a warning, then `say` works."""
    from backend.app import generator_loading, run_backend
    from tests.model.model_kit import micro_config

    cfg = dataclasses.replace(Config(), model=micro_config(), engine=EngineConfig(fps=20.0, lookahead_frames=8),
                              server=ServerConfig(host="127.0.0.1", port=0, token_file=str(tmp_path / "token")),
                              voice=VoiceConfig(enabled=True, tts_engine="espeak"))
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    stop = asyncio.Event()
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    with caplog.at_level(logging.WARNING, logger="backend.voice.service"):
        task = asyncio.create_task(run_backend(cfg, generator_loading(cfg), None, None, stop=stop,
                                               ready=ready.set_result))
        try:
            async with asyncio.timeout(DEADLINE_S):
                server = await ready
                await server.engine.wait_loaded()
                while server.engine.tts is None:
                    assert not task.done(), task.exception()
                    await asyncio.sleep(0.05)
            ws = await control(server.url)
            await ws.send(json.dumps({"type": "command", "kind": "say", "argument": "Hello everyone.", "id": "s"}))
            reply = json.loads(await ws.recv())
            assert (reply["type"], reply["id"]) == ("ok", "s"), reply
            await ws.send(json.dumps({"type": "ptt", "held": True}))
            assert json.loads(await ws.recv())["code"] == "unavailable"  # nobody listens: said so, not a crash
            await ws.close()
            assert not task.done()
        finally:
            stop.set()
            async with asyncio.timeout(DEADLINE_S):
                await task
    assert any("speaking only" in r.getMessage() and "PortAudio" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(not portaudio_missing(), reason="this machine has PortAudio: the missing case cannot be run")
def test_build_voice_without_portaudio_returns_the_voice_and_no_listener(caplog) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    with caplog.at_level(logging.WARNING, logger="backend.voice.service"):
        voice, spoken = build_voice(VoiceConfig(tts_engine="espeak"), None)
    assert spoken is None and voice("hi")[0].size > 0
    assert "libportaudio2" in caplog.text


@pytest.mark.skipif(not portaudio_missing(), reason="this machine has PortAudio: the missing case cannot be run")
async def test_listening_without_a_microphone_is_a_warning_not_the_end(whisper_dir, caplog) -> None:
    heard: list[str] = []

    async def on_command(text: str) -> None:
        heard.append(text)

    spoken = SpokenCommands(VoiceConfig(asr_model=str(whisper_dir)))
    spoken.set_push_to_talk(True)  # before listening: kept for the listener
    with caplog.at_level(logging.WARNING, logger="backend.voice.service"):
        async with asyncio.timeout(DEADLINE_S):
            await spoken(on_command)  # returns (PortAudio is missing here) instead of raising
    assert "not listening to the microphone" in caplog.text and heard == []


class GatedVoice:
    """``IdolVoice`` (real espeak-ng) whose sentences after the first wait for ``gate``; records each call."""

    def __init__(self) -> None:
        self.voice = IdolVoice(EspeakSynthesizer(), sample_rate=16000)
        self.gate = threading.Event()
        self.calls: list[str] = []
        self.finished: list[str] = []

    def prepare(self, text: str) -> str:
        return self.voice.prepare(text)

    def __call__(self, text: str) -> tuple[np.ndarray, int]:
        self.calls.append(text)
        if len(self.calls) > 1:
            assert self.gate.wait(DEADLINE_S), "the test never opened the gate"
        out = self.voice(text)
        self.finished.append(text)
        return out


@needs_espeak
async def test_say_starts_speaking_after_the_first_sentence(gen) -> None:
    text = "Hello everyone, welcome back. Today we will play a new game together."
    assert split_sentences(text) == ["Hello everyone, welcome back.", "Today we will play a new game together."]
    tts = GatedVoice()
    engine = Engine(EngineConfig(fps=FPS, lookahead_frames=8), gen, None, max_steps=2, max_chunk_frames=1,
                    sample_rate=16000, tts=tts)
    async with engine:
        sub = engine.subscribe(video=False)
        await asyncio.wait_for(engine.wait_started(), 60)
        ticket = await engine.submit(Command(CommandKind.SAY, text))
        chunks: list[AudioChunk] = []
        async with asyncio.timeout(DEADLINE_S):
            while not chunks:
                item = await anext(sub)
                if isinstance(item, AudioChunk):
                    chunks.append(item)
        # the first sound plays while the second sentence is still being synthesized (held at the gate)
        assert tts.finished == ["Hello everyone, welcome back."] and len(tts.calls) == 2
        assert await ticket.shown is not None
        first_len = engine.session.speech.pcm.shape[0]
        tts.gate.set()
        async with asyncio.timeout(DEADLINE_S):
            while engine.status()["speaking"] or len(tts.finished) < 2:
                item = await anext(sub)
                if isinstance(item, AudioChunk):
                    chunks.append(item)
    spoken = sum(c.pcm.shape[0] for c in chunks) / 16000
    assert tts.finished == split_sentences(text)
    assert spoken > first_len / 16000 + 1.0  # the second sentence was spoken too
    pts = [c.pts for c in chunks]
    assert pts == sorted(pts) and all(b - a < 0.1 for a, b in itertools.pairwise(pts))  # one speech, no gap
    assert {c.sample_rate for c in chunks} == {16000}
