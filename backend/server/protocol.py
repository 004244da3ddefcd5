"""The LiveIdol websocket protocol, version 1 (docs/protocol.md), sans-I/O.

Pure functions and one small state machine over bytes: no sockets, no clocks, no asyncio.

* typed messages: client -> server :class:`Auth`, :class:`CommandRequest`, :class:`StatusRequest`,
  :class:`SubscribeRequest`, :class:`PushToTalkRequest`; server -> client :class:`Hello`, :class:`Frame`, :class:`Audio`, :class:`Ok`,
  :class:`Error`, :class:`Status`, :class:`State`, :class:`Event`;
* :func:`decode_client` / :func:`decode_server` validate bytes (msgpack) or text (JSON) into them,
  raising :class:`ProtocolError` with a code; :func:`encode` is the inverse;
* :func:`frame_message` / :func:`audio_message` turn engine output into wire messages (raw RGBA or JPEG);
* :class:`ControlProtocol`: the ``/control`` connection's state machine (auth first, then requests):
  feed it each received message, it returns what to do (:class:`Send`, :class:`Close`, :class:`Dispatch`).

Command events (``events``, version :data:`EVENTS_VERSION`, an opt-in extension of protocol 1): a ``command``
that carries ``"events": 1`` is answered by an ``ok`` that carries ``"events": 1`` too (the version the server
will push; an older server leaves the key out, and pushes nothing), and then the server pushes to that connection
one :class:`Event` ``started`` when the command's first frame is shown (``frame``: that frame's ``seq`` on
``/stream``) and one ``finished`` when what it started ended on screen (``frame``: the first frame after it) or
it never showed (``frame`` null), with the :class:`EndReason`. Clients that do not ask never see an event, and
the keys added for it are left out of ``command`` and ``ok`` at their defaults: what older clients get is
byte-for-byte what they always got.

Usage::

    proto = ControlProtocol(check_token=lambda t: check_token(expected, t))
    for action in proto.receive(data):       # data: bytes or str as received
        ...                                  # Send(payload) / Close(code, reason) / Dispatch(request, text)
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from backend.events import AudioChunk, CommandKind, VideoFrame

__all__ = [
    "EVENTS_VERSION",
    "FORMATS",
    "PROTOCOL_VERSION",
    "TOPICS",
    "Audio",
    "Auth",
    "ClientMessage",
    "Close",
    "CloseCode",
    "CommandRequest",
    "ControlProtocol",
    "ControlState",
    "Dispatch",
    "EndReason",
    "Error",
    "ErrorCode",
    "Event",
    "EventKind",
    "Frame",
    "Hello",
    "Ok",
    "ProtocolError",
    "PushToTalkRequest",
    "Send",
    "ServerMessage",
    "State",
    "Status",
    "StatusRequest",
    "SubscribeRequest",
    "audio_message",
    "decode_client",
    "decode_event",
    "decode_server",
    "encode",
    "frame_message",
]

PROTOCOL_VERSION = 1
TOPICS = ("state",)
FORMATS = ("rgba", "jpeg")
EVENTS_VERSION = 1  # the command events this server pushes (``command``/``ok`` key ``events``)
MAX_DEPTH = 8  # nesting of maps/lists in a client message; valid ones need 2 (a map holding a list)


class CloseCode(enum.IntEnum):
    """Websocket close codes: 1000/1008/1009 from RFC 6455 section 7.4.1, 4xxx private (docs/protocol.md)."""

    NORMAL = 1000
    POLICY = 1008
    MESSAGE_TOO_BIG = 1009
    BAD_TOKEN = 4001
    NOT_AUTHENTICATED = 4003
    TOO_MANY_ATTEMPTS = 4029  # wrong tokens from this address: locked out for a while (like HTTP 429)


class ErrorCode(enum.StrEnum):
    BAD_MESSAGE = "bad_message"  # not msgpack/JSON, not a map, missing/unknown type, bad field
    BAD_REQUEST = "bad_request"  # bad /stream query parameters
    BAD_COMMAND = "bad_command"  # the engine refused the command (unknown action ...)
    UNAVAILABLE = "unavailable"  # the engine is not running
    INTERNAL = "internal"


class EventKind(enum.StrEnum):
    """What an :class:`Event` reports about a command (docs/protocol.md, "Command events")."""

    STARTED = "started"  # its first frame was shown: ``frame`` is that frame's seq
    FINISHED = "finished"  # what it started ended on screen (``frame``: the first frame after it) or never showed


class EndReason(enum.StrEnum):
    """Why a command ``finished`` (the engine's ``Ticket.ended``)."""

    PLAYED = "played"  # ended by itself: the action's duration, the speech's end (emotion, prompt: once shown)
    REPLACED = "replaced"  # a later command took its place; ``frame`` null when that was before it showed
    CANCELLED = "cancelled"  # a ``cancel`` stopped it, or withdrew it before it showed (``frame`` null)
    IGNORED = "ignored"  # a ``cancel`` that found nothing of its target playing
    STOPPED = "stopped"  # the engine stopped first


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``code`` goes into the error reply, ``id`` if known."""

    def __init__(self, code: str, message: str, id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


# ------------------------------------------------------------------ messages, client -> server


@dataclass(frozen=True)
class Auth:
    token: str = field(repr=False)
    type = "auth"


@dataclass(frozen=True)
class CommandRequest:
    kind: CommandKind
    argument: str = ""
    id: str = ""
    wait: bool = False  # reply only once the command's first frame is shown (effective_frame set)
    events: int = 0  # the version of command events the client reads (EVENTS_VERSION); 0: push none
    type = "command"


@dataclass(frozen=True)
class StatusRequest:
    id: str = ""
    type = "status"


@dataclass(frozen=True)
class SubscribeRequest:
    topics: tuple[str, ...] = ()
    id: str = ""
    type = "subscribe"


@dataclass(frozen=True)
class PushToTalkRequest:
    held: bool  # the push-to-talk key is down (True) or released (False)
    id: str = ""
    type = "ptt"


ClientMessage = Auth | CommandRequest | StatusRequest | SubscribeRequest | PushToTalkRequest

# ------------------------------------------------------------------ messages, server -> client


@dataclass(frozen=True)
class Hello:
    width: int
    height: int
    fps: float
    format: str
    sample_rate: int
    channels: int = 1
    protocol: int = PROTOCOL_VERSION
    server: str = "liveidol/0.1.0"
    type = "hello"


@dataclass(frozen=True)
class Frame:
    seq: int
    pts: float
    width: int
    height: int
    format: str
    data: bytes = field(repr=False)
    directive_id: str = ""
    type = "frame"


@dataclass(frozen=True)
class Audio:
    seq: int
    pts: float
    sample_rate: int
    channels: int
    data: bytes = field(repr=False)
    format: str = "f32le"
    type = "audio"


@dataclass(frozen=True)
class Ok:
    id: str = ""
    effective_frame: int | None = None
    command_id: str = ""
    latency_ms: float | None = None
    events: int = 0  # a command's reply: the version of the events the server will push for it (0: none)
    type = "ok"


@dataclass(frozen=True)
class Error:
    code: str
    message: str
    id: str = ""
    type = "error"


@dataclass(frozen=True)
class Status:
    id: str
    engine: dict[str, Any]
    server: dict[str, Any]
    type = "status"


@dataclass(frozen=True)
class State:
    now: dict[str, Any] | None
    next: list[Any]
    type = "state"


@dataclass(frozen=True)
class Event:
    """A command's play started or finished (only to the connection that sent it with ``events``)."""

    event: EventKind
    command_id: str  # the engine's id of the command (the ``command_id`` of its ``ok``)
    id: str = ""  # the id of the ``command`` request
    frame: int | None = None  # output frame seq (``/stream``); started: always set; finished: null if never shown
    reason: EndReason | None = None  # finished only
    dropped: int = 0  # events this connection has lost so far (its queue was full: a client not reading)
    type = "event"

    def __post_init__(self) -> None:
        if (self.event is EventKind.FINISHED) != (self.reason is not None):
            raise ValueError(f"event {self.event}: a reason goes with finished, and only there (got {self.reason!r})")
        if self.event is EventKind.STARTED and self.frame is None:
            raise ValueError("event started: the frame it was shown at is missing")


ServerMessage = Hello | Frame | Audio | Ok | Error | Status | State | Event

# ------------------------------------------------------------------ encoding


# Keys added to messages after protocol 1 first shipped, left out at their default (0): a client that does not
# use them gets the same bytes as before (some compare whole replies).
_OMITTED_AT_DEFAULT = frozenset({"events"})


def _to_map(msg: ClientMessage | ServerMessage) -> dict[str, Any]:
    d: dict[str, Any] = {"type": msg.type}
    for name in msg.__dataclass_fields__:
        value = getattr(msg, name)
        if name in _OMITTED_AT_DEFAULT and value == 0:
            continue
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        d[name] = value
    return d


def encode(msg: ClientMessage | ServerMessage, *, text: bool = False) -> bytes | str:
    """One wire message: msgpack bytes, or JSON text when ``text`` (not for messages carrying binary data)."""
    d = _to_map(msg)
    if text:
        if any(isinstance(v, bytes | bytearray) for v in d.values()):
            raise ValueError(f"{msg.type} carries binary data: it cannot be sent as JSON text")
        return json.dumps(d, separators=(",", ":"), default=_json_default)
    return msgpack.packb(d, use_bin_type=True, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _parse(data: bytes | bytearray | memoryview | str) -> dict[str, Any]:
    if isinstance(data, str):
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not valid JSON: {exc}") from None
        except RecursionError:  # json's C scanner recurses once per level of [[[[...
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"nested deeper than {MAX_DEPTH} levels") from None
    else:
        try:
            obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for garbage
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"not valid msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"expected a map with a 'type' key, got {type(obj).__name__}")
    if _too_deep(obj, MAX_DEPTH):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"nested deeper than {MAX_DEPTH} levels")
    return obj


