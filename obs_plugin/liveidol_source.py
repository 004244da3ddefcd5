"""LiveIdol for OBS Studio: a "LiveIdol" source that shows the idol the local backend generates.

Load it in OBS with Tools > Scripts > "+" > ``obs_plugin/liveidol_source.py`` (Linux: OBS uses the
system Python 3; Windows/macOS: set a Python 3.8-3.12 under Tools > Scripts > Python Settings).  It
needs nothing but the standard library.  Then add a "LiveIdol" source (Sources > + > LiveIdol) or
run ``liveidol obs setup``, which creates it over obs-websocket with input kind ``liveidol_source``.

How it works: the script registers an async video + audio input with libobs through ctypes
(``_libobs.py``).  Each source runs one background thread (``_stream.StreamReceiver``) that reads
``ws://127.0.0.1:8765/stream`` (``docs/protocol.md``): RGBA frames with straight alpha and float32
audio.  Both are pushed to OBS with timestamps ``os_gettime_ns`` + the stream's pts (one shared
:class:`_stream.PtsClock`), so OBS keeps voice and lips in sync.  While the backend is down the source
shows a striped "waiting for LiveIdol" image and reconnects with exponential backoff.  Nothing runs
in ``script_tick``.  Settings: URL and an optional token (sent as ``Authorization: Bearer``).

Push-to-talk: the script registers the hotkey "LiveIdol: push-to-talk" (Settings > Hotkeys; the binding
is saved with the script's settings).  Holding it sends ``ptt`` presses to the backend's ``/control``
with the source's token (:class:`_stream.PushToTalk`), for ``liveidol serve --voice`` with
``voice.push_to_talk = true``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

try:  # inside the obs_plugin package (tests) or as OBS's top-level script module
    from . import _libobs, _stream
except ImportError:  # pragma: no cover - OBS imports this file as a top-level module
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _libobs  # type: ignore[no-redef]
    import _stream  # type: ignore[no-redef]

log = logging.getLogger("liveidol.obs")

SOURCE_ID = "liveidol_source"
SOURCE_NAME = "LiveIdol"
PLACEHOLDER_SIZE = (640, 360)
HOTKEY_NAME = "liveidol.push_to_talk"
HOTKEY_SETTING = "liveidol_push_to_talk_hotkey"


class SourceSettings:
    """The source's settings as the script uses them: a normalized URL and the token (never logged)."""

    __slots__ = ("error", "token", "url")

    def __init__(self, url_text: str, token: str) -> None:
        self.token = token.strip()
        self.error = ""
        try:
            self.url = _stream.normalize_url(url_text)
        except ValueError as exc:
            self.url = ""
            self.error = str(exc)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceSettings) and (self.url, self.token, self.error) == (
            other.url, other.token, other.error)

    def __repr__(self) -> str:
        return f"SourceSettings(url={self.url!r}, token={'set' if self.token else 'empty'})"


