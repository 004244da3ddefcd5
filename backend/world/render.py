"""The procedural idol renderer: identity (B, I) + poses (B, T, P) -> RGBA frames (B, T, 4, H, W).

A stylised 2D idol drawn with anti-aliased signed-distance shapes (coverage = a smoothstep over
about one pixel) composited back to front in torch, vectorised over batch and time: every shape is a
few elementwise ops on (N, H, W) tensors with per-frame parameters broadcast from (N, 1, 1), so the
whole batch renders in one pass on any device. Output RGB is premultiplied by alpha (RGB = 0 where
the background is, alpha = the idol's matte). Deterministic: no randomness, no atomics.

Geometry is written in design pixels of a 256x144 frame (see ``backend.world.pose``); other sizes
scale it by height and keep the idol centred. The 256x144 design frame shows the idol from the head to the waist
(the ``half`` framing); the world draws her whole, skirt, legs and shoes below it, and the ``whole`` framing
(``FRAMINGS``) shows the design window from the hair to the shoes.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import torch
from torch import Tensor

from backend.config import ConfigError
from backend.world.character import (
    EYE_SHAPES,
    HAIR_STYLES,
    IDENTITY_DIM,
    OUTFITS,
    PALETTE_KEYS,
    CharacterConfig,
    identity_tensor,
    load_image_rgba,
)
from backend.world.pose import ARM_FORE, HIP, POSE_INDEX, POSE_PARAMS, REST_POSE, Skeleton, skeleton

__all__ = ["DESIGN_SIZE", "FRAMINGS", "character_reference", "check_framing", "design_frame", "premultiplied",
           "reference_frame", "reframe", "render", "straight_alpha"]

DESIGN_SIZE = (256, 144)
# What a frame shows, as the design window's (top y, height) in design pixels, centred on the design frame's
# x centre: 'half' is the design frame itself (head to waist); 'whole' the idol from the hair to the shoes.
Framing = Literal["half", "whole"]
FRAMINGS: dict[str, tuple[float, float]] = {"half": (0.0, 144.0), "whole": (4.0, 214.0)}
WAIST = 156.0  # the torso's lower edge (body coordinates): below the half framing's bottom even at full sway
_P = len(POSE_PARAMS)
_PAL = {k: slice(3 * i, 3 * i + 3) for i, k in enumerate(PALETTE_KEYS)}
_OFF = 3 * len(PALETTE_KEYS)
_HAIR = {k: _OFF + i for i, k in enumerate(HAIR_STYLES)}
_EYE = {k: _OFF + len(HAIR_STYLES) + i for i, k in enumerate(EYE_SHAPES)}
_OUTFIT = {k: _OFF + len(HAIR_STYLES) + len(EYE_SHAPES) + i for i, k in enumerate(OUTFITS)}
_DARK = (0.16, 0.10, 0.16)


# ---------------------------------------------------------------------------------------------
# Signed distances (design pixels; negative inside). Inputs broadcast: points (1,H,W), params (N,1,1).
# ---------------------------------------------------------------------------------------------


def _len(x: Tensor, y: Tensor) -> Tensor:
    return torch.sqrt(x * x + y * y + 1e-8)


def sd_circle(x: Tensor, y: Tensor, r: Tensor | float) -> Tensor:
    return _len(x, y) - r


def sd_ellipse(x: Tensor, y: Tensor, rx: Tensor | float, ry: Tensor | float) -> Tensor:
    """Approximate ellipse distance (exact on the axes, good to a fraction of a pixel near the edge)."""
    k0 = _len(x / rx, y / ry)
    k1 = _len(x / (rx * rx), y / (ry * ry))
    return k0 * (k0 - 1.0) / k1


def sd_capsule(x: Tensor, y: Tensor, ax: Tensor | float, ay: Tensor | float, bx: Tensor | float,
               by: Tensor | float, ra: Tensor | float, rb: Tensor | float | None = None) -> Tensor:
    """Segment a-b with radius ra at a and rb at b (tapered when rb differs)."""
    pax, pay = x - ax, y - ay
    bax, bay = bx - ax, by - ay
    h = ((pax * bax + pay * bay) / (bax * bax + bay * bay + 1e-6)).clamp(0.0, 1.0)
    r = ra if rb is None else ra + (rb - ra) * h
    return _len(pax - bax * h, pay - bay * h) - r


def sd_box(x: Tensor, y: Tensor, hx: Tensor | float, hy: Tensor | float, r: float = 0.0) -> Tensor:
    qx, qy = x.abs() - hx + r, y.abs() - hy + r
    return _len(qx.clamp(min=0), qy.clamp(min=0)) + torch.maximum(qx, qy).clamp(max=0) - r


def sd_heart(x: Tensor, y: Tensor) -> Tensor:
    """Unit heart (Inigo Quilez), tip at the origin, lobes up to y ~ 1, y pointing UP."""
    x = x.abs()
    upper = _len(x - 0.25, y - 0.75) - math.sqrt(2.0) / 4.0
    t = ((x + y) * 0.5).clamp(min=0)
    lower = torch.sqrt(torch.minimum(x * x + (y - 1.0) ** 2, (x - t) ** 2 + (y - t) ** 2) + 1e-8) * torch.sign(x - y)
    return torch.where(y + x > 1.0, upper, lower)


def _rotate(x: Tensor, y: Tensor, cx: Tensor | float, cy: Tensor | float, angle: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinates of (x, y) in a frame centred at (cx, cy) and rotated by ``angle`` (radians)."""
    c, s = torch.cos(angle), torch.sin(angle)
    dx, dy = x - cx, y - cy
    return c * dx + s * dy, -s * dx + c * dy


