"""A minimal msgpack decoder (standard library only) for the OBS script.

OBS's Python may lack third-party packages, so the source script decodes the backend's messages with
this module.  It covers the whole msgpack type system except extension types (which the LiveIdol
protocol never sends): nil, booleans, integers, float32/64, str, bin, arrays and maps.

``bin`` values decode to ``bytes``; ``unpackb(data)`` decodes exactly one object and fails if bytes remain.
Spec: https://github.com/msgpack/msgpack/blob/master/spec.md

Usage::

    msg = unpackb(payload)   # {"type": "frame", "seq": 3, "data": b"...", ...}
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["MsgpackError", "unpackb"]

_MAX_DEPTH = 32

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")

# Fixed-width scalars: first byte -> struct (spec: "int format family", "float format family").
_SCALARS = {0xCA: _F32, 0xCB: _F64, 0xCC: None, 0xCD: _U16, 0xCE: _U32, 0xCF: _U64,
            0xD0: _I8, 0xD1: _I16, 0xD2: _I32, 0xD3: _I64}
# Length prefixes of str / bin / array / map (spec: 8/16/32-bit variants).
_STR = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_ARRAY = {0xDC: 2, 0xDD: 4}
_MAP = {0xDE: 2, 0xDF: 4}


class MsgpackError(ValueError):
    """The bytes are not one well-formed msgpack object of the supported subset."""


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.pos = 0

    def take(self, n: int) -> bytes | memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise MsgpackError(f"truncated: need {n} bytes at offset {self.pos}, have {len(self.data) - self.pos}")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def length(self, width: int) -> int:
        raw = self.take(width)
        return raw[0] if width == 1 else (_U16 if width == 2 else _U32).unpack(raw)[0]

    def decode(self, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise MsgpackError(f"nesting deeper than {_MAX_DEPTH} at offset {self.pos}")
        at = self.pos
        b = self.take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F, at)
        if 0x90 <= b <= 0x9F:
            return self.array(b & 0x0F, depth)
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F, depth, at)
        if b == 0xC0:
            return None
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        if b in _SCALARS:
            fmt = _SCALARS[b]
            return self.take(1)[0] if fmt is None else fmt.unpack(self.take(fmt.size))[0]
        if b in _STR:
            return self.text(self.length(_STR[b]), at)
        if b in _BIN:
            return bytes(self.take(self.length(_BIN[b])))
        if b in _ARRAY:
            return self.array(self.length(_ARRAY[b]), depth)
        if b in _MAP:
            return self.map(self.length(_MAP[b]), depth, at)
        raise MsgpackError(f"unsupported msgpack type byte 0x{b:02x} at offset {at}")

    def text(self, n: int, at: int) -> str:
        try:
            return bytes(self.take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MsgpackError(f"invalid UTF-8 in str at offset {at}") from exc

    def array(self, n: int, depth: int) -> list[Any]:
        return [self.decode(depth + 1) for _ in range(n)]

    def map(self, n: int, depth: int, at: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for _ in range(n):
            key = self.decode(depth + 1)
            try:
                out[key] = self.decode(depth + 1)
            except TypeError as exc:  # an unhashable key (array/map)
                raise MsgpackError(f"unhashable map key {type(key).__name__} in map at offset {at}") from exc
        return out


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    """Decode exactly one msgpack object from ``data``; raise :class:`MsgpackError` if malformed."""
    reader = _Reader(data)
    obj = reader.decode()
    if reader.pos != len(reader.data):
        raise MsgpackError(f"{len(reader.data) - reader.pos} extra bytes after the object at offset {reader.pos}")
    return obj