def _too_deep(obj: Any, limit: int) -> bool:
    """Whether maps/lists nest deeper than ``limit`` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list | tuple) else ()
        for child in children:
            if isinstance(child, dict | list | tuple):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _field(obj: dict[str, Any], key: str, types: type | tuple[type, ...], default: Any = ..., *,
           mid: str = "") -> Any:
    if key not in obj:
        if default is ...:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{obj.get('type')}: missing field {key!r}", mid)
        return default
    value = obj[key]
    if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
        want = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise ProtocolError(ErrorCode.BAD_MESSAGE,
                            f"{obj.get('type')}: field {key!r} must be {want}, got {type(value).__name__}", mid)
    return value


def decode_client(data: bytes | bytearray | memoryview | str) -> ClientMessage:
    """Validate one client message (``/control``). Raises :class:`ProtocolError`."""
    obj = _parse(data)
    mtype = obj.get("type")
    raw_id = obj.get("id")
    mid = raw_id if isinstance(raw_id, str) else ""
    if mtype == "auth":
        return Auth(_field(obj, "token", str))
    if mtype == "command":
        kind = _field(obj, "kind", str, mid=mid)
        try:
            ckind = CommandKind(kind)
        except ValueError:
            known = ", ".join(k.value for k in CommandKind)
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"command: unknown kind {kind!r} (known: {known})", mid) from None
        events = _field(obj, "events", int, 0, mid=mid)
        if events < 0:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"command: 'events' must be 0 (none) or a version >= 1, got "
                                f"{events}", mid)
        return CommandRequest(ckind, _field(obj, "argument", str, "", mid=mid), _field(obj, "id", str, "", mid=mid),
                              _field(obj, "wait", bool, False, mid=mid), events)
    if mtype == "status":
        return StatusRequest(_field(obj, "id", str, ""))
    if mtype == "ptt":
        return PushToTalkRequest(_field(obj, "held", bool, mid=mid), _field(obj, "id", str, "", mid=mid))
    if mtype == "subscribe":
        topics = _field(obj, "topics", list, mid=mid)
        for t in topics:
            if t not in TOPICS:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"subscribe: unknown topic {t!r} (known: {', '.join(TOPICS)})", mid)
        return SubscribeRequest(tuple(topics), _field(obj, "id", str, ""))
    if mtype is None:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message has no 'type'", mid)
    raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown message type {mtype!r}", mid)


_SERVER_TYPES: dict[str, type[ServerMessage]] = {c.type: c for c in (Hello, Frame, Audio, Ok, Error, Status, State)}  # type: ignore[attr-defined]


def _enum_field(obj: dict[str, Any], key: str, kind: type[enum.StrEnum], where: str) -> Any:
    value = _field(obj, key, str)
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(k.value for k in kind)
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{where}: unknown {key} {value!r} (known: {known})") from None


def decode_event(obj: dict[str, Any]) -> Event:
    """Validate an ``event`` map strictly (a client acts on it: a wrong one must not pass for a right one)."""
    kind = _enum_field(obj, "event", EventKind, "event")
    where = f"event {kind.value}"
    command_id = _field(obj, "command_id", str)
    frame = obj.get("frame")
    if frame is not None and (not isinstance(frame, int) or isinstance(frame, bool) or frame < 0):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{where}: field 'frame' must be a frame seq (int >= 0) or null, "
                            f"got {frame!r}")
    if kind is EventKind.STARTED:
        if frame is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{where}: field 'frame' must be the seq it was shown at, got null")
        if obj.get("reason") is not None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{where}: a reason goes with finished only, got "
                                f"{obj['reason']!r}")
        reason = None
    else:
        reason = _enum_field(obj, "reason", EndReason, where)
    dropped = _field(obj, "dropped", int, 0)
    if dropped < 0:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{where}: field 'dropped' must be >= 0, got {dropped}")
    return Event(kind, command_id, _field(obj, "id", str, ""), frame, reason, dropped)


def decode_server(data: bytes | bytearray | memoryview | str) -> ServerMessage:
    """Parse one server message (for clients and tests). Raises :class:`ProtocolError`."""
    obj = _parse(data)
    if obj.get("type") == "event":
        return decode_event(obj)
    cls = _SERVER_TYPES.get(obj.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown message type {obj.get('type')!r}")
    kwargs = {k: v for k, v in obj.items() if k != "type" and k in cls.__dataclass_fields__}
    try:
        return cls(**kwargs)  # type: ignore[no-any-return]
    except TypeError as exc:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{obj.get('type')}: {exc}") from None


# ------------------------------------------------------------------ engine output -> wire


def frame_message(frame: VideoFrame, fmt: str = "rgba", *, jpeg_quality: int = 85) -> Frame:
    """A :class:`Frame` holding ``frame`` as raw RGBA or as JPEG (alpha dropped)."""
    rgba = frame.rgba
    h, w = rgba.shape[:2]
    if fmt == "rgba":
        data = np.ascontiguousarray(rgba, dtype=np.uint8).tobytes()
    elif fmt == "jpeg":
        import simplejpeg

        data = simplejpeg.encode_jpeg(np.ascontiguousarray(rgba), quality=jpeg_quality, colorspace="RGBA")
    else:
        raise ValueError(f"frame format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return Frame(frame.seq, float(frame.pts), int(w), int(h), fmt, data, frame.directive_id)


def audio_message(chunk: AudioChunk) -> Audio:
    pcm = chunk.pcm if chunk.pcm.ndim == 2 else chunk.pcm[:, None]
    return Audio(chunk.seq, float(chunk.pts), int(chunk.sample_rate), int(pcm.shape[1]),
                 np.ascontiguousarray(pcm, dtype="<f4").tobytes())


# ------------------------------------------------------------------ the /control state machine


class ControlState(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    READY = "ready"
    CLOSED = "closed"


@dataclass(frozen=True)
class Send:
    payload: bytes | str = field(repr=False)


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class Dispatch:
    """A valid request for the server to carry out; reply in JSON text if ``text``."""

    request: CommandRequest | StatusRequest | SubscribeRequest | PushToTalkRequest
    text: bool


class ControlProtocol:
    """State machine of one ``/control`` connection: the first message must be a valid token."""

    def __init__(self, check_token: Callable[[str], bool]) -> None:
        self._check = check_token
        self.state = ControlState.AWAITING_AUTH
        self.errors = 0
        self.subscribed = False  # set by the server once it pushes "state"

    def reply(self, msg: ServerMessage, text: bool) -> Send:
        return Send(encode(msg, text=text))

    def receive(self, data: bytes | str) -> list[Send | Close | Dispatch]:
        if self.state is ControlState.CLOSED:
            return []
        text = isinstance(data, str)
        try:
            msg = decode_client(data)
        except ProtocolError as exc:
            self.errors += 1
            if self.state is ControlState.AWAITING_AUTH:
                return self._close(CloseCode.NOT_AUTHENTICATED, "authenticate first")
            return [self.reply(Error(exc.code, exc.message, exc.id), text)]
        if self.state is ControlState.AWAITING_AUTH:
            if not isinstance(msg, Auth):
                return self._close(CloseCode.NOT_AUTHENTICATED, "authenticate first")
            if not self._check(msg.token):
                return self._close(CloseCode.BAD_TOKEN, "bad token")
            self.state = ControlState.READY
            return [self.reply(Ok(""), text)]
        if isinstance(msg, Auth):
            return [self.reply(Error(ErrorCode.BAD_MESSAGE, "already authenticated"), text)]
        return [Dispatch(msg, text)]

    def _close(self, code: CloseCode, reason: str) -> list[Send | Close | Dispatch]:
        self.state = ControlState.CLOSED
        return [Close(int(code), reason)]
