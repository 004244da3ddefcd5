"""ctypes bindings to the few libobs functions the LiveIdol source needs (standard library only).

OBS's ``obspython`` cannot register a source (SWIG skips ``obs_source_info``), so the script
registers one through libobs's C API with ctypes: :func:`register_source` fills the leading
fields of ``struct obs_source_info`` (libobs 29 ``obs-source.h``; ``obs_register_source_s`` zero-fills
the rest) for an *async video + audio* input, whose frames and audio are pushed from a thread with
``obs_source_output_video`` / ``obs_source_output_audio`` and synced by OBS by their timestamps.

libobs cannot unregister a source type, and a script may be reloaded: so the registration (info
struct and C callbacks) lives in :data:`_REGISTRY` for the life of the process, and each reload only
swaps the Python handler the callbacks dispatch to.  That registry is the one piece of
module-level state, forced by libobs's own process-wide registry.

Shutdown safety: libobs runs ``info.destroy`` later, on its destruction thread, possibly after OBS
finalized Python (a Python callback then crashes OBS).  So ``destroy`` is libobs's own C ``bfree``
(each source's data is a ``bmalloc``'d key), and Python learns of a source's end through its
"remove" and "destroy" signals, which :meth:`_Registration.release_all` disconnects in
``script_unload`` (before OBS clears the scenes and finalizes Python).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_long,
    c_size_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any, Protocol

__all__ = [
    "AUDIO_FORMAT_FLOAT",
    "OBS_SOURCE_ASYNC_VIDEO",
    "OBS_SOURCE_AUDIO",
    "VIDEO_FORMAT_RGBA",
    "FrontendHotkey",
    "LibObs",
    "ObsSourceAudio",
    "ObsSourceFrame",
    "ObsSourceInfo",
    "SourceHandler",
    "register_source",
]

log = logging.getLogger(__name__)

MAX_AV_PLANES = 8
VIDEO_FORMAT_RGBA = 6          # enum video_format (media-io/video-io.h)
VIDEO_FORMAT_BGRA = 7
AUDIO_FORMAT_FLOAT = 4         # enum audio_format (media-io/audio-io.h)
SPEAKERS = {1: 1, 2: 2}        # channels -> enum speaker_layout (MONO=1, STEREO=2)
OBS_SOURCE_TYPE_INPUT = 0      # enum obs_source_type
OBS_SOURCE_VIDEO = 1 << 0      # obs-source.h output flags
OBS_SOURCE_AUDIO = 1 << 1
OBS_SOURCE_ASYNC = 1 << 2
OBS_SOURCE_ASYNC_VIDEO = OBS_SOURCE_ASYNC | OBS_SOURCE_VIDEO
OBS_SOURCE_DO_NOT_DUPLICATE = 1 << 7
OBS_TEXT_DEFAULT = 0           # enum obs_text_type (obs-properties.h)
OBS_TEXT_PASSWORD = 1
LOG_ERROR, LOG_WARNING, LOG_INFO, LOG_DEBUG = 100, 200, 300, 400  # util/base.h


class ObsSourceFrame(Structure):
    """``struct obs_source_frame`` (obs.h, libobs 29)."""

    _fields_ = [
        ("data", POINTER(c_uint8) * MAX_AV_PLANES),
        ("linesize", c_uint32 * MAX_AV_PLANES),
        ("width", c_uint32),
        ("height", c_uint32),
        ("timestamp", c_uint64),
        ("format", c_int),
        ("color_matrix", c_float * 16),
        ("full_range", c_bool),
        ("max_luminance", c_uint16),
        ("color_range_min", c_float * 3),
        ("color_range_max", c_float * 3),
        ("flip", c_bool),
        ("flags", c_uint8),
        ("trc", c_uint8),
        ("refs", c_long),
        ("prev_frame", c_bool),
    ]


class ObsSourceAudio(Structure):
    """``struct obs_source_audio`` (obs.h, libobs 29)."""

    _fields_ = [
        ("data", POINTER(c_uint8) * MAX_AV_PLANES),
        ("frames", c_uint32),
        ("speakers", c_int),
        ("format", c_int),
        ("samples_per_sec", c_uint32),
        ("timestamp", c_uint64),
    ]


GET_NAME = CFUNCTYPE(c_char_p, c_void_p)
CREATE = CFUNCTYPE(c_void_p, c_void_p, c_void_p)
DESTROY = CFUNCTYPE(None, c_void_p)
GET_SIZE = CFUNCTYPE(c_uint32, c_void_p)
GET_DEFAULTS = CFUNCTYPE(None, c_void_p)
GET_PROPERTIES = CFUNCTYPE(c_void_p, c_void_p)
UPDATE = CFUNCTYPE(None, c_void_p, c_void_p)
VOID_DATA = CFUNCTYPE(None, c_void_p)
VIDEO_TICK = CFUNCTYPE(None, c_void_p, c_float)
VIDEO_RENDER = CFUNCTYPE(None, c_void_p, c_void_p)
SIGNAL_CALLBACK = CFUNCTYPE(None, c_void_p, c_void_p)  # signal_callback_t(void *data, calldata_t *cd)
# obs_hotkey_func(void *data, obs_hotkey_id id, obs_hotkey_t *hotkey, bool pressed); obs_hotkey_id is size_t
HOTKEY_FUNC = CFUNCTYPE(None, c_void_p, c_size_t, c_void_p, c_bool)
SOURCE_SIGNALS = (b"remove", b"destroy")


class ObsSourceInfo(Structure):
    """The leading fields of ``struct obs_source_info`` (obs-source.h, libobs 29), in order."""

    _fields_ = [
        ("id", c_char_p),
        ("type", c_int),
        ("output_flags", c_uint32),
        ("get_name", GET_NAME),
        ("create", CREATE),
        ("destroy", DESTROY),
        ("get_width", GET_SIZE),
        ("get_height", GET_SIZE),
        ("get_defaults", GET_DEFAULTS),
        ("get_properties", GET_PROPERTIES),
        ("update", UPDATE),
        ("activate", VOID_DATA),
        ("deactivate", VOID_DATA),
        ("show", VOID_DATA),
        ("hide", VOID_DATA),
        ("video_tick", VIDEO_TICK),
        ("video_render", VIDEO_RENDER),
    ]


def _library_names() -> list[str | None]:
    """Where to find the libobs that OBS already loaded (None: the process's global symbols)."""
    if sys.platform == "win32":
        return ["obs.dll", "obs"]
    if sys.platform == "darwin":
        return [None, "@rpath/libobs.framework/Versions/A/libobs", "libobs.framework/libobs"]
    found = ctypes.util.find_library("obs")
    return [None, *(n for n in (found, "libobs.so.0", "libobs.so.30", "libobs.so.29") if n)]


class LibObs:
    """The loaded libobs with typed signatures for the functions the source uses."""

    def __init__(self, name: str | None = None) -> None:
        errors = []
        self.lib: Any = None
        for candidate in [name] if name else _library_names():
            try:
                lib = ctypes.CDLL(candidate)
                lib.obs_register_source_s  # noqa: B018 - raises AttributeError if this is not libobs
            except (OSError, AttributeError) as exc:
                errors.append(f"{candidate or 'process symbols'}: {exc}")
                continue
            self.lib = lib
            break
        if self.lib is None:
            raise OSError("could not load libobs (" + "; ".join(errors) + ")")
        lib = self.lib
        sig = {
            "obs_register_source_s": (None, [POINTER(ObsSourceInfo), c_size_t]),
            "obs_source_output_video": (None, [c_void_p, POINTER(ObsSourceFrame)]),
            "obs_source_output_audio": (None, [c_void_p, POINTER(ObsSourceAudio)]),
            "os_gettime_ns": (c_uint64, []),
            "obs_data_get_string": (c_char_p, [c_void_p, c_char_p]),
            "obs_data_set_default_string": (None, [c_void_p, c_char_p, c_char_p]),
            "obs_properties_create": (c_void_p, []),
            "obs_properties_add_text": (c_void_p, [c_void_p, c_char_p, c_char_p, c_int]),
            "obs_property_set_long_description": (None, [c_void_p, c_char_p]),
            "obs_source_get_name": (c_char_p, [c_void_p]),
            "obs_source_get_signal_handler": (c_void_p, [c_void_p]),
            "signal_handler_connect": (None, [c_void_p, c_char_p, SIGNAL_CALLBACK, c_void_p]),
            "signal_handler_disconnect": (None, [c_void_p, c_char_p, SIGNAL_CALLBACK, c_void_p]),
            "bmalloc": (c_void_p, [c_size_t]),
            "obs_hotkey_register_frontend": (c_size_t, [c_char_p, c_char_p, HOTKEY_FUNC, c_void_p]),
            "obs_hotkey_unregister": (None, [c_size_t]),
            "obs_hotkey_save": (c_void_p, [c_size_t]),
            "obs_hotkey_load": (None, [c_size_t, c_void_p]),
            "obs_data_get_array": (c_void_p, [c_void_p, c_char_p]),
            "obs_data_set_array": (None, [c_void_p, c_char_p, c_void_p]),
            "obs_data_array_release": (None, [c_void_p]),
        }
        for fname, (restype, argtypes) in sig.items():
            fn = getattr(lib, fname)
            fn.restype = restype
            fn.argtypes = argtypes
        self._blog = lib.blog  # variadic: blog(int level, const char *fmt, ...)

    def gettime_ns(self) -> int:
        return int(self.lib.os_gettime_ns())

    def blog(self, level: int, text: str) -> None:
        self._blog(c_int(level), c_char_p(b"%s"), c_char_p(text.encode("utf-8", "replace")))

    def get_string(self, settings: int, key: str) -> str:
        raw = self.lib.obs_data_get_string(settings, key.encode())
        return raw.decode("utf-8", "replace") if raw else ""

    def set_default_string(self, settings: int, key: str, value: str) -> None:
        self.lib.obs_data_set_default_string(settings, key.encode(), value.encode())

    def source_name(self, source: int) -> str:
        raw = self.lib.obs_source_get_name(source)
        return raw.decode("utf-8", "replace") if raw else ""

    def output_video_rgba(self, source: int, width: int, height: int, data: bytes, timestamp_ns: int) -> None:
        """Push one straight-alpha RGBA frame (OBS copies it before returning)."""
        if len(data) != width * height * 4:
            raise ValueError(f"frame data is {len(data)} bytes, expected {width * height * 4} for {width}x{height}")
        frame = ObsSourceFrame()
        buf = c_char_p(data)  # points into the bytes object, no copy; kept alive for the call
        frame.data[0] = ctypes.cast(buf, POINTER(c_uint8))
        frame.linesize[0] = width * 4
        frame.width, frame.height = width, height
        frame.timestamp = timestamp_ns
        frame.format = VIDEO_FORMAT_RGBA
        frame.full_range = True
        self.lib.obs_source_output_video(source, ctypes.byref(frame))
        del buf

    def clear_video(self, source: int) -> None:
        self.lib.obs_source_output_video(source, None)

    def output_audio_f32(self, source: int, data: bytes, channels: int, sample_rate: int, timestamp_ns: int) -> None:
        """Push interleaved float32 PCM (OBS copies it before returning)."""
        if channels not in SPEAKERS:
            raise ValueError(f"audio with {channels} channels is not supported (1 or 2)")
        audio = ObsSourceAudio()
        buf = c_char_p(data)
        audio.data[0] = ctypes.cast(buf, POINTER(c_uint8))
        audio.frames = len(data) // (4 * channels)
        audio.speakers = SPEAKERS[channels]
        audio.format = AUDIO_FORMAT_FLOAT
        audio.samples_per_sec = sample_rate
        audio.timestamp = timestamp_ns
        self.lib.obs_source_output_audio(source, ctypes.byref(audio))
        del buf


def data_pointer(settings: Any) -> int | None:
    """The ``obs_data_t *`` address behind what OBS hands a script (a SWIG pointer object, or an int)."""
    for candidate in (settings, getattr(settings, "this", None)):
        if candidate is None:
            continue
        try:
            return int(candidate) or None
        except (TypeError, ValueError):
            continue
    return None


class FrontendHotkey:
    """A hotkey the streamer binds in Settings > Hotkeys (``obs_hotkey_register_frontend``): OBS calls
    ``on_press(pressed)`` on its hotkey thread when the key goes down and up. The binding is kept in the
    script's settings with :meth:`save` / :meth:`load`; :meth:`unregister` before the script unloads."""

    def __init__(self, lib: LibObs, name: str, description: str, on_press: Any) -> None:
        self.lib = lib
        self.name = name
        self.on_press = on_press
        self._func = HOTKEY_FUNC(self._called)  # kept alive as long as libobs may call it
        self.id: int | None = int(lib.lib.obs_hotkey_register_frontend(name.encode(), description.encode(),
                                                                        self._func, None))

    def _called(self, _data: int, _id: int, _hotkey: int, pressed: bool) -> None:
        try:  # never unwind into C
            self.on_press(bool(pressed))
        except Exception:
            log.exception("LiveIdol hotkey %s failed", self.name)

    def load(self, settings: int, key: str) -> None:
        if self.id is None:
            return
        array = self.lib.lib.obs_data_get_array(settings, key.encode())
        if array:
            self.lib.lib.obs_hotkey_load(self.id, array)
            self.lib.lib.obs_data_array_release(array)

    def save(self, settings: int, key: str) -> None:
        if self.id is None:
            return
        array = self.lib.lib.obs_hotkey_save(self.id)
        if array:
            self.lib.lib.obs_data_set_array(settings, key.encode(), array)
            self.lib.lib.obs_data_array_release(array)

    def unregister(self) -> None:
        if self.id is not None:
            self.lib.lib.obs_hotkey_unregister(self.id)
            self.id = None


class SourceHandler(Protocol):
    """What the registered callbacks dispatch to (the script's current instance)."""

    def create(self, settings: int, source: int) -> Any: ...
    def update(self, instance: Any, settings: int) -> None: ...
    def get_defaults(self, settings: int) -> None: ...
    def get_properties(self, instance: Any) -> int: ...


class _Registration:
    """One registered source type: the C struct, its callbacks, and the swappable Python handler.

    ``instances`` maps each source's data key (a ``bmalloc``'d address) to (source pointer, instance).
    """

    def __init__(self, lib: LibObs, source_id: str, display_name: str, flags: int) -> None:
        self.lib = lib
        self.handler: SourceHandler | None = None
        self.instances: dict[int, tuple[int, Any]] = {}
        self._id = source_id.encode()
        self._name = display_name.encode()
        self.callbacks = (
            GET_NAME(self._get_name), CREATE(self._create), GET_DEFAULTS(self._get_defaults),
            GET_PROPERTIES(self._get_properties), UPDATE(self._update),
        )
        self.on_signal = SIGNAL_CALLBACK(self._on_end_signal)
        get_name, create, get_defaults, get_properties, update = self.callbacks
        bfree = ctypes.cast(lib.lib.bfree, c_void_p).value
        if bfree is None:
            raise OSError("libobs has no bfree")
        destroy = DESTROY(bfree)  # C, never enters Python
        self.info = ObsSourceInfo(id=self._id, type=OBS_SOURCE_TYPE_INPUT, output_flags=flags,
                                  get_name=get_name, create=create, destroy=destroy,
                                  get_defaults=get_defaults, get_properties=get_properties, update=update)
        lib.lib.obs_register_source_s(ctypes.byref(self.info), ctypes.sizeof(self.info))

    def _signals(self, source: int, connect: bool) -> None:
        handler = self.lib.lib.obs_source_get_signal_handler(source)
        fn = self.lib.lib.signal_handler_connect if connect else self.lib.lib.signal_handler_disconnect
        for name in SOURCE_SIGNALS:
            fn(handler, name, self.on_signal, source)

    def _end(self, source: int) -> None:
        """Stop the instance of ``source`` and forget it (idempotent)."""
        for key, (src, instance) in list(self.instances.items()):
            if src == source:
                del self.instances[key]
                self._signals(source, connect=False)
                try:
                    instance.stop()
                except Exception:
                    log.exception("stopping the LiveIdol source failed")

    def release_all(self) -> list[tuple[int, Any]]:
        """Disconnect every source's signals and stop its instance (script unload); returns them."""
        ended = list(self.instances.values())
        for source, instance in ended:
            self._signals(source, connect=False)
            try:
                instance.stop()
            except Exception:
                log.exception("stopping the LiveIdol source failed")
        return ended

    def adopt_all(self, make: Any) -> None:
        """After a script reload: give every surviving source a new instance and reconnect signals."""
        for key, (source, old) in list(self.instances.items()):
            self.instances[key] = (source, make(old))
            self._signals(source, connect=True)

    # Each callback guards against exceptions: one must never unwind into C.
    def _get_name(self, _type_data: int) -> bytes:
        return self._name

    def _create(self, settings: int, source: int) -> int | None:
        handler = self.handler
        if handler is None:
            log.error("LiveIdol source created while the script is not loaded; reload the script")
            return None
        try:
            instance = handler.create(settings, source)
        except Exception:
            log.exception("creating the LiveIdol source failed")
            return None
        key = self.lib.lib.bmalloc(8)  # freed by libobs through info.destroy = bfree
        self.instances[key] = (source, instance)
        self._signals(source, connect=True)
        return key

    def _on_end_signal(self, source: int, _calldata: int) -> None:
        try:
            self._end(source)
        except Exception:
            log.exception("LiveIdol source end signal failed")

    def _update(self, data: int, settings: int) -> None:
        entry = self.instances.get(data or 0)
        if entry is not None and self.handler is not None:
            try:
                self.handler.update(entry[1], settings)
            except Exception:
                log.exception("updating the LiveIdol source failed")

    def _get_defaults(self, settings: int) -> None:
        if self.handler is not None:
            try:
                self.handler.get_defaults(settings)
            except Exception:
                log.exception("LiveIdol source defaults failed")

    def _get_properties(self, data: int) -> int | None:
        if self.handler is None:
            return self.lib.lib.obs_properties_create()
        entry = self.instances.get(data or 0)
        try:
            return self.handler.get_properties(entry[1] if entry else None)
        except Exception:
            log.exception("LiveIdol source properties failed")
            return self.lib.lib.obs_properties_create()


_REGISTRY: dict[str, _Registration] = {}


def register_source(lib: LibObs, source_id: str, display_name: str, handler: SourceHandler, *,
                    flags: int = OBS_SOURCE_ASYNC_VIDEO | OBS_SOURCE_AUDIO | OBS_SOURCE_DO_NOT_DUPLICATE
                    ) -> _Registration:
    """Register ``source_id`` once per process and point its callbacks at ``handler``."""
    reg = _REGISTRY.get(source_id)
    if reg is None:
        reg = _REGISTRY[source_id] = _Registration(lib, source_id, display_name, flags)
    reg.handler = handler
    return reg
