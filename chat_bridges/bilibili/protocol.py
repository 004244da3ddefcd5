"""The Bilibili live danmaku protocol, sans-I/O: packets over bytes, no sockets, no clocks.

Every packet (one websocket binary message holds one or more) is a 16-byte big-endian header
``struct '>I2H2I'`` (packet length, header length, protocol version, operation, sequence) and a body.
Versions 2 (zlib) and 3 (brotli) carry a compressed body that holds SEVERAL packets, each with its own
header. Sources: blivedm ``blivedm/clients/ws_base.py`` and bilibili-API-collect
``docs/live/message_stream.md``.

Usage (the async client in ``client.py`` does exactly this)::

    conn = DanmakuConnection(room_id=room_id)
    conn.send_auth(build_auth_body(uid=0, room_id=room_id, token=token, buvid=buvid))
    for data in conn.data_to_send():
        await ws.send(data)
    for event in conn.receive_message(await ws.recv()):   # one websocket message at a time
        ...  # AuthOk, Popularity, Notification (CompressedBatch when inline_decompress=False)

Malformed input is logged and skipped, never raised; the one exception is a refused auth
(:class:`~chat_bridges.bilibili.errors.AuthError`), after which the connection is dead.
"""

from __future__ import annotations

import enum
import json
import logging
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import brotli

from chat_bridges.bilibili.errors import AuthError, InvalidStateError, ProtocolError

__all__ = [
    "HEADER_STRUCT",
    "MAX_BODY_SIZE",
    "AuthOk",
    "CompressedBatch",
    "ConnectionEvent",
    "ConnectionState",
    "DanmakuConnection",
    "Header",
    "Notification",
    "Operation",
    "Packet",
    "Popularity",
    "ProtoVer",
    "build_auth_body",
    "decompress",
    "iter_packets",
    "pack",
    "split_packets",
]

logger = logging.getLogger(__name__)

HEADER_STRUCT = struct.Struct(">I2H2I")
HEADER_SIZE = HEADER_STRUCT.size  # 16
MAX_BODY_SIZE = 4 * 1024 * 1024  # one packet or one decompressed batch; larger is treated as malformed (zip bomb)


class Header(NamedTuple):
    pack_len: int  # header + body
    header_len: int  # always 16 today
    ver: int  # ProtoVer
    operation: int  # Operation
    seq_id: int


class ProtoVer(enum.IntEnum):
    """Protocol version field. Source: blivedm ``ws_base.ProtoVer``."""

    NORMAL = 0  # JSON body
    HEARTBEAT = 1  # heartbeat / auth: int or JSON body, never compressed
    DEFLATE = 2  # zlib body holding several packets
    BROTLI = 3  # brotli body holding several packets


class Operation(enum.IntEnum):
    """Operation field. Source: blivedm ``ws_base.Operation`` (from the web player's JS)."""

    HANDSHAKE = 0
    HANDSHAKE_REPLY = 1
    HEARTBEAT = 2
    HEARTBEAT_REPLY = 3  # body: 4-byte big-endian popularity (then junk)
    SEND_MSG = 4
    SEND_MSG_REPLY = 5  # a command: JSON {"cmd": ..., ...}
    DISCONNECT_REPLY = 6
    AUTH = 7
    AUTH_REPLY = 8  # JSON {"code": 0}; -101 = token error
    RAW = 9
    PROTO_READY = 10
    PROTO_FINISH = 11
    CHANGE_ROOM = 12
    CHANGE_ROOM_REPLY = 13
    REGISTER = 14
    REGISTER_REPLY = 15
    UNREGISTER = 16
    UNREGISTER_REPLY = 17


class Packet(NamedTuple):
    header: Header
    body: bytes


# ----------------------------------------------------------------------------- pure functions