class LiveIdolSource:
    """One OBS source instance: a receiver thread pushing frames and audio into ``source``."""

    def __init__(self, lib: _libobs.LibObs, source: int, settings: SourceSettings) -> None:
        self.lib = lib
        self.source = source
        self.settings = settings
        self.clock = _stream.PtsClock(delay_s=0.1)
        self._size = PLACEHOLDER_SIZE
        self._placeholder: tuple[int, int, bytes] | None = None
        self._lock = threading.Lock()
        self._alive = True
        self._last_ts = 0
        self._placeholder_shown = False
        self.receiver: _stream.StreamReceiver | None = None
        self.ptt: _stream.PushToTalk | None = None
        self.show_placeholder()
        self._start()

    # -- lifecycle ---------------------------------------------------------------------------------
    def _start(self) -> None:
        if not self.settings.url:
            log.error("LiveIdol source not started: %s", self.settings.error)
            return
        self.receiver = _stream.StreamReceiver(self.settings.url, token=self.settings.token, sink=self)
        self.receiver.start()
        self.ptt = _stream.PushToTalk(self.settings.url, self.settings.token)
        log.info("LiveIdol source started url=%s", self.settings.url)

    def _stop_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        if self.ptt is not None:
            self.ptt.stop()
            self.ptt = None

    def push_to_talk(self, held: bool) -> None:
        """The push-to-talk hotkey went down or up (OBS's hotkey thread)."""
        if self.ptt is not None:
            self.ptt.press(held)

    def update(self, settings: SourceSettings) -> None:
        if settings == self.settings:
            return
        self._stop_receiver()
        self.settings = settings
        self.clock.reset()
        self.show_placeholder()
        self._start()

    def stop(self) -> None:
        """Stop the thread; after this returns nothing touches the OBS source any more."""
        self._stop_receiver()
        with self._lock:
            self._alive = False

    # -- pushing into OBS (receiver thread) ---------------------------------------------------------
    def _timestamp(self, pts: float) -> int:
        return self.clock.to_ns(pts, self.lib.gettime_ns())

    def show_placeholder(self) -> None:
        w, h = self._size
        if self._placeholder is None or self._placeholder[:2] != (w, h):
            self._placeholder = (w, h, _stream.placeholder_rgba(w, h))
        with self._lock:
            if self._alive:
                ts = max(self.lib.gettime_ns(), self._last_ts + 1)
                self._last_ts = ts
                self.lib.output_video_rgba(self.source, w, h, self._placeholder[2], ts)
                self._placeholder_shown = True

    def on_hello(self, hello: _stream.Hello) -> None:
        self._size = (hello.width, hello.height)
        self.clock.reset()

    def on_frame(self, frame: _stream.Frame) -> None:
        ts = self._timestamp(frame.pts)
        with self._lock:
            if self._alive:
                self._last_ts = ts
                self._placeholder_shown = False
                self.lib.output_video_rgba(self.source, frame.width, frame.height, frame.data, ts)

    def on_audio(self, chunk: _stream.AudioChunk) -> None:
        ts = self._timestamp(chunk.pts)
        with self._lock:
            if self._alive:
                self.lib.output_audio_f32(self.source, chunk.data, chunk.channels, chunk.sample_rate, ts)

    def on_disconnect(self, reason: str) -> None:
        self.clock.reset()
        if not self._placeholder_shown:  # once per outage, not on every reconnect attempt
            self.show_placeholder()


class Plugin:
    """The script's handler for the registered source type (see ``_libobs.SourceHandler``)."""

    def __init__(self, lib: _libobs.LibObs) -> None:
        self.lib = lib

    def read_settings(self, settings: int) -> SourceSettings:
        return SourceSettings(self.lib.get_string(settings, "url"), self.lib.get_string(settings, "token"))

    def create(self, settings: int, source: int) -> LiveIdolSource:
        return LiveIdolSource(self.lib, source, self.read_settings(settings))

    def adopt(self, old: Any) -> LiveIdolSource:
        """Take over a source created before the script was reloaded."""
        return LiveIdolSource(self.lib, old.source, SourceSettings(old.settings.url, old.settings.token))

    def update(self, instance: LiveIdolSource, settings: int) -> None:
        instance.update(self.read_settings(settings))

    def get_defaults(self, settings: int) -> None:
        self.lib.set_default_string(settings, "url", _stream.DEFAULT_URL)
        self.lib.set_default_string(settings, "token", "")

    def get_properties(self, instance: LiveIdolSource | None) -> int:
        lib = self.lib.lib
        props = lib.obs_properties_create()
        url = lib.obs_properties_add_text(props, b"url", b"Backend URL", _libobs.OBS_TEXT_DEFAULT)
        lib.obs_property_set_long_description(
            url, b"The LiveIdol backend's stream, e.g. ws://127.0.0.1:8765/stream (liveidol serve prints it).")
        lib.obs_properties_add_text(props, b"token", b"Token (optional)", _libobs.OBS_TEXT_PASSWORD)
        return props