# ---------------------------------------------------------------------------------------------
# Canvas: premultiplied RGB + alpha, "over" compositing
# ---------------------------------------------------------------------------------------------


class _Canvas:
    def __init__(self, rgb: Tensor, alpha: Tensor, X: Tensor, Y: Tensor, px: float, ox: float, oy: float) -> None:
        self.rgb, self.alpha = rgb, alpha  # (N, 3, H, W) premultiplied, (N, H, W); may be views
        self.X, self.Y = X, Y              # (1, 1, W), (1, H, 1) design coordinates of pixel centres
        self.px, self.ox, self.oy = px, ox, oy  # design units per pixel, -(design x), design y of the frame's edges

    def roi(self, xs: Tensor, ys: Tensor, mx: float, my: float) -> _Canvas:
        """A view of the canvas over the bounding box of points ``xs``/``ys`` (any shape, design px), all frames,
        grown by ``mx``/``my``: shapes known to lie inside are only evaluated there (one host sync)."""
        x0, x1, y0, y1 = torch.stack([xs.min(), xs.max(), ys.min(), ys.max()]).tolist()
        h, w = self.alpha.shape[-2:]
        c0 = max(0, math.floor((x0 - mx + self.ox) / self.px))
        c1 = min(w, math.ceil((x1 + mx + self.ox) / self.px) + 1)
        r0 = min(h, max(0, math.floor((y0 - my - self.oy) / self.px)))
        r1 = min(h, math.ceil((y1 + my - self.oy) / self.px) + 1)
        c0 = min(w, c0)
        c1, r1 = max(c0, c1), max(r0, r1)
        return _Canvas(self.rgb[..., r0:r1, c0:c1], self.alpha[..., r0:r1, c0:c1], self.X[..., c0:c1],
                       self.Y[:, r0:r1], self.px, self.ox, self.oy)

    def coverage(self, d: Tensor) -> Tensor:
        x = (0.5 - d / self.px).clamp(0.0, 1.0)  # ~1 px smoothstep ramp centred on the edge
        return x * x * (3.0 - 2.0 * x)

    def over(self, cov: Tensor, colour: Tensor) -> None:
        """Composite ``colour`` (N, 3) with coverage ``cov`` (N, H, W) over the canvas."""
        cov = cov.expand_as(self.alpha)
        c = cov.unsqueeze(1)
        self.rgb.mul_(1.0 - c).add_(colour[:, :, None, None] * c)
        self.alpha.mul_(1.0 - cov).add_(cov)

    def fill(self, d: Tensor, colour: Tensor, *, weight: Tensor | float = 1.0, outline: float = 0.0) -> None:
        """Fill the shape ``d`` < 0, first with a darker outline of ``outline`` design px when > 0."""
        if outline > 0:
            self.over(self.coverage(d - outline) * weight, colour * 0.42)
        self.over(self.coverage(d) * weight, colour)


def _union(*ds: Tensor) -> Tensor:
    out = ds[0]
    for d in ds[1:]:
        out = torch.minimum(out, d)
    return out


