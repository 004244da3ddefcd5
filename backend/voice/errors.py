"""The voice package's small exception hierarchy: every error names what is missing and how to get it."""

from __future__ import annotations

from backend.errors import LiveIdolError

__all__ = [
    "AudioDeviceError",
    "BlockedTextError",
    "MissingPackageError",
    "ModelNotFoundError",
    "SynthesisError",
    "VoiceError",
]


class VoiceError(LiveIdolError):
    """Base of every error raised by :mod:`backend.voice`."""


class MissingPackageError(VoiceError, ImportError):
    """An optional package (faster-whisper, piper-tts, coqui-tts, sounddevice) is not importable."""

    def __init__(self, package: str, purpose: str, hint: str = "") -> None:
        self.package = package
        msg = f"{purpose} needs the '{package}' package: pip install {package}"
        super().__init__(msg + (f" ({hint})" if hint else ""))


class ModelNotFoundError(VoiceError, FileNotFoundError):
    """A speech model (whisper directory, piper voice .onnx) is not where it was looked for."""


class AudioDeviceError(VoiceError):
    """The microphone could not be opened (no such device, no PortAudio, device busy)."""


class BlockedTextError(VoiceError, ValueError):
    """The idol was asked to say a blocked word (second line of defence after the director)."""


class SynthesisError(VoiceError):
    """A text-to-speech engine failed or produced no audio."""
