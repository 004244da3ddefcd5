"""Minimal PNG read/write (8-bit grey/RGB/RGBA, non-interlaced) with zlib only: no Pillow needed.

Used for background images, custom reference images and contact sheets of the procedural world.
PNG layout (RFC 2083): signature, then chunks ``length | type | data | crc32``; IHDR, IDAT..., IEND;
each scanline is prefixed by a filter byte (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["PngError", "read_png", "write_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> channels (grey, RGB, grey+alpha, RGBA)


class PngError(ValueError):
    """A file is not a PNG this reader supports; the message names the file and why."""


def _unfilter(raw: bytes, h: int, w: int, ch: int) -> np.ndarray:
    stride = w * ch
    out = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    pos = 0
    for y in range(h):
        ftype = raw[pos]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=pos + 1).astype(np.int32)
        pos += stride + 1
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        elif ftype == 1:
            cur = np.cumsum(line.reshape(w, ch), axis=0).reshape(stride) & 0xFF
        elif ftype in (3, 4):
            cur = np.zeros(stride, dtype=np.int32)
            zero = np.zeros(ch, dtype=np.int32)
            for x in range(0, stride, ch):  # sequential dependency on the left pixel; channels at once
                a = cur[x - ch:x] if x else zero
                b = prev[x:x + ch]
                if ftype == 3:
                    pred = (a + b) // 2
                else:
                    c = prev[x - ch:x] if x else zero
                    p = a + b - c
                    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
                    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
                cur[x:x + ch] = (line[x:x + ch] + pred) & 0xFF
        else:
            raise PngError(f"bad filter type {ftype} on row {y}")
        out[y] = cur
        prev = cur
    return out.reshape(h, w, ch)


def read_png(path: str | Path) -> np.ndarray:
    """(H, W, C) uint8 with C = 1, 2, 3 or 4 as stored."""
    data = Path(path).read_bytes()
    if not data.startswith(_SIGNATURE):
        raise PngError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
    if header is None:
        raise PngError(f"{path}: no IHDR chunk")
    w, h, depth, ctype_, _comp, _filt, interlace = header
    if depth != 8 or ctype_ not in _CHANNELS or interlace:
        raise PngError(f"{path}: unsupported PNG (bit depth {depth}, colour type {ctype_}, interlace {interlace}); "
                       "use 8-bit RGB/RGBA non-interlaced")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise PngError(f"{path}: corrupt image data: {exc}") from exc
    ch = _CHANNELS[ctype_]
    if len(raw) < h * (w * ch + 1):
        raise PngError(f"{path}: truncated image data")
    return _unfilter(raw, h, w, ch)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write (H, W), (H, W, 3) or (H, W, 4) uint8 as PNG (filter None, zlib level 6)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"image {img.shape} {img.dtype}: expected (H, W[, 1|3|4]) uint8")
    h, w, ch = img.shape
    ctype = {1: 0, 3: 2, 4: 6}[ch]
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * ch)], axis=1).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    out = (_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ctype, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    Path(path).write_bytes(out)
