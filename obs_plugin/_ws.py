"""A minimal RFC 6455 websocket client (standard library only) for the OBS script.

Two layers, as in the ``websockets`` library:

* a sans-I/O core: :func:`handshake_request` / :func:`check_handshake_response` for the opening
  handshake, :func:`encode_frame` for (masked) client frames and :class:`Protocol`, a state machine
  that takes received bytes (``receive_data``), returns complete messages (text, binary, close) with
  fragments joined, answers pings and closes by itself (``data_to_send``);
* :class:`WebSocket`, a thin blocking wrapper over a socket, used from the script's network thread.

Usage::

    with connect("ws://127.0.0.1:8765/stream", timeout=5) as ws:
        while (msg := ws.recv()) is not None:   # bytes (binary) or str (text); None after a close
            ...

Not supported (not needed by LiveIdol): extensions (permessage-deflate), subprotocols, proxies.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import socket
import ssl
import struct
import urllib.parse
from dataclasses import dataclass

__all__ = [
    "Close",
    "ConnectionClosed",
    "HandshakeError",
    "Opcode",
    "Protocol",
    "ProtocolError",
    "WebSocket",
    "WebSocketError",
    "accept_key",
    "check_handshake_response",
    "connect",
    "encode_frame",
    "handshake_request",
    "parse_url",
]

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_MAX_HEADER_BYTES = 16384


class WebSocketError(Exception):
    """Base class of this module's errors."""


class HandshakeError(WebSocketError):
    """The server did not accept the opening handshake (wrong status, headers or key)."""


class ProtocolError(WebSocketError):
    """The server broke RFC 6455 (or a message exceeded the size limit); ``code`` is the close code to send."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


class ConnectionClosed(WebSocketError):
    """The connection is closed; sending is no longer possible."""


class Opcode(enum.IntEnum):
    """Frame opcodes, RFC 6455 section 5.2."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


@dataclass(frozen=True)
class Close:
    """The peer's close frame (code 1005 when it carried none)."""

    code: int
    reason: str


# ---------------------------------------------------------------------------------------------
# Opening handshake (RFC 6455 section 4.1)
# ---------------------------------------------------------------------------------------------


def parse_url(url: str) -> tuple[bool, str, int, str]:
    """Split ``ws://host:port/path?query`` into (secure, host, port, resource); ValueError if not a ws URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a websocket URL (expected ws:// or wss://): {url!r}")
    if not parts.hostname:
        raise ValueError(f"websocket URL has no host: {url!r}")
    secure = parts.scheme == "wss"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError as exc:
        raise ValueError(f"websocket URL has a bad port: {url!r}") from exc
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return secure, parts.hostname, port, resource


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1((key + _GUID).encode("ascii")).digest()).decode("ascii")


def handshake_request(host: str, port: int, resource: str, key: str,
                      headers: dict[str, str] | None = None) -> bytes:
    """The HTTP upgrade request that opens a websocket."""
    host_header = host if port in (80, 443) else f"{host}:{port}"
    if ":" in host and not host.startswith("["):  # IPv6 literal
        host_header = f"[{host}]:{port}"
    lines = [
        f"GET {resource} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check_handshake_response(head: bytes, key: str) -> None:
    """Validate the server's response head (up to the blank line); raise :class:`HandshakeError`."""
    text = head.decode("latin-1")
    status_line, _, rest = text.partition("\r\n")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1."):
        raise HandshakeError(f"not an HTTP response: {status_line[:80]!r}")
    if fields[1] != "101":
        raise HandshakeError(f"server refused the websocket upgrade: {status_line.strip()[:120]}")
    headers: dict[str, str] = {}
    for line in rest.split("\r\n"):
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError("missing 'Upgrade: websocket' in the server's response")
    if "upgrade" not in headers.get("connection", "").lower():
        raise HandshakeError("missing 'Connection: Upgrade' in the server's response")
    if headers.get("sec-websocket-accept") != accept_key(key):
        raise HandshakeError("wrong Sec-WebSocket-Accept in the server's response")
    if headers.get("sec-websocket-extensions"):
        raise HandshakeError(f"server chose an extension this client did not offer: {headers['sec-websocket-extensions']}")


# ---------------------------------------------------------------------------------------------
# Framing (RFC 6455 section 5)
# ---------------------------------------------------------------------------------------------


