"""``liveidol eval --sheet PATH.png``: a contact sheet of every action at several compute levels.

One row per commandable action; for each step count a block of columns at fixed fractions of the action's
duration (``SHEET_TIMES``), each cell the generated frame at the output size, cropped to the region the
idol covers in any cell, scaled to ``cell_height`` and alpha-composited over a checkerboard (so specks,
halos and a soft matte show). Labels are drawn with a built-in 5x7 bitmap font (no imaging library).

The frames come from one rollout per step count over :func:`sheet_plan`: every action once, in library
order, each after the previous one has ended and a short idle.

Usage::

    info = write_sheet(gen, character, reference, Path("sheet.png"), steps=(1, 4))
    info["size"]  # [width, height] of the PNG
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backend.actions import ACTIONS, action
from backend.model.generator import ACTION_FPS, Conditions
from backend.pixelfont import draw_text
from backend.world.character import CharacterConfig
from backend.world.png import write_png

__all__ = ["SHEET_TIMES", "compose_sheet", "sheet_plan", "write_sheet"]

log = logging.getLogger(__name__)

SHEET_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)  # columns: fractions of the action's duration
SHEET_ACTIONS = tuple(a.name for a in ACTIONS if a.name not in ("idle", "talk"))
_GAP_S = 0.4  # idle between two actions
_CHECK = (200, 156)  # checkerboard greys
_BG = (32, 32, 40)

def sheet_plan(frames_per_chunk: int, fps: float = ACTION_FPS,
               actions: tuple[str, ...] = SHEET_ACTIONS) -> list[tuple[int, str]]:
    """(start frame, action) of every sheet action, chunk-aligned, each after the previous one ended + an idle gap."""
    out, g = [], -(-round(0.6 * fps) // frames_per_chunk) * frames_per_chunk
    for name in actions:
        out.append((g, name))
        g += round((action(name).duration_s + _GAP_S) * fps)
        g = -(-g // frames_per_chunk) * frames_per_chunk
    return out


def _rollout(gen: Any, reference: np.ndarray, steps: int, fps: float,
             actions: tuple[str, ...] = SHEET_ACTIONS) -> dict[str, list[np.ndarray]]:
    """The sheet plan at ``steps``: per action, the (H, W, 4) uint8 frames at ``SHEET_TIMES`` of its duration."""
    fpc = gen.frames_per_chunk()
    plan = sheet_plan(fpc, fps, actions)
    wanted = {}
    for start, name in plan:
        dur = round(action(name).duration_s * fps)
        for t in SHEET_TIMES:
            wanted[start + min(dur - 1, round(t * dur))] = name
    last = max(wanted) + 1
    out: dict[str, list[np.ndarray]] = {name: [] for _, name in plan}
    gen.reset(reference, Conditions())
    for g0 in range(0, last, fpc):
        current = None
        for i, (start, name) in enumerate(plan):
            if start <= g0:
                current = (i, start, name)
        if current is None or g0 >= current[1] + round(action(current[2]).duration_s * fps):
            cond = Conditions()
        else:
            cond = Conditions(current[2], serial=current[0] + 1)
        chunk = gen.next_chunk(cond, steps=steps)
        for i in range(chunk.shape[0]):
            if g0 + i in wanted:
                out[wanted[g0 + i]].append(np.asarray(chunk[i]).copy())
    return out


def _checker(h: int, w: int, square: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    light = ((yy // square + xx // square) % 2 == 0)[..., None]
    return np.where(light, np.array(_CHECK[0], np.float32), np.array(_CHECK[1], np.float32)).astype(np.float32)


def compose_sheet(rows: dict[str, dict[int, list[np.ndarray]]], *, cell_height: int = 128,
                  title: str = "") -> np.ndarray:
    """rows[action][steps] = frames (H, W, 4) uint8 straight alpha at ``SHEET_TIMES`` -> the sheet (H, W, 3) uint8.

    Every cell is cropped to the union of all cells' mattes (plus a margin), scaled to ``cell_height`` and
    composited over a checkerboard. Layout: a label column, then one block of columns per step count."""
    if not rows:
        raise ValueError("compose_sheet: no rows")
    steps_list = sorted(next(iter(rows.values())))
    frames = [f for r in rows.values() for s in r.values() for f in s]
    fh, fw = frames[0].shape[:2]
    alpha = np.zeros((fh, fw), dtype=bool)
    for f in frames:
        alpha |= f[..., 3] > 16
    ys, xs = np.nonzero(alpha)
    if ys.size:
        m = max(2, round(0.06 * fh))
        y0, y1, x0, x1 = max(0, ys.min() - m), min(fh, ys.max() + 1 + m), max(0, xs.min() - m), min(fw, xs.max() + 1 + m)
    else:
        y0, y1, x0, x1 = 0, fh, 0, fw
    ch = cell_height
    cw = max(8, round(ch * (x1 - x0) / (y1 - y0)))
    scale = 2
    label_w = 6 * scale * max(len(n) for n in rows) + 16
    pad, head = 4, 7 * scale * 2 + 32
    n_cols = len(SHEET_TIMES)
    block_w = n_cols * (cw + pad) + 12
    width = label_w + len(steps_list) * block_w
    height = head + len(rows) * (ch + pad) + 4
    sheet = np.empty((height, width, 3), dtype=np.uint8)
    sheet[:] = _BG
    if title:
        draw_text(sheet, title, 6, 4, scale)
    checker = _checker(ch, cw, max(4, ch // 16))
    for b, st in enumerate(steps_list):
        bx = label_w + b * block_w
        draw_text(sheet, f"{st} step" + ("s" if st != 1 else ""), bx, 4 + 7 * scale + 6, scale)
        for j, t in enumerate(SHEET_TIMES):
            draw_text(sheet, f"{t:.1f}", bx + j * (cw + pad) + 2, head - 7 - 3, 1)
    for r, (name, by_steps) in enumerate(rows.items()):
        ry = head + r * (ch + pad)
        draw_text(sheet, name, 6, ry + ch // 2 - 7, scale)
        for b, st in enumerate(steps_list):
            for j, f in enumerate(by_steps[st]):
                crop = torch.from_numpy(np.ascontiguousarray(f[y0:y1, x0:x1])).permute(2, 0, 1)[None].float() / 255.0
                pm = torch.cat([crop[:, :3] * crop[:, 3:], crop[:, 3:]], 1)  # premultiplied for resampling
                pm = F.interpolate(pm, size=(ch, cw), mode="area" if ch < (y1 - y0) else "bilinear")[0]
                rgb = pm[:3].permute(1, 2, 0).numpy() * 255.0
                a = pm[3:].permute(1, 2, 0).numpy()
                cell = rgb + checker * (1.0 - a)
                cx = label_w + b * block_w + j * (cw + pad)
                sheet[ry:ry + ch, cx:cx + cw] = np.clip(cell + 0.5, 0, 255).astype(np.uint8)
    return sheet


def write_sheet(gen: Any, character: CharacterConfig, reference: np.ndarray, path: Path, *,
                steps: tuple[int, ...] = (1, 4), fps: float = ACTION_FPS, cell_height: int = 128,
                actions: tuple[str, ...] = SHEET_ACTIONS) -> dict[str, Any]:
    """Roll out the sheet plan at each of ``steps`` with ``gen`` and write the contact sheet PNG to ``path``."""
    per_steps = {}
    for st in steps:
        log.info("contact sheet rollout character=%s steps=%d", character.name, st)
        per_steps[st] = _rollout(gen, reference, st, fps, actions)
    rows = {name: {st: per_steps[st][name] for st in steps} for name in actions}
    w, h = gen.output_size
    title = f"{character.name}  {w}x{h}  chunk {gen.cfg.chunk_frames}  columns: share of the action's duration"
    image = compose_sheet(rows, cell_height=cell_height, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, image)
    log.info("contact sheet written path=%s size=%dx%d", path, image.shape[1], image.shape[0])
    return {"path": str(path), "size": [int(image.shape[1]), int(image.shape[0])], "steps": list(steps),
            "times": list(SHEET_TIMES), "actions": list(actions)}
