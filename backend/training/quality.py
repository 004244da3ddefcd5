"""Picture quality as a viewer sees it: is every frame clean, on-model and sharp, at any output size?

Each measure compares generated frames with the procedural world rendered for the SAME command plan at
the SAME size (the generator's output size), and each is calibrated on world renders so that world frames
score (about) zero:

* **Frechet distance** of the probe's penultimate features (``Probe.embed``) between generated and world
  frames (:func:`frechet_distance`); the probe resizes its input itself, so any output size works.
* **off-palette rate**: the share of matte pixels (alpha > 0.5) whose straight colour is farther than a
  threshold from every colour the world renders for this character (:class:`Calibration`: the palette and
  its shaded variants as ``backend.world.render`` draws them, plus every colour of a calibration render,
  anti-aliased blends included; the threshold sits above the largest distance of a second, held-out
  world render).
* **speck rate**: the share of the matte (alpha > 0.3) in islands apart from the largest one (specks
  floating around the idol), measured on the alpha mask max-pooled to at most ``SPECK_ROWS`` rows so a
  one-pixel speck counts at any size.
* **blotch rate**: the share of matte patches (side = height / ``PATCH_PER_HEIGHT``) that are blotchy: their
  chromaticity variance is above the calibration render's 99.9th percentile (rainbow blotches, colour noise
  at the pixel scale), or more than half of their pixels are off palette (a smooth wrong-colour blob, what an
  upscaled or soft decoder makes of a blotch). Isolated off-palette pixels (a fringe) are not blotches.
* **sharpness**: Laplacian energy of the luma inside the eroded matte, generated over world (1.0 = as
  crisp as the world at this size; an upscaled soft picture scores well below 1).
* **autoencoder round trip**: PSNR and SSIM of world frames passed through the autoencoder (and whatever
  resizing the generator does after decoding) against the world rendered at the output size.

Everything is plain torch/numpy on (N, 4, H, W) premultiplied float frames in [0, 1] (what the world
renders), so the same code runs on world renders, generated frames and synthetic test frames.

Usage::

    cal = Calibration.build(character, size=(960, 540))
    stats = FrameStats.measure(frames, cal)        # per-frame off-palette / speck / blotch / sharpness
    fd = frechet_distance(probe.embed(gen_frames), probe.embed(world_frames))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from backend.world.character import PALETTE_KEYS, CharacterConfig, identity_tensor
from backend.world.pose import simulate
from backend.world.render import render, straight_alpha

__all__ = [
    "MATTE_ALPHA",
    "PATCH_PER_HEIGHT",
    "SPECK_ALPHA",
    "SPECK_ROWS",
    "Calibration",
    "FrameStats",
    "frechet_distance",
    "palette_anchors",
    "psnr",
    "ssim",
]

MATTE_ALPHA = 0.5  # "inside the matte"
SPECK_ALPHA = 0.3  # islands are counted on alpha above this (faint dark specks included)
SPECK_ROWS = 270  # the speck mask is max-pooled to at most this many rows (a speck survives pooling)
PATCH_PER_HEIGHT = 60  # blotch patch side = height / this (9 px at 540 rows, 2 px at 144)
LUT_LEVELS = 32  # colour lookup table: LUT_LEVELS^3 bins over RGB
MIN_PALETTE_THRESHOLD = 0.08  # at least ~20/255 from every world colour to be "off palette"
BLOTCH_PERCENTILE = 99.9
BLOTCH_OFF_SHARE = 0.5  # ... or a patch more than half of whose pixels are off palette (a smooth wrong-colour blob)
_CAL_SEED = 9973  # the calibration script's seed (never an evaluation plan seed)
_LUMA = (0.299, 0.587, 0.114)

# Shading the renderer applies to palette colours (backend/world/render.py): outlines x0.42, back hair x0.82
# and its outline x0.35, hood x0.8, neck x0.9, nose x0.72, brows x0.45, iris pupil x0.3, ribbon knot x0.8.
_SHADES = (1.0, 0.82, 0.42, 0.35, 0.8, 0.9, 0.72, 0.45, 0.3, 0.42 * 0.82, 0.42 * 0.9, 0.42 * 0.8)
# Fixed colours the renderer draws whatever the palette: sclera / highlights, lashes, blush, mouth, heart,
# racket handle / strings / face.
_FIXED = ((1.0, 1.0, 1.0), (0.16, 0.10, 0.16), (1.0, 0.45, 0.55), (0.45, 0.1, 0.17), (0.95, 0.48, 0.55),
          (0.35, 0.12, 0.14), (1.0, 0.35, 0.55), (0.3, 0.22, 0.2), (0.7, 0.72, 0.65), (0.93, 0.96, 0.86))


def palette_anchors(character: CharacterConfig) -> Tensor:
    """(K, 3) the colours the renderer draws for ``character``: palette x shading, lightened variants
    (hair shine ``c * 0.5 + 0.5``, lower iris ``c * 0.6 + 0.4``) and the fixed colours."""
    pal = torch.tensor([getattr(character.identity, k) for k in PALETTE_KEYS], dtype=torch.float32)  # (6, 3)
    shades = torch.tensor(_SHADES)[:, None, None] * pal[None]  # (S, 6, 3)
    light = torch.stack([pal * 0.5 + 0.5, pal * 0.6 + 0.4])
    return torch.cat([shades.reshape(-1, 3), light.reshape(-1, 3), torch.tensor(_FIXED)]).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# Frame measures (pure)
# ---------------------------------------------------------------------------------------------


def _lut_index(rgb: Tensor) -> Tensor:
    """(..., 3) colours in [0, 1] -> (...,) flat LUT bin index."""
    q = (rgb.clamp(0, 1) * LUT_LEVELS).long().clamp(max=LUT_LEVELS - 1)
    return (q[..., 0] * LUT_LEVELS + q[..., 1]) * LUT_LEVELS + q[..., 2]


def _distance_lut(colours: Tensor, chunk: int = 4096) -> Tensor:
    """(LUT_LEVELS^3,) distance from each bin's centre to the nearest of ``colours`` (K, 3), 0 for a bin
    that holds one of them (so a colour the world draws is always at distance 0)."""
    grid = (torch.arange(LUT_LEVELS, dtype=torch.float32) + 0.5) / LUT_LEVELS
    centres = torch.cartesian_prod(grid, grid, grid)  # (Q^3, 3) in the same order as _lut_index
    out = torch.empty(centres.shape[0])
    for i in range(0, centres.shape[0], chunk):
        out[i:i + chunk] = torch.cdist(centres[i:i + chunk], colours).amin(1)
    out[_lut_index(colours)] = 0.0
    return out


def _components(mask: np.ndarray) -> list[int]:
    """Sizes (pixels) of the 8-connected components of a 2-D bool mask, via runs per row + union-find."""
    h, _ = mask.shape
    padded = np.zeros((h, mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows_s, cols_s = np.nonzero(d == 1)
    _, cols_e = np.nonzero(d == -1)  # same row order as the starts
    n = len(rows_s)
    if n == 0:
        return []
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(rows_s, np.arange(h + 1))
    for r in range(1, h):
        a0, a1 = row_first[r - 1], row_first[r]
        b0, b1 = row_first[r], row_first[r + 1]
        if a0 == a1 or b0 == b1:
            continue
        j = a0
        for i in range(b0, b1):  # runs of row r, in column order; 8-connected: overlap within 1 px
            s, e = cols_s[i], cols_e[i]
            while j < a1 and cols_e[j] < s:  # previous-row runs ending left of this one (end exclusive, +1 for 8-conn)
                j += 1
            k = j
            while k < a1 and cols_s[k] <= e:
                ri, rk = find(i), find(k)
                if ri != rk:
                    parent[ri] = rk
                k += 1
    sizes: dict[int, int] = {}
    lengths = (cols_e - cols_s).tolist()
    for i in range(n):
        root = find(i)
        sizes[root] = sizes.get(root, 0) + lengths[i]
    return sorted(sizes.values(), reverse=True)


def _luma(rgb: Tensor) -> Tensor:
    w = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True)


def _patch(h: int) -> int:
    return max(2, round(h / PATCH_PER_HEIGHT))


def patch_variance(frames: Tensor) -> tuple[Tensor, Tensor]:
    """Chromaticity variance of non-overlapping patches: (N, h', w') variance and (N, h', w') bool "patch
    wholly inside the matte" (alpha > 0.98 on average).

    Chromaticity = straight RGB / (R + G + B + 0.1): the renderer's shading (outlines, shadows are darker
    copies of a palette colour) hardly moves it, so world patches vary only where two palette colours
    meet, while rainbow blotches and colour noise vary a lot."""
    st = straight_alpha(frames)
    k = _patch(frames.shape[-2])
    rgb, a = st[:, :3], st[:, 3:4]
    chroma = rgb / (rgb.sum(1, keepdim=True) + 0.1)
    m1 = F.avg_pool2d(chroma, k, k)
    m2 = F.avg_pool2d(chroma * chroma, k, k)
    var = (m2 - m1 * m1).clamp(min=0).sum(1)
    inside = F.avg_pool2d(a, k, k)[:, 0] > 0.98
    return var, inside


def laplacian_energy(frames: Tensor) -> Tensor:
    """(N,) mean squared Laplacian of the luma over the matte eroded by one pixel (colour edges inside the
    idol and her outlines; the silhouette against the background is left out)."""
    st = straight_alpha(frames)
    y = _luma(st[:, :3])
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=y.dtype, device=y.device)
    lap = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3))
    inside = (st[:, 3:4] > MATTE_ALPHA).to(y.dtype)
    eroded = -F.max_pool2d(-inside, 3, 1, 1)
    n = eroded.sum((1, 2, 3)).clamp(min=1.0)
    return (lap * lap * eroded).sum((1, 2, 3)) / n


# ---------------------------------------------------------------------------------------------
# Calibration against the world
# ---------------------------------------------------------------------------------------------


def _calibration_poses(n: int, seed: int) -> Tensor:
    """(n, P) poses sampled from a script playing every action once under rotating emotions."""
    from backend.actions import ACTIONS, EMOTIONS

    script, g = [], 0
    for i, a in enumerate(ACTIONS):
        script.append((g, a.name, EMOTIONS[i % len(EMOTIONS)]))
        g += round(min(a.duration_s, 2.4) * 25)
    poses, _ = simulate(script, g, seed=seed)
    idx = torch.linspace(0, g - 1, n).round().long()
    return poses[idx]


@dataclass(frozen=True)
class Calibration:
    """What clean frames of one character look like at one size, learnt from world renders.

    ``lut``: distance from each colour bin to the nearest world colour; ``palette_threshold``: the distance
    beyond which a matte pixel is off palette; ``blotch_threshold``: the patch colour variance beyond which a
    patch is a blotch; ``size``: (width, height) the thresholds were set at.
    """

    lut: Tensor
    palette_threshold: float
    blotch_threshold: float
    size: tuple[int, int]

    @classmethod
    def build(cls, character: CharacterConfig, size: tuple[int, int], frames: int = 24,
              device: torch.device | str = "cpu") -> Calibration:
        """Render ``frames`` world frames of ``character`` at ``size`` (every action, several emotions) for the
        colour set and the blotch threshold, and as many again (other poses) to set the palette threshold."""
        ident = identity_tensor([character.identity], device=device)
        poses = _calibration_poses(2 * frames, _CAL_SEED).to(device)
        video = render(ident, poses[None], size, character.framing)[0].cpu()  # (2n, 4, H, W) premultiplied
        fit, held = video[0::2], video[1::2]
        st = straight_alpha(fit)
        matte = st[:, 3] > MATTE_ALPHA
        colours = st[:, :3].permute(0, 2, 3, 1)[matte]  # (M, 3)
        occupied = torch.unique(_lut_index(colours))
        grid = (torch.arange(LUT_LEVELS, dtype=torch.float32) + 0.5) / LUT_LEVELS
        bins = torch.stack([grid[occupied // LUT_LEVELS**2], grid[(occupied // LUT_LEVELS) % LUT_LEVELS],
                            grid[occupied % LUT_LEVELS]], -1)
        lut = _distance_lut(torch.cat([bins, palette_anchors(character)]))
        held_d = _pixel_distance(held, lut)
        thr = max(MIN_PALETTE_THRESHOLD, float(held_d.max()) + 1.0 / LUT_LEVELS if held_d.numel() else 0.0)
        var, inside = patch_variance(video)
        v = var[inside]
        blotch = float(np.percentile(v.numpy(), BLOTCH_PERCENTILE)) if v.numel() else 1.0
        return cls(lut, thr, max(blotch, 1e-4), (int(size[0]), int(size[1])))


def _pixel_distance(frames: Tensor, lut: Tensor) -> Tensor:
    """Distances to the world colour set of all matte pixels of ``frames`` (flat)."""
    st = straight_alpha(frames)
    matte = st[:, 3] > MATTE_ALPHA
    return lut.to(frames.device)[_lut_index(st[:, :3].permute(0, 2, 3, 1)[matte])]


# ---------------------------------------------------------------------------------------------
# Per-frame statistics
# ---------------------------------------------------------------------------------------------


@dataclass
class FrameStats:
    """Per-frame measures of N frames (each an (N,) float64 array)."""

    off_palette: np.ndarray  # share of matte pixels off palette
    speck: np.ndarray  # share of the matte in islands apart from the largest
    islands: np.ndarray  # number of such islands
    blotch: np.ndarray  # share of inside-matte patches that are blotchy (see the module docstring)
    sharpness: np.ndarray  # Laplacian energy inside the matte (compare as a ratio to the world's)
    matte: np.ndarray  # matte pixels (share of the frame)

    @classmethod
    def measure(cls, frames: Tensor, cal: Calibration) -> FrameStats:
        """``frames`` (N, 4, H, W) premultiplied in [0, 1], at the size ``cal`` was built for."""
        if frames.ndim != 4 or frames.shape[1] != 4:
            raise ValueError(f"frames {tuple(frames.shape)}: expected (N, 4, H, W) premultiplied RGBA")
        h, w = frames.shape[-2:]
        if (w, h) != cal.size:
            raise ValueError(f"frames are {w}x{h} but the calibration is for {cal.size[0]}x{cal.size[1]}")
        frames = frames.float()
        st = straight_alpha(frames)
        matte = st[:, 3] > MATTE_ALPHA  # (N, H, W)
        dist = cal.lut.to(frames.device)[_lut_index(st[:, :3].permute(0, 2, 3, 1))]  # (N, H, W)
        n_matte = matte.sum((1, 2)).clamp(min=1)
        off = ((dist > cal.palette_threshold) & matte).sum((1, 2)) / n_matte
        var, inside = patch_variance(frames)
        k = _patch(h)
        off_share = F.avg_pool2d(((dist > cal.palette_threshold) & matte).float()[:, None], k, k)[:, 0]
        blotchy = (var > cal.blotch_threshold) | (off_share > BLOTCH_OFF_SHARE)
        blotch = (blotchy & inside).sum((1, 2)) / inside.sum((1, 2)).clamp(min=1)
        pool = max(1, math.ceil(h / SPECK_ROWS))
        sm = F.max_pool2d((st[:, 3:4] > SPECK_ALPHA).float(), pool, pool, ceil_mode=True)[:, 0].bool().cpu().numpy()
        speck, islands = np.zeros(len(sm)), np.zeros(len(sm))
        for i, m in enumerate(sm):
            sizes = _components(m)
            if sizes:
                speck[i] = sum(sizes[1:]) / sum(sizes)
                islands[i] = len(sizes) - 1
        return cls(off.double().cpu().numpy(), speck, islands, blotch.double().cpu().numpy(),
                   laplacian_energy(frames).double().cpu().numpy(),
                   (matte.sum((1, 2)).double() / (h * w)).cpu().numpy())

    @classmethod
    def concat(cls, parts: list[FrameStats]) -> FrameStats:
        fields = ("off_palette", "speck", "islands", "blotch", "sharpness", "matte")
        if not parts:
            return cls(*(np.zeros(0) for _ in fields))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    def select(self, idx: np.ndarray) -> FrameStats:
        return FrameStats(self.off_palette[idx], self.speck[idx], self.islands[idx], self.blotch[idx],
                          self.sharpness[idx], self.matte[idx])


# ---------------------------------------------------------------------------------------------
# Distribution and fidelity measures
# ---------------------------------------------------------------------------------------------


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` (N, D) and ``b`` (M, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64 (symmetric square roots,
    so it is defined and >= 0 even when N, M < D and the covariances are singular)."""
    x = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"frechet_distance: expected (N>=2, D) and (M>=2, D) features, got {x.shape} and {y.shape}")
    mu = x.mean(0) - y.mean(0)
    sa, sb = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ra = _sqrtm_psd(sa)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(ra @ sb @ ra), 0, None)).sum()
    return float(max(0.0, mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * cross))


def psnr(x: Tensor, y: Tensor) -> float:
    """PSNR (dB) of ``x`` against ``y``, values in [0, 1] (all channels)."""
    mse = float(((x.float() - y.float()) ** 2).mean())
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def ssim(x: Tensor, y: Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11 / sigma 1.5, C1 = 0.01^2, C2 = 0.03^2) over all
    channels of (N, C, H, W) frames in [0, 1]."""
    x, y = x.float(), y.float()
    c = x.shape[1]
    r = torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2
    g = torch.exp(-(r * r) / (2 * sigma * sigma))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, k, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())