def _mask(payload: bytes, mask_key: bytes) -> bytes:
    # XOR with the repeated 4-byte key, done as one big integer operation (fast in CPython).
    n = len(payload)
    if n == 0:
        return b""
    key = (mask_key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def encode_frame(opcode: Opcode, payload: bytes = b"", *, fin: bool = True, mask_key: bytes | None = None) -> bytes:
    """One frame; clients must mask (``mask_key``: 4 bytes, random per frame; None leaves it unmasked)."""
    head = bytearray([(0x80 if fin else 0) | int(opcode)])
    mask_bit = 0x80 if mask_key is not None else 0
    n = len(payload)
    if n < 126:
        head.append(mask_bit | n)
    elif n < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack(">H", n)
    else:
        head.append(mask_bit | 127)
        head += struct.pack(">Q", n)
    if mask_key is None:
        return bytes(head) + payload
    if len(mask_key) != 4:
        raise ValueError("mask_key must be 4 bytes")
    return bytes(head) + mask_key + _mask(payload, mask_key)


class Protocol:
    """Client-side RFC 6455 state machine, without I/O.

    ``receive_data(data)`` parses what arrived and returns the complete messages: ``str`` (text),
    ``bytes`` (binary) and :class:`Close`.  Pings are answered and a peer's close is echoed through
    ``data_to_send()``; ``send(...)`` / ``close(...)`` queue outgoing (masked) frames.
    """

    def __init__(self, *, max_size: int | None = 64 * 1024 * 1024, mask: bool = True) -> None:
        self.max_size = max_size
        self._masking = mask
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._frag_opcode: Opcode | None = None
        self._frag: list[bytes] = []
        self._frag_len = 0
        self.close_sent = False
        self.close_received: Close | None = None

    # -- outgoing --------------------------------------------------------------------------------
    def _frame(self, opcode: Opcode, payload: bytes) -> None:
        if self.close_sent:
            raise ConnectionClosed("close already sent")
        self._out.append(encode_frame(opcode, payload, mask_key=os.urandom(4) if self._masking else None))

    def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._frame(Opcode.TEXT, message.encode("utf-8"))
        else:
            self._frame(Opcode.BINARY, bytes(message))

    def ping(self, payload: bytes = b"") -> None:
        if len(payload) > 125:
            raise ValueError("ping payload must be at most 125 bytes")
        self._frame(Opcode.PING, payload)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.close_sent:
            body = b"" if code == 1005 else struct.pack(">H", code) + reason.encode("utf-8")[:123]
            self._frame(Opcode.CLOSE, body)
            self.close_sent = True

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    # -- incoming --------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[str | bytes | Close]:
        self._buf += data
        messages: list[str | bytes | Close] = []
        while self.close_received is None:
            frame = self._next_frame()
            if frame is None:
                break
            msg = self._handle(*frame)
            if msg is not None:
                messages.append(msg)
        return messages

    def _next_frame(self) -> tuple[bool, Opcode, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        if b0 & 0x70:
            raise ProtocolError("reserved bits set (no extension was negotiated)")
        try:
            opcode = Opcode(b0 & 0x0F)
        except ValueError:
            raise ProtocolError(f"unknown opcode 0x{b0 & 0x0F:x}") from None
        fin = bool(b0 & 0x80)
        masked = bool(b1 & 0x80)
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            n = struct.unpack_from(">H", buf, 2)[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n = struct.unpack_from(">Q", buf, 2)[0]
            pos = 10
        if opcode >= Opcode.CLOSE and (n > 125 or not fin):
            raise ProtocolError("control frame too long or fragmented")
        if self.max_size is not None and self._frag_len + n > self.max_size:
            raise ProtocolError(f"message larger than max_size={self.max_size} bytes", code=1009)
        mask_key = b""
        if masked:  # servers must not mask (section 5.1); tolerate it for a test peer
            if len(buf) < pos + 4:
                return None
            mask_key = bytes(buf[pos:pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos:pos + n])
        del buf[:pos + n]  # bytearray deletes from the front in O(1) amortized
        if masked:
            payload = _mask(payload, mask_key)
        return fin, opcode, payload

    def _handle(self, fin: bool, opcode: Opcode, payload: bytes) -> str | bytes | Close | None:
        if opcode == Opcode.PING:
            if not self.close_sent:
                self._frame(Opcode.PONG, payload)
            return None
        if opcode == Opcode.PONG:
            return None
        if opcode == Opcode.CLOSE:
            if len(payload) == 1:
                raise ProtocolError("close frame with a 1-byte payload")
            code = struct.unpack(">H", payload[:2])[0] if payload else 1005
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError("close reason is not UTF-8") from exc
            self.close_received = Close(code, reason)
            if not self.close_sent:
                self.close(1000 if code == 1005 else code)
            return self.close_received
        if opcode == Opcode.CONT:
            if self._frag_opcode is None:
                raise ProtocolError("continuation frame without a started message")
        elif self._frag_opcode is not None:
            raise ProtocolError("new data frame while a fragmented message is unfinished")
        else:
            self._frag_opcode = opcode
        self._frag.append(payload)
        self._frag_len += len(payload)
        if not fin:
            return None
        data = self._frag[0] if len(self._frag) == 1 else b"".join(self._frag)
        kind = self._frag_opcode
        self._frag_opcode, self._frag, self._frag_len = None, [], 0
        if kind == Opcode.TEXT:
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError("text message is not UTF-8", code=1007) from exc
        return data


# ---------------------------------------------------------------------------------------------
# Blocking wrapper
# ---------------------------------------------------------------------------------------------


class WebSocket:
    """A connected client websocket over a blocking socket. Not thread-safe except :meth:`abort`."""

    def __init__(self, sock: socket.socket, protocol: Protocol, *, recv_size: int = 1 << 20) -> None:
        self.sock = sock
        self.protocol = protocol
        self._pending: list[str | bytes | Close] = []
        self._recv_size = recv_size
        self.closed = False

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _flush(self) -> None:
        data = self.protocol.data_to_send()
        if data:
            self.sock.sendall(data)

    def recv(self) -> str | bytes | None:
        """The next message (str or bytes), or None once the connection closed cleanly.

        Raises ``TimeoutError`` on the socket timeout, :class:`ConnectionClosed` if the TCP
        connection dropped without a close frame, :class:`ProtocolError` on bad frames.
        """
        while True:
            while self._pending:
                msg = self._pending.pop(0)
                if isinstance(msg, Close):
                    self._finish()
                    return None
                return msg
            if self.closed:
                return None
            data = self.sock.recv(self._recv_size)
            if not data:
                self._finish()
                raise ConnectionClosed("connection dropped without a close frame")
            try:
                self._pending.extend(self.protocol.receive_data(data))
            except ProtocolError as exc:
                self._send_quietly(exc.code)
                raise
            self._flush()

    def send(self, message: str | bytes) -> None:
        self.protocol.send(message)
        self._flush()

    def ping(self, payload: bytes = b"") -> None:
        self.protocol.ping(payload)
        self._flush()

    def _send_quietly(self, code: int) -> None:
        try:
            self.protocol.close(code)
            self._flush()
        except (OSError, ConnectionClosed):
            pass
        self._finish()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (if not yet sent) and close the socket (without waiting for the echo)."""
        if self.closed:
            return
        try:
            self.protocol.close(code, reason)
            self._flush()
        except (OSError, ConnectionClosed):
            pass
        self._finish()

    def abort(self) -> None:
        """Close the socket from another thread, unblocking a pending :meth:`recv`."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _finish(self) -> None:
        self.closed = True
        self.sock.close()


def connect(url: str, *, timeout: float | None = 10.0, headers: dict[str, str] | None = None,
            max_size: int | None = 64 * 1024 * 1024) -> WebSocket:
    """Open a websocket (TCP connect + handshake). ``timeout`` also applies to later reads."""
    secure, host, port, resource = parse_url(url)
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        sock.sendall(handshake_request(host, port, resource, key, headers))
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise HandshakeError("connection closed during the websocket handshake")
            buf += chunk
            if len(buf) > _MAX_HEADER_BYTES:
                raise HandshakeError("handshake response headers too large")
        head, _, rest = buf.partition(b"\r\n\r\n")
        check_handshake_response(head, key)
        ws = WebSocket(sock, Protocol(max_size=max_size))
        if rest:
            ws._pending.extend(ws.protocol.receive_data(rest))
        return ws
    except BaseException:
        sock.close()
        raise
