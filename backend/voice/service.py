"""Voice for `liveidol serve --voice`: the idol's TTS voice for the engine, and the streamer's microphone
listener that hands spoken commands to the director.

Usage::

    tts, listen = build_voice(cfg.voice, character, blocked_words=cfg.director.blocked_words)
    Engine(..., tts=tts)                                     # `say` commands are spoken with lips in sync
    tg.create_task(listen(director.handle_streamer))         # "idol, wave to chat" -> a streamer command
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from backend.config import VoiceConfig

__all__ = ["build_voice"]

log = logging.getLogger(__name__)

OnCommand = Callable[[str], Awaitable[Any]]


def build_voice(cfg: VoiceConfig, character: Any, *, blocked_words: Iterable[str] = ()
                ) -> tuple[Any, Callable[..., Coroutine[Any, Any, None]]]:
    """The TTS callable (sync, ``text -> (pcm float32 mono, sample_rate)``) and ``listen(on_command)``.

    Models are loaded here, before the stream starts, so a missing package or model fails at once with a
    clear :class:`backend.voice.errors.VoiceError` naming what to install or where to put it.
    """
    from backend.voice.errors import VoiceError
    from backend.voice.listener import VoiceListener
    from backend.voice.sources import Microphone, _import_sounddevice
    from backend.voice.tts import IdolVoice

    _import_sounddevice()  # fail before going live, with what to install, rather than mid-stream

    voice_path = character.resolve(character.voice) if character is not None and character.voice else None
    voice = IdolVoice.from_config(cfg, voice=str(voice_path or ""), blocked_words=tuple(blocked_words))

    async def listen(on_command: OnCommand, on_heard: Callable[[Any], Awaitable[object]] | None = None) -> None:
        async def command(text: str) -> Any:
            return await on_command(text)

        listener = VoiceListener.from_config(cfg, command, on_heard=on_heard)
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # it logs every utterance at INFO
        try:
            async with Microphone(cfg.input_device) as mic:
                log.info("listening for spoken commands wake_phrase=%r push_to_talk=%s", cfg.wake_phrase,
                         cfg.push_to_talk)
                await listener.run(mic)
        except VoiceError as exc:  # e.g. the microphone went away: the stream goes on without voice commands
            log.error("voice commands stopped: %s", exc)

    return voice, listen