def _ramp(x: Tensor, lo: float, hi: float) -> Tensor:
    """0 below ``lo``, 1 above ``hi``, smooth in between."""
    u = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _v(t: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1) for broadcasting against the pixel grid."""
    return t[:, None, None]


def _const(colour: tuple[float, float, float], n: int, like: Tensor) -> Tensor:
    return torch.tensor(colour, device=like.device, dtype=like.dtype).expand(n, 3)


# ---------------------------------------------------------------------------------------------
# render
# ---------------------------------------------------------------------------------------------


def check_framing(framing: str, where: str = "framing") -> Framing:
    """``framing`` if it names one of ``FRAMINGS``, else a ValueError that says ``where`` it came from."""
    if framing not in FRAMINGS:
        raise ValueError(f"{where} = {framing!r}: expected one of {', '.join(map(repr, FRAMINGS))}")
    return cast(Framing, framing)


@torch.no_grad()
def design_frame(size: tuple[int, int], framing: str = "half") -> tuple[float, float, float]:
    """How a frame of ``size`` (width, height) holds the design window of ``framing``: ``(scale, ox, oy)``,
    pixels per design pixel (scaled by height), minus the design x at the frame's left edge (positive when the
    frame is wider than the design frame: centred) and the design y at its top edge. A design point (x, y) lands at
    pixel ((x + ox) * scale, (y - oy) * scale)."""
    top, height = FRAMINGS[check_framing(framing)]
    scale = size[1] / height
    return scale, (size[0] / scale - DESIGN_SIZE[0]) / 2.0, top


def reframe(frames: Tensor, framing: str, to: str) -> Tensor:
    """``frames`` (..., C, H, W) of ``framing`` as a frame of the same size shows them under ``to``: the design
    window of ``to`` sampled out of them (bilinear; zero where it lies outside). What reads the half framing (the
    probe, the face reader) reads a whole-framed frame through ``reframe(f, "whole", "half")``."""
    if framing == to:
        return frames
    h, w = frames.shape[-2:]
    s0, ox0, oy0 = design_frame((w, h), framing)
    s1, ox1, oy1 = design_frame((w, h), to)
    dev = frames.device
    # each target pixel centre -> its design point -> the source pixel coordinate -> grid_sample's [-1, 1]
    u = ((torch.arange(w, device=dev, dtype=torch.float32) + 0.5) / s1 - ox1 + ox0) * s0 * 2.0 / w - 1.0
    v = ((torch.arange(h, device=dev, dtype=torch.float32) + 0.5) / s1 + oy1 - oy0) * s0 * 2.0 / h - 1.0
    grid = torch.stack(torch.meshgrid(u, v, indexing="xy"), -1)  # (H, W, 2) as (x, y)
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = torch.nn.functional.grid_sample(flat.float(), grid.expand(flat.shape[0], h, w, 2), mode="bilinear",
                                          padding_mode="zeros", align_corners=False)
    return out.to(frames.dtype).reshape(frames.shape)


def render(identity: Tensor, poses: Tensor, size: tuple[int, int] = DESIGN_SIZE, framing: str = "half") -> Tensor:
    """Render ``identity`` (B, IDENTITY_DIM) in ``poses`` (B, T, P) -> (B, T, 4, H, W) float in [0, 1].

    ``size`` is (width, height), ``framing`` one of ``FRAMINGS``. RGB is premultiplied by alpha; alpha is the
    idol's matte (0 on the background, 1 on the body). Runs on the device and dtype of ``poses`` (float32
    recommended).
    """
    if identity.ndim != 2 or identity.shape[1] != IDENTITY_DIM:
        raise ValueError(f"identity {tuple(identity.shape)}: expected (B, {IDENTITY_DIM})")
    if poses.ndim != 3 or poses.shape[2] != _P or poses.shape[0] != identity.shape[0]:
        raise ValueError(f"poses {tuple(poses.shape)}: expected ({identity.shape[0]}, T, {_P})")
    w_px, h_px = size
    if w_px < 8 or h_px < 8:
        raise ValueError(f"size {size}: expected at least 8x8 pixels")
    b, t, _ = poses.shape
    n = b * t
    dev, dt = poses.device, poses.dtype if poses.is_floating_point() else torch.float32
    pose = poses.reshape(n, _P).to(dt)
    ident = identity.to(device=dev, dtype=dt).repeat_interleave(t, dim=0)  # (N, I)

    scale, ox, oy = design_frame(size, framing)
    px = 1.0 / scale
    X = ((torch.arange(w_px, device=dev, dtype=dt) + 0.5) * px - ox).view(1, 1, w_px)
    Y = ((torch.arange(h_px, device=dev, dtype=dt) + 0.5) * px + oy).view(1, h_px, 1)
    full = _Canvas(torch.zeros(n, 3, h_px, w_px, device=dev, dtype=dt), torch.zeros(n, h_px, w_px, device=dev, dtype=dt),
                   X, Y, px, ox, oy)

    def g(name: str) -> Tensor:
        return pose[:, POSE_INDEX[name]]

    pal = {k: ident[:, s] for k, s in _PAL.items()}
    hair_w = {k: _v(ident[:, i]) for k, i in _HAIR.items()}
    eye_w = {k: ident[:, i] for k, i in _EYE.items()}
    fit_w = {k: ident[:, i] for k, i in _OUTFIT.items()}
    sk = skeleton(pose)

    # --- frames: body (un-swayed design coords) and head (rolled about the chin) -------------------
    sway = g("body_sway")
    hip_x, hip_y = torch.full_like(sway, HIP[0]), torch.full_like(sway, HIP[1])
    top = _v(80.0 + 14.0 * g("body_bow") - 0.8 * g("breath"))  # neck line in body coords (before sway)
    roll = g("head_roll") + sway
    pivot_x = sk.head[:, 0] - 20.0 * torch.sin(sway)
    pivot_y = sk.head[:, 1] + 20.0 * torch.cos(sway)
    hcx = pivot_x + 20.0 * torch.sin(roll)
    hcy = pivot_y - 20.0 * torch.cos(roll)
    yaw, pitch = g("head_yaw"), g("head_pitch")
    fx, fy = _v(yaw * 11.0), _v(pitch * 12.0)

    hair = pal["hair"]
    # --- back hair -----------------------------------------------------------------------------
    cv = full.roi(hcx, torch.stack([hcy - 34.0, hcy + 58.0]), 50.0, 2.0)
    hx, hy = _rotate(cv.X, cv.Y, _v(hcx), _v(hcy), _v(roll))
    tail_sw = _v(torch.sin(g("breath") * 0.5) * 1.0)
    d_bob = torch.maximum(sd_circle(hx + 0.3 * fx, hy - 1.0, 27.5), hy - 21.0)
    d_long = _union(sd_circle(hx + 0.3 * fx, hy, 27.0), sd_box(hx + 0.3 * fx, hy - 32.0, 26.5, 34.0, 9.0))
    d_twin = _union(torch.maximum(sd_circle(hx, hy, 26.5), hy - 12.0),
                    sd_capsule(hx, hy, -24.0, -12.0, -37.0 + tail_sw, 44.0, 8.0, 3.5),
                    sd_capsule(hx, hy, 24.0, -12.0, 37.0 + tail_sw, 44.0, 8.0, 3.5))
    d_pony = _union(torch.maximum(sd_circle(hx, hy, 26.5), hy - 14.0),
                    sd_capsule(hx, hy, 18.0, -22.0, 34.0 + tail_sw, 34.0, 8.5, 3.5))
    back = (hair_w["bob"] * cv.coverage(d_bob) + hair_w["long"] * cv.coverage(d_long)
            + hair_w["twin_tails"] * cv.coverage(d_twin) + hair_w["ponytail"] * cv.coverage(d_pony))
    back_ol = (hair_w["bob"] * cv.coverage(d_bob - 0.8) + hair_w["long"] * cv.coverage(d_long - 0.8)
               + hair_w["twin_tails"] * cv.coverage(d_twin - 0.8) + hair_w["ponytail"] * cv.coverage(d_pony - 0.8))
    cv.over(back_ol.clamp(max=1.0), hair * 0.35)
    cv.over(back.clamp(max=1.0), hair * 0.82)

    prim, sec, acc, skin = pal["outfit_primary"], pal["outfit_secondary"], pal["accent"], pal["skin"]
    cx0 = DESIGN_SIZE[0] / 2.0
    _lower_body(full, sway, prim, sec, acc, skin, fit_w, n, pose)

    # --- hood (behind the neck) and neck -----------------------------------------------------------
    cv = full.roi(sk.neck[:, 0], torch.stack([sk.neck[:, 1] - 24.0, sk.neck[:, 1] + 80.0]), 45.0, 2.0)
    bx, by = _rotate(cv.X, cv.Y, _v(hip_x), _v(hip_y), _v(sway))
    bx, by = bx + HIP[0], by + HIP[1]
    cv.fill(sd_ellipse(bx - cx0, by - top + 1.0, 20.0, 7.0), prim * 0.8, weight=_v(fit_w["hoodie"]), outline=0.8)
    nx, ny = _rotate(cv.X, cv.Y, _v(sk.neck[:, 0]), _v(sk.neck[:, 1]), _v(sway))
    cv.fill(sd_capsule(nx, ny, 0.0, -14.0, 0.0, 2.0, 5.0), skin * 0.9, outline=0.7)

    # --- torso and outfit ---------------------------------------------------------------------
    rel = by - top
    half = 15.5 + rel.clamp(min=0) * 0.22
    d_trap = torch.maximum((bx - cx0).abs() - half, -rel - 2.0) / 1.03
    d_torso = _union(d_trap, sd_capsule(bx, by, cx0 - 15.0, top + 3.0, cx0 + 15.0, top + 3.0, 5.0))
    d_torso = torch.maximum(d_torso, by - WAIST)  # the skirt (or shorts) go on below
    cv.fill(d_torso, prim, outline=0.9)
    ax_ = (bx - cx0).abs()
    # sailor: collar band + V lapels in secondary, ribbon in accent, skirt band
    wsl = _v(fit_w["sailor"])
    d_collar = torch.maximum(d_torso + 0.0,
                             _union(rel - 5.0, sd_capsule(ax_, rel, 15.5, 1.0, 0.0, 20.0, 3.6)))
    cv.fill(d_collar, sec, weight=wsl)
    cv.fill(torch.maximum(d_torso, sd_capsule(ax_, rel, 15.5, 2.5, 0.5, 19.0, 0.6)), prim, weight=wsl)
    cv.fill(torch.maximum(d_torso, 136.0 - by), sec, weight=wsl)
    d_ribbon = _union(sd_ellipse(ax_ - 4.6, rel - 20.0, 4.6, 3.1), sd_capsule(ax_, rel, 1.5, 21.0, 4.5, 28.0, 1.6))
    cv.fill(d_ribbon, acc, weight=wsl, outline=0.6)
    cv.fill(sd_circle(bx - cx0, rel - 20.0, 2.0), acc * 0.8, weight=wsl)
    # dress: frilled neckline + waist band in secondary, heart brooch in accent
    wdr = _v(fit_w["dress"])
    frill = 1.8 + 0.7 * torch.cos((bx - cx0) * 1.3)
    cv.fill(torch.maximum(d_torso, (rel - 3.0).abs() - frill), sec, weight=wdr)
    cv.fill(torch.maximum(d_torso, (by - 122.0).abs() - 3.5), sec, weight=wdr)
    cv.fill(sd_heart((bx - cx0) / 4.5, -(rel - 15.5) / 4.5) * 4.5, acc, weight=wdr, outline=0.6)
    # hoodie: inner shirt V in secondary, drawstrings in accent
    who = _v(fit_w["hoodie"])
    d_shirt = torch.maximum(d_torso, ax_ - (rel * 0.32 + 1.5))
    cv.fill(torch.maximum(d_shirt, -rel), sec, weight=who)
    for s in (-1.0, 1.0):
        cv.fill(sd_capsule(bx - cx0, rel, s * 5.5, 3.0, s * 6.0, 21.0, 0.8), acc, weight=who)
        cv.fill(sd_circle(bx - cx0 - s * 6.0, rel - 22.0, 1.5), acc, weight=who)

    # --- head ----------------------------------------------------------------------------------
    cv = full.roi(hcx, hcy, 36.0, 36.0)
    hx, hy = _rotate(cv.X, cv.Y, _v(hcx), _v(hcy), _v(roll))
    d_face = _union(sd_ellipse(hx, hy + 0.5, 23.0, 21.5), sd_ellipse(hx, hy - 8.0, 17.0, 24.0))
    # Emotion marks, each a function of the face parameters the emotions set (no parameters of their own), bold
    # enough to read at a glance in a 256x144 frame: anger flushes the face red and pops a vein mark (brow_anger
    # up), sadness draws gloom lines and tears (brow_anger down), joy hatches the blush (blush) and sparkles (a
    # strong blush on a smile), surprise shrinks the irises of wide eyes (eye openness past 1).
    anger = _v(_ramp(g("brow_anger"), 0.2, 0.55))
    gloom = _v(_ramp(-g("brow_anger"), 0.4, 0.65))
    joy = _v(_ramp(g("blush"), 0.45, 0.75))
    cv.fill(d_face, skin + anger[:, :, 0] * 0.45 * (_const((0.98, 0.38, 0.36), n, pose) - skin), outline=0.8)

    # blush, hatched when strong
    blush_w = _v(0.18 + 0.7 * g("blush").clamp(0, 1))
    for s in (-1.0, 1.0):
        bx_, by_ = hx - s * 12.5 - 0.8 * fx, hy - 9.5 - fy
        cv.fill(sd_ellipse(bx_, by_, 4.6 + 0.8 * joy, 2.3 + 0.4 * joy), _const((1.0, 0.45, 0.55), n, pose),
                weight=blush_w)
        for k in (-1.0, 0.0, 1.0):
            cv.fill(sd_capsule(bx_, by_, 2.2 * k + 0.9, -1.6, 2.2 * k - 0.9, 1.6, 0.45),
                    _const((0.86, 0.2, 0.32), n, pose), weight=joy)

    # eyes
    rx = _v(4.7 * eye_w["round"] + 5.7 * eye_w["almond"] + 5.2 * eye_w["droopy"])
    ry = _v(5.8 * eye_w["round"] + 4.5 * eye_w["almond"] + 5.0 * eye_w["droopy"])
    tilt = _v(0.22 * eye_w["almond"] - 0.2 * eye_w["droopy"])
    eyes_c = pal["eyes"]
    smile_eye = _v(g("eye_smile").clamp(0, 1))
    gx, gy = _v(g("gaze_x") * 1.4), _v(g("gaze_y") * 1.3)
    for side, s in (("r", -1.0), ("l", 1.0)):
        o = _v(g(f"eye_open_{side}").clamp(0.0, 1.4))
        ex, ey = _rotate(hx, hy, s * 9.5 + fx * (1.0 + 0.25 * s * _v(yaw)), 3.0 + fy, -s * tilt)
        cy = 0.45 * ry * (1.0 - o.clamp(max=1.0)) - 0.35 * ry * (o - 1.0).clamp(min=0)
        ryo = (ry * o).clamp(min=0.05)
        d_sclera = sd_ellipse(ex, ey - cy, rx, ryo)
        cv.fill(d_sclera, _const((1.0, 1.0, 1.0), n, pose))
        shock = 1.0 - 0.45 * _ramp(o, 1.05, 1.2)  # wide eyes: small irises in a lot of white
        d_iris = torch.maximum(sd_ellipse(ex - gx, ey - gy + 0.4, rx * 0.8 * shock, ry * 0.88 * shock), d_sclera)
        cv.fill(d_iris, eyes_c)
        cv.fill(torch.maximum(sd_ellipse(ex - gx, ey - gy + 2.6 * shock, rx * 0.6 * shock, ry * 0.4 * shock), d_iris),
                eyes_c * 0.6 + 0.4)  # lighter lower iris
        cv.fill(torch.maximum(sd_ellipse(ex - gx, ey - gy, rx * 0.36 * shock, ry * 0.42 * shock), d_sclera),
                eyes_c * 0.3)
        cv.fill(torch.maximum(sd_circle(ex - gx + 1.5, ey - gy + 2.2, 1.6), d_sclera), _const((1, 1, 1), n, pose))
        cv.fill(torch.maximum(sd_circle(ex - gx - 1.6, ey - gy - 2.0, 0.8), d_sclera), _const((1, 1, 1), n, pose))
        # upper lid / lash line; bends into ^ when closed with eye_smile
        u = (ex / rx).clamp(-1.0, 1.0)
        shut = 1.0 - o.clamp(max=1.0)
        curve = (cy - ryo * torch.sqrt((1.0 - u * u).clamp(min=0.0))
                 - smile_eye * shut * 3.2 * (1.0 - u * u) + (1.0 - smile_eye) * shut * 1.0 * (1.0 - u * u))
        thick = 0.75 + 0.45 * (1.0 - u * u)
        d_lash = torch.maximum((ey - curve).abs() - thick, ex.abs() - rx - 0.4)
        cv.fill(d_lash, _const(_DARK, n, pose))
        flick = sd_capsule(ex * s, ey, rx - 0.5, cy, rx + 1.9, cy - 1.7, 0.7)
        cv.fill(torch.maximum(flick, -(o - 0.3) * 10.0), _const(_DARK, n, pose))
        # a tear running from the outer corner of the lower lid down the cheek
        cv.fill(sd_capsule(ex * s, ey, rx - 1.5, ryo * 0.6 + 1.0, rx + 0.5, ryo * 0.6 + 10.0, 0.9, 1.7),
                _const((0.55, 0.82, 1.0), n, pose), weight=gloom, outline=0.5)

    # nose
    cv.fill(sd_ellipse(hx - 1.1 * fx, hy - 8.0 - fy, 0.9, 0.6), skin * 0.72)

    # mouth
    mo, ms = _v(g("mouth_open").clamp(0, 1)), _v(g("mouth_smile").clamp(-1, 1))
    mw, mr = _v(g("mouth_wide").clamp(0, 1)), _v(g("mouth_round").clamp(0, 1))
    mx, my = hx - fx, hy - 13.0 - fy
    width = 3.0 + 1.8 * mw - 1.1 * mr + 1.3 * ms.clamp(min=0) + 0.8 * mo
    uu = (mx / width).clamp(-1.0, 1.0)
    mid = -ms * 2.0 * uu * uu + ms * 0.9
    upper = mid - mo * 1.0 * (1.0 - uu * uu)
    lower = mid + mo * (5.5 + 2.5 * mr) * (1.0 - uu * uu) ** 0.7
    d_in = torch.maximum(torch.maximum(upper - my, my - lower), mx.abs() - width)
    cv.fill(d_in, _const((0.45, 0.1, 0.17), n, pose), weight=(mo * 6.0).clamp(max=1.0))
    cv.fill(torch.maximum(d_in, lower - mo * 2.6 - my), _const((0.95, 0.48, 0.55), n, pose))
    d_line = torch.maximum((my - upper).abs() - 0.55, mx.abs() - width)
    cv.fill(d_line, _const((0.35, 0.12, 0.14), n, pose))

    # --- fringe, side locks, shine ---------------------------------------------------------------
    fxh = hx - 0.5 * fx
    strand = (torch.sin(0.27 * fxh + 0.6)).abs()
    fringe_line = -2.5 - 6.0 * strand
    d_fringe = torch.maximum(sd_circle(fxh, hy + 1.0, 25.0), hy - fringe_line)
    side_len = (16.0 * hair_w["bob"] + 24.0 * hair_w["long"] + 13.0 * hair_w["twin_tails"]
                + 12.0 * hair_w["ponytail"])
    d_locks = _union(sd_capsule(hx, hy, -21.0, -8.0, -22.5, side_len, 4.6, 2.2),
                     sd_capsule(hx, hy, 21.0, -8.0, 22.5, side_len, 4.6, 2.2))
    d_top = _union(d_fringe, d_locks, torch.maximum(sd_circle(hx, hy + 1.0, 25.0), hy + 12.0))
    cv.fill(d_top, hair, outline=0.8)
    shine = torch.maximum((sd_circle(fxh, hy + 2.0, 19.0)).abs() - 1.3, torch.maximum(hy + 10.0, fxh.abs() - 11.0))
    cv.fill(shine, hair * 0.5 + 0.5, weight=0.7)

    # brows (over the fringe, anime style)
    bh, ba = _v(g("brow_height")), _v(g("brow_anger"))
    for s in (-1.0, 1.0):
        ix, iy = s * 5.0 + fx, -6.5 - bh * 2.6 + ba * 1.9 + fy
        ox_, oy_ = s * 13.0 + fx, -7.8 - bh * 2.6 - ba * 0.7 + fy
        cv.fill(sd_capsule(hx, hy, ix, iy, ox_, oy_, 0.85 + 0.45 * anger), hair * 0.45)
    # gloom: blue lines hanging over the forehead
    for k in (-2.0, -1.0, 0.0, 1.0, 2.0):
        cv.fill(sd_capsule(hx, hy, 4.6 * k + fx, -17.0 + 1.5 * abs(k) + fy, 4.6 * k + fx, -4.0 + fy, 0.8),
                _const((0.3, 0.36, 0.78), n, pose), weight=gloom * 0.85)
    # anger: the popping-vein mark (four arcs bowed towards their centre) on the forehead, the viewer's right
    vx, vy = hx - 14.0 - 0.6 * fx, hy + 16.0 - fy
    for sx in (-1.0, 1.0):
        for sy in (-1.0, 1.0):
            arc = torch.maximum((sd_circle(vx - sx * 4.2, vy - sy * 4.2, 3.2)).abs() - 0.75,
                                sx * vx + sy * vy - 6.2)  # the ring's half nearest the mark's centre
            cv.fill(arc, _const((0.88, 0.08, 0.16), n, pose), weight=anger, outline=0.5)

    # joy: two sparkles beside the head (strong blush on a smile: the happy face, not a heart's or a pout's blush)
    sparkle = _v(_ramp(g("blush"), 0.65, 0.8) * _ramp(g("mouth_smile"), 0.2, 0.5))
    for cx_, cy_, r_ in ((-23.0, -21.0, 5.0), (25.0, -6.0, 4.0)):  # on the hair's edge: part of the silhouette
        sx_, sy_ = hx - cx_ - 0.5 * fx, hy - cy_
        d_star = _union(sd_ellipse(sx_, sy_, r_ * 0.28, r_), sd_ellipse(sx_, sy_, r_, r_ * 0.28))
        cv.fill(d_star, _const((1.0, 0.86, 0.3), n, pose), weight=sparkle, outline=0.5)

    # accessories: hair ties, hair bow
    for s in (-1.0, 1.0):
        cv.fill(sd_circle(hx - s * 24.0, hy + 12.5, 3.4), acc, weight=hair_w["twin_tails"], outline=0.6)
    cv.fill(sd_circle(hx - 18.0, hy + 21.5, 3.6), acc, weight=hair_w["ponytail"], outline=0.6)
    bwx, bwy = _rotate(hx, hy, -14.0 - 0.4 * fx, -20.0, _v(torch.full_like(yaw, -0.35)))
    d_bow = _union(sd_ellipse(bwx.abs() - 4.2, bwy, 4.0, 2.8), sd_circle(bwx, bwy, 1.8))
    cv.fill(d_bow, acc, outline=0.6)

    # --- arms and hands (left first, the right arm acts in front) -------------------------------
    sleeve_up = (fit_w["sailor"][:, None] * prim + fit_w["dress"][:, None] * skin + fit_w["hoodie"][:, None] * prim)
    sleeve_lo = (fit_w["sailor"][:, None] + fit_w["dress"][:, None]) * skin + fit_w["hoodie"][:, None] * prim
    heart_c = (sk.r_hand + sk.l_hand) / 2  # the hands' heart sits between them
    for side, s in (("l", 1.0), ("r", -1.0)):
        sh, el, hd = _joints(sk, side)
        cv = full.roi(torch.stack([sh[:, 0], el[:, 0], hd[:, 0]]), torch.stack([sh[:, 1], el[:, 1], hd[:, 1]]),
                      9.0, 9.0)
        X, Y = cv.X, cv.Y
        cv.fill(sd_capsule(X, Y, _v(sh[:, 0]), _v(sh[:, 1]), _v(el[:, 0]), _v(el[:, 1]), 4.3, 3.8), sleeve_up,
                outline=0.8)
        cv.fill(sd_circle(X - _v(sh[:, 0]), Y - _v(sh[:, 1]), 6.3), sec, weight=wdr, outline=0.7)  # puff sleeve
        cv.fill(sd_capsule(X, Y, _v(el[:, 0]), _v(el[:, 1]), _v(hd[:, 0]), _v(hd[:, 1]), 3.6, 3.1), sleeve_lo,
                outline=0.8)
        dirx = (hd[:, 0] - el[:, 0]) / ARM_FORE
        diry = (hd[:, 1] - el[:, 1]) / ARM_FORE
        cuff = hd - 4.0 * torch.stack([dirx, diry], -1)
        cv.fill(sd_capsule(X, Y, _v(cuff[:, 0]), _v(cuff[:, 1]), _v(hd[:, 0] - 2.5 * dirx), _v(hd[:, 1] - 2.5 * diry),
                           3.5), sec, weight=who)
        if side == "r":
            end = hd + 33.0 * torch.stack([dirx, diry], -1)
            cv = full.roi(torch.stack([hd[:, 0], end[:, 0]]), torch.stack([hd[:, 1], end[:, 1]]), 12.0, 12.0)
            _racket(cv, cv.X, cv.Y, hd, dirx, diry, g("racket"), acc, n, pose)
        cv = full.roi(hd[:, 0], hd[:, 1], 24.0, 24.0)
        _hand(cv, cv.X, cv.Y, side, s, hd, dirx, diry, pose, skin, n, heart_c)

    out = torch.cat([full.rgb, full.alpha.unsqueeze(1)], dim=1).clamp(0.0, 1.0)
    return out.reshape(b, t, 4, h_px, w_px)


def _lower_body(full: _Canvas, sway: Tensor, prim: Tensor, sec: Tensor, acc: Tensor, skin: Tensor,
                fit_w: dict[str, Tensor], n: int, like: Tensor) -> None:
    """The idol below the waist, drawn behind the torso: legs from the hips (which sway with the body) to the
    ankles (which stand still), socks, shoes, then the skirt (sailor: pleated, the collar's colour; dress: the
    dress's own, flared; hoodie: shorts). Nothing of it reaches the half framing's bottom edge."""
    cx0 = DESIGN_SIZE[0] / 2.0
    lo = torch.tensor([cx0 - 44.0, cx0 + 44.0], device=sway.device, dtype=sway.dtype)
    cv = full.roi(lo, torch.tensor([WAIST - 8.0, 214.0], device=sway.device, dtype=sway.dtype), 12.0, 2.0)
    if cv.alpha.numel() == 0:  # the half framing: all of it below the frame
        return
    c, s = torch.cos(sway), torch.sin(sway)
    wsl, wdr, who = (_v(fit_w[k]) for k in ("sailor", "dress", "hoodie"))
    sock = _const((0.96, 0.96, 0.98), n, like)
    shoe = (fit_w["sailor"][:, None] * _const((0.30, 0.20, 0.18), n, like) + fit_w["dress"][:, None] * acc
            + fit_w["hoodie"][:, None] * _const((0.95, 0.95, 0.97), n, like))
    # socks: knee-high for the sailor, ankle socks for the dress, none under the hoodie's sneakers
    sock_top = wsl * 186.0 + wdr * 197.0 + who * 204.0
    for side in (-1.0, 1.0):
        jx, jy = side * 8.0, WAIST + 16.0 - HIP[1]  # the hip joint, body coordinates about HIP
        hx_, hy_ = c * jx - s * jy + HIP[0], s * jx + c * jy + HIP[1]  # swayed, as skeleton's body points
        ax, ay = cx0 + side * 9.0, 203.0  # the ankle
        leg = sd_capsule(cv.X, cv.Y, _v(hx_), _v(hy_), ax, ay, 5.0, 3.4)
        cv.fill(leg, skin, outline=0.8)
        cv.fill(torch.maximum(leg, sock_top - cv.Y), sock, weight=wsl + wdr)
        cv.fill(torch.maximum(sd_ellipse(cv.X - (ax + side * 1.5), cv.Y - 206.0, 6.4, 3.4), 200.5 - cv.Y),
                shoe, outline=0.8)
    # the skirt, in body coordinates (it sways with the torso)
    bx, by = _rotate(cv.X, cv.Y, HIP[0], HIP[1], _v(sway))
    bx, by = bx + HIP[0] - cx0, by + HIP[1]
    hem = wsl * 184.0 + wdr * 186.0 + who * 176.0
    flare = (by - (WAIST - 8.0)).clamp(min=0) * (0.16 * wsl + 0.28 * wdr)  # the hoodie's shorts do not flare
    d_skirt = torch.maximum(bx.abs() - (27.0 + 3.0 * who) - flare, torch.maximum(WAIST - 8.0 - by, by - hem))
    # the hoodie's shorts part between the legs (the gap's distance, pushed far outside for the other outfits)
    shorts_gap = torch.minimum(2.0 - bx.abs(), by - 168.0) - 1000.0 * (1.0 - who)
    colour = fit_w["sailor"][:, None] * sec + fit_w["dress"][:, None] * prim + fit_w["hoodie"][:, None] * prim * 0.6
    cv.fill(torch.maximum(d_skirt, shorts_gap), colour, outline=0.9)
    # sailor pleats: dark lines fanning out from the waist; dress: a frill at the hem
    fan = bx / (1.0 + (by - WAIST + 8.0).clamp(min=0) * 0.006)
    pleat = torch.maximum((torch.remainder(fan + 4.5, 9.0) - 4.5).abs() - 0.45, torch.maximum(d_skirt, WAIST - by))
    cv.fill(pleat, sec * 0.6, weight=wsl)
    cv.fill(torch.maximum(d_skirt, hem - 3.0 - by), sec, weight=wdr)


def reference_frame(identity: Tensor, size: tuple[int, int] = DESIGN_SIZE, framing: str = "half") -> Tensor:
    """The identity reference the model is conditioned on: each idol in the neutral rest pose, eyes open.

    ``identity`` (B, IDENTITY_DIM) -> (B, 4, H, W), on ``identity``'s device.
    """
    rest = torch.from_numpy(REST_POSE).to(device=identity.device, dtype=torch.float32)
    return render(identity.float(), rest.expand(identity.shape[0], 1, -1).contiguous(), size=size,
                  framing=framing)[:, 0]


def character_reference(character: CharacterConfig, size: tuple[int, int] = DESIGN_SIZE) -> Tensor:
    """The character's identity reference (4, H, W) float [0, 1], premultiplied like ``render``'s output.

    Its ``reference_image`` (a custom avatar) when set, else its look rendered in the rest pose, framed as its
    ``framing`` asks.
    """
    path = character.resolve(character.reference_image)
    if path is None:
        return reference_frame(identity_tensor([character.identity]), size, character.framing)[0]
    try:
        rgba = load_image_rgba(path, size)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{character.source}: reference_image {path}: {exc}") from exc
    t = torch.from_numpy(rgba).permute(2, 0, 1).float() / 255.0
    return torch.cat([t[:3] * t[3:], t[3:]])


def _joints(sk: Skeleton, side: str) -> tuple[Tensor, Tensor, Tensor]:
    return (sk.r_shoulder, sk.r_elbow, sk.r_hand) if side == "r" else (sk.l_shoulder, sk.l_elbow, sk.l_hand)


def _racket(cv: _Canvas, X: Tensor, Y: Tensor, hd: Tensor, dirx: Tensor, diry: Tensor, vis: Tensor,
            acc: Tensor, n: int, like: Tensor) -> None:
    vis = _v(vis.clamp(0, 1))
    hx, hy = _v(hd[:, 0]), _v(hd[:, 1])
    dx, dy = _v(dirx), _v(diry)
    cv.fill(sd_capsule(X, Y, hx - 2.0 * dx, hy - 2.0 * dy, hx + 11.0 * dx, hy + 11.0 * dy, 1.4),
            _const((0.3, 0.22, 0.2), n, like), weight=vis, outline=0.5)
    cx, cy = hx + 21.0 * dx, hy + 21.0 * dy
    ang = torch.atan2(dy, dx)
    lx, ly = _rotate(X, Y, cx, cy, ang)
    d_head = sd_ellipse(lx, ly, 10.5, 8.0)
    cv.fill(d_head, _const((0.93, 0.96, 0.86), n, like), weight=vis * 0.75)
    grid = torch.minimum((torch.remainder(lx, 2.6) - 1.3).abs(), (torch.remainder(ly, 2.6) - 1.3).abs()) - 0.3
    cv.fill(torch.maximum(grid, d_head), _const((0.7, 0.72, 0.65), n, like), weight=vis * 0.8)
    cv.fill(d_head.abs() - 1.2, acc, weight=vis, outline=0.5)


def _hand(cv: _Canvas, X: Tensor, Y: Tensor, side: str, s: float, hd: Tensor, dirx: Tensor, diry: Tensor,
          pose: Tensor, skin: Tensor, n: int, heart_c: Tensor) -> None:
    def g(name: str) -> Tensor:
        return pose[:, POSE_INDEX[f"{side}_{name}"]].clamp(0, 1)

    hx, hy = _v(hd[:, 0]), _v(hd[:, 1])
    dx, dy = _v(dirx), _v(diry)
    w_open, w_thumb, w_point, w_heart = _v(g("open")), _v(g("thumb")), _v(g("point")), _v(g("heart"))
    # heart: each hand draws its half of a heart outline next to the chest centre, pink inside
    inward = -s
    ccx, ccy = _v(heart_c[:, 0]), _v(heart_c[:, 1]) - 1.5
    size = 16.0
    d_h = sd_heart((X - ccx) / size, (ccy + 0.55 * size - Y) / size) * size
    half = (X - ccx) * inward  # > 0 on the far side of the centre line
    cv.fill(torch.maximum(d_h, half), _const((1.0, 0.35, 0.55), n, pose), weight=w_heart * 0.8)
    cv.fill(torch.maximum(d_h.abs() - 1.7, half), skin, weight=w_heart, outline=0.6)
    # fingers along the forearm direction, fanned (open hand)
    for k, off in enumerate((-0.6, -0.2, 0.2, 0.6)):
        c, sn = math.cos(off), math.sin(off)
        fdx, fdy = dx * c - dy * sn, dx * sn + dy * c
        length = 2.5 + 5.0 * w_open - 0.6 * abs(k - 1.5)
        cv.fill(sd_capsule(X, Y, hx + 2.0 * fdx, hy + 2.0 * fdy, hx + length * fdx, hy + length * fdy, 1.25),
                skin, weight=w_open, outline=0.5)
    # thumb up (screen up, whatever the arm does)
    cv.fill(sd_capsule(X, Y, hx, hy - 2.0, hx, hy - 2.0 - 7.0 * w_thumb, 1.7), skin, weight=w_thumb, outline=0.6)
    # index finger pointing along the forearm
    cv.fill(sd_capsule(X, Y, hx + 2.0 * dx, hy + 2.0 * dy, hx + (2.5 + 7.5 * w_point) * dx,
                       hy + (2.5 + 7.5 * w_point) * dy, 1.3), skin, weight=w_point, outline=0.5)
    cv.fill(sd_circle(X - hx, Y - hy, 4.0), skin, outline=0.7)


def straight_alpha(video: Tensor) -> Tensor:
    """Premultiplied RGBA (what the world renders) -> straight alpha (what the autoencoder and OBS use).

    Where alpha is (nearly) 0 the colour is undefined; it is set to 0.
    """
    rgb, a = video[..., :3, :, :], video[..., 3:4, :, :]
    return torch.cat([torch.where(a > 1e-3, rgb / a.clamp(min=1e-3), 0.0).clamp(0, 1), a], dim=-3)


def premultiplied(video: Tensor) -> Tensor:
    """Straight alpha (decoded or served frames) -> premultiplied RGBA (what the world renders), channels at dim -3."""
    return torch.cat([video[..., :3, :, :] * video[..., 3:4, :, :], video[..., 3:4, :, :]], dim=-3)