def pack(operation: Operation, body: bytes | str | Mapping[str, Any] = b"", *,
         ver: ProtoVer = ProtoVer.HEARTBEAT, seq_id: int = 1) -> bytes:
    """One packet: header + body (a mapping is JSON-encoded, a str UTF-8 encoded). Not compressed."""
    if isinstance(body, Mapping):
        body = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    if isinstance(body, str):
        body = body.encode("utf-8")
    header = Header(HEADER_SIZE + len(body), HEADER_SIZE, int(ver), int(operation), seq_id)
    return HEADER_STRUCT.pack(*header) + body


def _read_header(data: bytes | bytearray, offset: int) -> Header:
    header = Header._make(HEADER_STRUCT.unpack_from(data, offset))
    if header.header_len < HEADER_SIZE or header.pack_len < header.header_len:
        raise ProtocolError(f"bad packet header {header} at offset {offset}")
    if header.pack_len - header.header_len > MAX_BODY_SIZE:
        raise ProtocolError(f"packet body of {header.pack_len - header.header_len} bytes over {MAX_BODY_SIZE}")
    return header


def iter_packets(data: bytes) -> Iterator[Packet]:
    """The packets in ``data`` (a decompressed batch), in order; ProtocolError at the first bad or truncated
    one (the packets before it have been yielded)."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < HEADER_SIZE:
            raise ProtocolError(f"truncated header at offset {offset} of a {len(data)}-byte batch")
        header = _read_header(data, offset)
        end = offset + header.pack_len
        if end > len(data):
            raise ProtocolError(f"truncated packet at offset {offset}: needs {header.pack_len} bytes, "
                                f"{len(data) - offset} left")
        yield Packet(header, bytes(data[offset + header.header_len:end]))
        offset = end


def split_packets(data: bytes) -> list[Packet]:
    """All packets in ``data``; it must hold whole packets only, else ProtocolError."""
    return list(iter_packets(data))


def decompress(ver: int, payload: bytes, *, max_size: int = MAX_BODY_SIZE) -> bytes:
    """Inflate a version 2 (zlib) or 3 (brotli) body; pure and CPU-bound, so the client may run it in an
    executor. Raises ProtocolError on corrupt, truncated or oversized (over ``max_size``) data."""
    try:
        if ver == ProtoVer.DEFLATE:
            inflater = zlib.decompressobj()
            out = inflater.decompress(payload, max_size + 1)
            if len(out) > max_size or inflater.unconsumed_tail:
                raise ProtocolError(f"zlib batch inflates to more than {max_size} bytes")
            if not inflater.eof:
                raise ProtocolError("truncated zlib batch")
            return out
        if ver == ProtoVer.BROTLI:
            decoder = brotli.Decompressor()
            out = decoder.process(payload, output_buffer_limit=max_size + 1)
            if len(out) > max_size:
                raise ProtocolError(f"brotli batch inflates to more than {max_size} bytes")
            if not decoder.is_finished():
                raise ProtocolError("truncated brotli batch")
            return out
    except (zlib.error, brotli.error) as exc:
        raise ProtocolError(f"corrupt version {ver} batch: {exc}") from exc
    raise ProtocolError(f"version {ver} is not compressed")


def build_auth_body(*, uid: int, room_id: int, token: str, buvid: str = "", protover: int = 3) -> dict[str, Any]:
    """The web auth packet's JSON body (send within 5 s of connecting). ``token`` is getDanmuInfo's
    ``data.token`` (the ``key`` field, omitted when empty); ``buvid`` the buvid3 cookie."""
    body: dict[str, Any] = {"uid": uid, "roomid": room_id, "protover": protover, "platform": "web", "type": 2,
                            "buvid": buvid}
    if token:
        body["key"] = token
    return body


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class AuthOk:
    """AUTH_REPLY with code 0: the server will now push commands."""


@dataclass(frozen=True)
class Popularity:
    """HEARTBEAT_REPLY: the room's popularity number (the server's answer to our heartbeat)."""

    value: int


@dataclass(frozen=True)
class Notification:
    """A command pushed by the server. ``cmd`` is normalized ("DANMU_MSG:4:0:2:2:2:0" -> "DANMU_MSG")."""

    cmd: str
    data: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class CompressedBatch:
    """A compressed batch, returned instead of its contents when ``inline_decompress=False``: decompress
    ``payload`` with :func:`decompress` (in an executor) and feed the result to ``receive_batch``."""

    ver: int
    payload: bytes = field(repr=False)


ConnectionEvent = AuthOk | Popularity | Notification | CompressedBatch


class ConnectionState(enum.Enum):
    NEW = "new"  # nothing sent yet
    AUTHENTICATING = "authenticating"  # auth sent, no reply yet
    OPEN = "open"  # auth ok
    CLOSED = "closed"  # auth refused


class DanmakuConnection:
    """The state machine of one danmaku websocket connection (web or open platform: same framing).

    ``send_auth(body)`` then ``send_heartbeat()`` every 30 s queue packets for ``data_to_send()``;
    ``receive_message(bytes)`` decodes one websocket message (one or more whole packets) on its own and
    returns their events: nothing is carried from one message to the next. Malformed packets are logged
    (with ``room=``) and skipped; an auth reply with a code other than 0 raises :class:`AuthError` and
    closes the connection.
    """

    def __init__(self, *, room_id: int = 0, inline_decompress: bool = True) -> None:
        self.room_id = room_id
        self.inline_decompress = inline_decompress
        self.state = ConnectionState.NEW
        self.popularity = 0
        self._outgoing: list[bytes] = []
        self._seq = 0

    # -- sending

    def _queue(self, operation: Operation, body: bytes | str | Mapping[str, Any]) -> None:
        self._seq += 1
        self._outgoing.append(pack(operation, body, ver=ProtoVer.HEARTBEAT, seq_id=self._seq))

    def send_auth(self, body: Mapping[str, Any] | str) -> None:
        """Queue the auth packet: a web auth mapping (:func:`build_auth_body`) or the open platform's
        ``auth_body`` string, sent as is."""
        if self.state is not ConnectionState.NEW:
            raise InvalidStateError(f"send_auth in state {self.state.value}; auth is sent once, first")
        self._queue(Operation.AUTH, body)
        self.state = ConnectionState.AUTHENTICATING

    def send_heartbeat(self) -> None:
        """Queue a heartbeat (the server drops connections silent for about 60 s)."""
        if self.state is not ConnectionState.OPEN:
            raise InvalidStateError(f"send_heartbeat in state {self.state.value}; wait for AuthOk")
        self._queue(Operation.HEARTBEAT, b"{}")

    def data_to_send(self) -> list[bytes]:
        """The packets to write, one websocket binary message each; clears the queue."""
        out, self._outgoing = self._outgoing, []
        return out

    # -- receiving

    def receive_message(self, data: bytes) -> list[ConnectionEvent]:
        """Feed ONE websocket message; returns the events of the packets in it.

        Each message is a unit, decoded on its own (the server never splits a packet over two messages):
        a truncated last packet or junk after the last whole one costs that message's tail only and is never
        carried into the next message; bytes after a heartbeat reply's 4-byte popularity are ignored; an
        empty message is nothing to log."""
        if self.state is ConnectionState.CLOSED:
            logger.debug("room=%d data after close ignored bytes=%d", self.room_id, len(data))
            return []
        events: list[ConnectionEvent] = []
        offset, last_op = 0, -1
        while offset < len(data):
            left = len(data) - offset
            try:
                if left < HEADER_SIZE:
                    raise ProtocolError(f"{left} stray bytes after the last packet")
                header = _read_header(data, offset)
                if header.pack_len > left:
                    raise ProtocolError(f"truncated packet: needs {header.pack_len} bytes, {left} left")
            except ProtocolError as exc:
                # What some servers echo after a heartbeat reply is expected noise; anything else is worth a line.
                level = logging.DEBUG if last_op == Operation.HEARTBEAT_REPLY else logging.WARNING
                logger.log(level, "room=%d rest of message dropped offset=%d bytes=%d reason=%s", self.room_id,
                           offset, left, exc)
                break
            body = bytes(data[offset + header.header_len:offset + header.pack_len])
            offset += header.pack_len
            last_op = header.operation
            events.extend(self._handle_packet(Packet(header, body), depth=0))
        return events

    def receive_batch(self, raw: bytes) -> list[ConnectionEvent]:
        """Feed the decompressed contents of a :class:`CompressedBatch`."""
        return self._handle_batch(raw, depth=1)

    def _handle_batch(self, raw: bytes, depth: int) -> list[ConnectionEvent]:
        events: list[ConnectionEvent] = []
        offset = 0
        try:
            for packet in iter_packets(raw):
                offset += packet.header.pack_len
                events.extend(self._handle_packet(packet, depth=depth))
        except ProtocolError as exc:
            logger.warning("room=%d malformed batch, rest skipped offset=%d reason=%s", self.room_id, offset, exc)
        return events

    def _handle_packet(self, packet: Packet, depth: int) -> list[ConnectionEvent]:
        header, body = packet
        try:
            if header.ver in (ProtoVer.DEFLATE, ProtoVer.BROTLI):
                if depth > 0:
                    raise ProtocolError("compressed packet inside a compressed batch")
                if not self.inline_decompress:
                    return [CompressedBatch(header.ver, body)]
                return self._handle_batch(decompress(header.ver, body), depth=1)
            if header.ver not in (ProtoVer.NORMAL, ProtoVer.HEARTBEAT):
                raise ProtocolError(f"unknown protocol version {header.ver}")
            return self._handle_plain(header, body)
        except ProtocolError as exc:
            logger.warning("room=%d malformed packet skipped op=%d ver=%d len=%d reason=%s",
                           self.room_id, header.operation, header.ver, header.pack_len, exc)
            return []

    def _handle_plain(self, header: Header, body: bytes) -> list[ConnectionEvent]:
        op = header.operation
        if not body and op != Operation.AUTH_REPLY:
            logger.debug("room=%d empty packet op=%d", self.room_id, op)
            return []  # an empty body carries nothing: not worth a warning
        if op == Operation.HEARTBEAT_REPLY:
            if len(body) < 4:
                raise ProtocolError(f"heartbeat reply body of {len(body)} bytes, needs 4")
            self.popularity = int.from_bytes(body[:4], "big")
            return [Popularity(self.popularity)]
        if op == Operation.AUTH_REPLY:
            return self._handle_auth_reply(body)
        if op == Operation.SEND_MSG_REPLY:
            data = _json_object(body)
            cmd = data.get("cmd")
            if not isinstance(cmd, str) or not cmd:
                raise ProtocolError(f"command without a 'cmd' string: {body[:80]!r}")
            return [Notification(cmd.split(":", 1)[0], data)]
        logger.debug("room=%d packet ignored op=%d", self.room_id, op)
        return []

    def _handle_auth_reply(self, body: bytes) -> list[ConnectionEvent]:
        if self.state is not ConnectionState.AUTHENTICATING:
            raise ProtocolError(f"auth reply in state {self.state.value}")
        code = _json_object(body).get("code")
        if not isinstance(code, int):
            raise ProtocolError(f"auth reply without an int code: {body[:80]!r}")
        if code != 0:
            self.state = ConnectionState.CLOSED
            hint = " (token error: the getDanmuInfo token is missing, stale or for another room)" if code == -101 else ""
            raise AuthError(code, f"danmaku server refused auth: code={code}{hint}")
        self.state = ConnectionState.OPEN
        return [AuthOk()]


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"bad JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"JSON body is a {type(data).__name__}, expected an object")
    return data
