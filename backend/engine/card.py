"""The "starting" card: what OBS shows while the model loads, drawn with numpy alone (no torch, no fonts).

A translucent violet panel (the OBS source's own "waiting" colours) over a transparent frame, "LIVEIDOL IS
STARTING" in a 5x7 pixel font scaled to the frame, and three dots of which one is lit per ``phase``, so the
picture visibly moves while the backend loads.

Usage::

    rgba = starting_card(960, 540, phase=seq // 5)    # (540, 960, 4) uint8, straight alpha
"""

from __future__ import annotations

import numpy as np

from backend.pixelfont import text_mask

__all__ = ["CARD_TEXT", "starting_card"]

CARD_TEXT = "LIVEIDOL IS STARTING"

_PANEL = np.array([96, 64, 160, 204], np.uint8)  # the OBS source's violet, 80% opaque
_INK = np.array([255, 255, 255, 255], np.uint8)
_DIM = np.array([200, 110, 170, 255], np.uint8)


def starting_card(width: int, height: int, *, phase: int = 0) -> np.ndarray:
    """The card at ``width`` x ``height``: (height, width, 4) uint8 with straight alpha."""
    if width < 16 or height < 16:
        raise ValueError(f"starting card needs at least 16x16 pixels, got {width}x{height}")
    out = np.zeros((height, width, 4), np.uint8)
    text = text_mask(CARD_TEXT)
    th, tw = text.shape
    scale = max(1, min((width * 7 // 10) // tw, (height // 6) // th))
    pw, ph = (tw + 8) * scale, (th + 8) * scale  # panel: margin, text, gap, dots, margin
    pw, ph = min(pw, width), min(ph, height)
    x0, y0 = (width - pw) // 2, (height - ph) // 2
    out[y0:y0 + ph, x0:x0 + pw] = _PANEL
    big = np.repeat(np.repeat(text, scale, axis=0), scale, axis=1)  # (th*scale, tw*scale)
    tx, ty = (width - big.shape[1]) // 2, y0 + 2 * scale
    region = out[ty:ty + big.shape[0], tx:tx + big.shape[1]]
    region[big[:region.shape[0], :region.shape[1]]] = _INK
    dot = max(2, 2 * scale)
    dy = ty + big.shape[0] + 2 * scale
    for i in range(3):
        dx = width // 2 + (i - 1) * 3 * dot - dot // 2
        out[dy:dy + dot, dx:dx + dot] = _INK if i == phase % 3 else _DIM
    return out
