"""Voice for `liveidol serve --voice`: the idol's TTS voice for the engine, and the streamer's microphone
listener that hands spoken commands to the director.

Usage::

    tts, spoken = build_voice(cfg.voice, character, blocked_words=cfg.director.blocked_words)
    Engine(..., tts=tts)                                     # `say` commands are spoken with lips in sync
    if spoken is not None:                                   # None: no microphone support (TTS only)
        tg.create_task(spoken(director.handle_streamer))     # "idol, wave to chat" -> a streamer command
        server.push_to_talk = spoken.set_push_to_talk        # the control command 'ptt', the OBS hotkey
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from backend.config import VoiceConfig

__all__ = ["SpokenCommands", "build_voice"]

log = logging.getLogger(__name__)

OnCommand = Callable[[str], Awaitable[Any]]


class SpokenCommands:
    """The streamer's microphone -> commands. ``await spoken(on_command[, on_heard])`` listens until cancelled; a missing
    speech-recognition package or microphone is a warning (the idol keeps speaking), not the end of the
    stream. ``set_push_to_talk(held)`` may be called any time (before listening starts too)."""

    def __init__(self, cfg: VoiceConfig) -> None:
        self.cfg = cfg
        self.held = False
        self._listener: Any = None

    def set_push_to_talk(self, held: bool) -> None:
        self.held = bool(held)
        if self._listener is not None:
            self._listener.set_push_to_talk(self.held)

    async def __call__(self, on_command: OnCommand, on_heard: Callable[[Any], Awaitable[object]] | None = None
                       ) -> None:
        """Listen until cancelled; ``on_heard(utterance)`` (optional) hears every utterance (the mood)."""
        from backend.voice.errors import VoiceError
        from backend.voice.listener import VoiceListener
        from backend.voice.sources import Microphone

        async def command(text: str) -> Any:
            return await on_command(text)

        try:
            listener = VoiceListener.from_config(self.cfg, command, on_heard=on_heard)
            listener.set_push_to_talk(self.held)
            self._listener = listener
            logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # it logs every utterance at INFO
            async with Microphone(self.cfg.input_device) as mic:
                log.info("listening for spoken commands wake_phrase=%r push_to_talk=%s", self.cfg.wake_phrase,
                         self.cfg.push_to_talk)
                await listener.run(mic)
        except VoiceError as exc:  # no whisper, no microphone, or it went away: the idol keeps speaking
            log.warning("not listening to the microphone (the idol still speaks): %s", exc)
        finally:
            self._listener = None


def build_voice(cfg: VoiceConfig, character: Any, *, blocked_words: Iterable[str] = ()
                ) -> tuple[Any, SpokenCommands | None]:
    """The TTS callable (sync, ``text -> (pcm float32 mono, sample_rate)``) and the microphone's
    :class:`SpokenCommands`, or None when the microphone cannot work here (sounddevice or PortAudio
    missing: a warning with what to install; the idol still speaks).

    The TTS model is loaded here, before voice goes live, so a missing TTS package or model fails at once
    with a clear :class:`backend.voice.errors.VoiceError` naming what to install or where to put it.
    """
    from backend.voice.errors import VoiceError
    from backend.voice.sources import _import_sounddevice
    from backend.voice.tts import IdolVoice

    voice_path = character.resolve(character.voice) if character is not None and character.voice else None
    voice = IdolVoice.from_config(cfg, voice=str(voice_path or ""), blocked_words=tuple(blocked_words))
    try:
        _import_sounddevice()
    except VoiceError as exc:
        log.warning("voice: speaking only, not listening: %s", exc)
        return voice, None
    return voice, SpokenCommands(cfg)