class _ObsLogHandler(logging.Handler):
    """Forwards the script's log records to OBS's log (Help > Log Files)."""

    LEVELS = ((logging.ERROR, _libobs.LOG_ERROR), (logging.WARNING, _libobs.LOG_WARNING),
              (logging.INFO, _libobs.LOG_INFO))

    def __init__(self, lib: _libobs.LibObs) -> None:
        super().__init__(logging.INFO)
        self.lib = lib
        self.setFormatter(logging.Formatter("[liveidol] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        level = next((obs for py, obs in self.LEVELS if record.levelno >= py), _libobs.LOG_DEBUG)
        try:
            self.lib.blog(level, self.format(record))
        except Exception:
            self.handleError(record)


# ---------------------------------------------------------------------------------------------
# OBS script entry points.  OBS calls these module functions, so the loaded plugin lives in the
# module-level _state (the script's only state; cleared in script_unload).
# ---------------------------------------------------------------------------------------------

_state: dict[str, Any] = {}
_LOGGERS = ("liveidol", _stream.__name__, _libobs.__name__)


def script_description() -> str:
    return ("<b>LiveIdol</b>: adds the \"LiveIdol\" source, which shows the idol generated by the local "
            "LiveIdol backend (with its voice). Start the backend with <code>liveidol serve</code>, then add "
            "the source or run <code>liveidol obs setup</code>.")


def _on_push_to_talk(pressed: bool) -> None:
    reg = _state.get("registration")
    instances = [inst for _, inst in reg.instances.values()] if reg is not None else []
    if not instances:
        log.warning("LiveIdol push-to-talk: no LiveIdol source to send it through (add one)")
    for instance in instances:
        instance.push_to_talk(pressed)


def script_load(settings: Any) -> None:
    try:
        lib = _libobs.LibObs()
    except OSError as exc:  # printed into OBS's script log
        print(f"LiveIdol: cannot use libobs from Python, the LiveIdol source is unavailable: {exc}")
        return
    handler = _ObsLogHandler(lib)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    plugin = Plugin(lib)
    reg = _libobs.register_source(lib, SOURCE_ID, SOURCE_NAME, plugin)
    reg.adopt_all(plugin.adopt)  # sources that outlived a script reload
    _state.update(lib=lib, plugin=plugin, registration=reg, log_handler=handler)
    try:
        hotkey = _libobs.FrontendHotkey(lib, HOTKEY_NAME, "LiveIdol: push-to-talk", _on_push_to_talk)
    except (AttributeError, OSError) as exc:  # a libobs without frontend hotkeys: the source still works
        log.warning("LiveIdol push-to-talk hotkey unavailable: %s", exc)
    else:
        _state["hotkey"] = hotkey
        pointer = _libobs.data_pointer(settings)
        if pointer is not None:
            hotkey.load(pointer, HOTKEY_SETTING)
        log.info("LiveIdol push-to-talk hotkey registered name=%s id=%s", HOTKEY_NAME, hotkey.id)
    log.info("LiveIdol script loaded source_id=%s python=%s", SOURCE_ID, sys.version.split()[0])


def script_save(settings: Any) -> None:
    hotkey = _state.get("hotkey")
    pointer = _libobs.data_pointer(settings)
    if hotkey is not None and pointer is not None:
        hotkey.save(pointer, HOTKEY_SETTING)


def script_unload() -> None:
    hotkey = _state.get("hotkey")
    if hotkey is not None:
        hotkey.unregister()  # before Python goes: libobs must not call into it afterwards
    reg = _state.get("registration")
    if reg is not None:
        reg.release_all()  # before OBS clears the scenes and finalizes Python: see _libobs
        reg.handler = None
    log.info("LiveIdol script unloaded")
    handler = _state.get("log_handler")
    if handler is not None:
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(handler)
    _state.clear()
