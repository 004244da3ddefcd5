"""The small video autoencoder: RGBA pixels <-> latents, with a causal streaming decoder.

One readable file, leaf-first: conv helpers -> residual block -> encoder -> decoder -> autoencoder
-> streaming decoder -> pixel helpers (upscale, to_uint8_hwc).  Every size derives from
:class:`~backend.config.AutoencoderConfig`:

- ``spatial_factor`` (sf, a power of two >= 2) pixels per latent cell along each side;
- ``temporal_factor`` (tf) video frames per latent frame;
- ``latent_channels`` (C) channels per latent cell;
- ``width`` (w) the base conv width; level k (resolution /2**k) has ``_level_channels(w, k)`` channels
  (w/2 at /2, w at /4, 2w at /8 and below).

Encoder (per latent frame, no temporal context): the tf RGBA frames are scaled to [-1, 1] and
stacked along channels, space-to-depth by 2, then strided 3x3 convs down to (C, H/sf, W/sf).

Decoder (causal in time): latent frame i is decoded together with latent frame i-1 as temporal
context (frame 0 uses itself), so motion is continuous across latent-frame boundaries.  Upsampling is
1x1 conv + pixel shuffle (cheap on CPU); the last layer emits tf*4 channels at half resolution times
a 2x2 pixel shuffle and a sigmoid: tf RGBA frames with straight alpha in [0, 1].

The public latents are normalised per channel with the buffers ``latent_mean`` / ``latent_std``
(set from data by ``backend.training.train_autoencoder.fit_latent_stats``); ``encode`` returns and
``decode`` takes normalised latents.

Usage::

    ae = VideoAutoencoder(AutoencoderConfig())
    z = ae.encode(video)                  # (B, T, 4, H, W) -> (B, T//4, 16, H/8, W/8)
    clip = ae.decode(z)                   # whole clip -> (B, T, 4, H, W)

    mid = ae.decode(z, which="mid")       # a detail decoder: the same latents drawn larger (480x270)

    dec = ae.decoder_stream()             # streaming: same frames, chunk by chunk
    dec.reset()
    for chunk in chunks:                  # chunk: (B, F, 16, h, w)
        frames = dec.step(chunk)          # (B, F*4, 4, H, W)
    big = upscale(frames[0], (960, 540))  # (F*4, 4, 540, 960)
    rgba = to_uint8_hwc(big)              # numpy (F*4, 540, 960, 4) uint8
"""

from __future__ import annotations

import logging
import math
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend.config import AutoencoderConfig, ConfigError

__all__ = [
    "DECODERS",
    "DETAIL_DECODERS",
    "DETAIL_PREFIXES",
    "AutoencoderError",
    "DecoderName",
    "StreamingDecoder",
    "VideoAutoencoder",
    "quantize_hwc",
    "to_uint8_hwc",
    "upscale",
    "upscale_uint8_hwc",
]

log = logging.getLogger(__name__)

CHANNELS = 4  # RGBA, straight (not premultiplied) alpha
# The decoders of one autoencoder, all drawing the same latents: the native size, and the two detail decoders
# (``model.autoencoder.mid_factors`` / ``hires_factors``; absent when their factors are empty).
DecoderName = Literal["native", "mid", "hires"]
DECODERS: tuple[DecoderName, ...] = get_args(DecoderName)
DETAIL_DECODERS: tuple[DecoderName, ...] = ("mid", "hires")  # the decoders a checkpoint may lack
DETAIL_PREFIXES = tuple(f"{d}." for d in DETAIL_DECODERS)  # their state-dict keys


class AutoencoderError(ValueError):
    """Bad input to the autoencoder or the pixel helpers (wrong shape, dtype or size)."""


def _check_video(video: Tensor, what: str, ndim: int) -> None:
    if not isinstance(video, Tensor):
        raise AutoencoderError(f"{what}: expected a torch.Tensor, got {type(video).__name__}")
    if video.ndim != ndim:
        raise AutoencoderError(f"{what}: expected {ndim} dims, got shape {tuple(video.shape)}")
    if not video.is_floating_point():
        raise AutoencoderError(f"{what}: expected a floating-point tensor, got {video.dtype}")


def _level_channels(width: int, level: int) -> int:
    """Channels at resolution 1/2**level: width/2 at /2, width at /4, 2*width at /8 and coarser (>= 4)."""
    return max(4, min(2 * width, (width << level) // 4))


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1, gain: float = 2.0**0.5) -> nn.Conv2d:
    """A same-padded conv, He-initialised (``gain`` sqrt(2) before an activation, 1 for a linear output)."""
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)
    nn.init.normal_(conv.weight, std=gain / (cin * kernel * kernel) ** 0.5)
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    return conv


class ResBlock(nn.Module):
    """x -> x + conv(act(conv(x))), channels unchanged, no normalisation (cheap, batch-independent)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = _conv(ch, ch)
        self.conv2 = _conv(ch, ch, gain=0.2)  # starts close to the identity

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(x)))


class Encoder(nn.Module):
    """(N, tf*4, H, W) stacked frames of one latent frame -> (N, C, H/sf, W/sf) raw latents."""

    def __init__(self, cfg: AutoencoderConfig, levels: int) -> None:
        super().__init__()
        w, tf = cfg.width, cfg.temporal_factor
        ch = [_level_channels(w, k) for k in range(levels + 1)]  # ch[k] at resolution /2**k
        layers: list[nn.Module] = [nn.PixelUnshuffle(2), _conv(tf * CHANNELS * 4, ch[1]), nn.SiLU(), ResBlock(ch[1])]
        for k in range(2, levels + 1):
            layers += [_conv(ch[k - 1], ch[k], stride=2), nn.SiLU(), ResBlock(ch[k])]
        layers.append(_conv(ch[levels], cfg.latent_channels, gain=1.0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(N, C, h, w) latent + (N, C, h, w) previous latent -> (N, tf*4, h*r, w*r) logits of tf RGBA frames.

    ``factors`` are the up-sampling steps from the latent grid to the pixels, r their product: the native
    decoder is ``[2] * log2(sf)`` (r = sf); a detail decoder renders a larger frame from the same grid,
    e.g. ``[2, 3, 5]`` (r = 30: 960x540 from the 32x18 grid of a 256x144 native frame) or ``[3, 5]`` (r = 15:
    480x270, the CPU's cheaper one). Each step but the
    last is a 1x1 conv + pixel shuffle + residual block; channels shrink towards the pixels
    (``_level_channels``); the last step is a 3x3 conv to tf RGBA frames of r x r sub-pixels.
    """

    def __init__(self, cfg: AutoencoderConfig, factors: tuple[int, ...], *, what: str = "decoder factors") -> None:
        super().__init__()
        if not factors or any(not isinstance(f, int) or f < 1 for f in factors):
            raise ConfigError(f"{what} = {list(factors)!r}: expected one or more positive integers", key=what)
        w, tf, c = cfg.width, cfg.temporal_factor, cfg.latent_channels
        m = len(factors)
        ch = [_level_channels(w, k) for k in range(m + 1)]  # ch[k]: channels k steps before the pixels
        layers: list[nn.Module] = [_conv(2 * c, ch[m]), nn.SiLU(), ResBlock(ch[m]), ResBlock(ch[m])]
        for i, f in enumerate(factors[:-1]):
            k = m - i  # level k -> k-1
            layers += [_conv(ch[k], f * f * ch[k - 1], kernel=1, gain=1.0), nn.PixelShuffle(f), ResBlock(ch[k - 1])]
        r = factors[-1]
        layers += [_conv(ch[1], tf * CHANNELS * r * r, gain=1.0), nn.PixelShuffle(r)]
        self.net = nn.Sequential(*layers)
        self.factor = math.prod(factors)

    def forward(self, z: Tensor, context: Tensor) -> Tensor:
        return self.net(torch.cat([z, context], dim=1))  # (N, 2C, h, w) -> (N, tf*4, h*r, w*r)


# ---------------------------------------------------------------------------------------------
# The autoencoder
# ---------------------------------------------------------------------------------------------


class VideoAutoencoder(nn.Module):
    """RGBA video (B, T, 4, H, W) in [0, 1] <-> normalised latents (B, T//tf, C, H/sf, W/sf)."""

    latent_mean: Tensor  # (C,) buffers, registered in __init__
    latent_std: Tensor

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        sf = cfg.spatial_factor
        if sf < 2 or sf & (sf - 1):
            raise ConfigError(f"model.autoencoder.spatial_factor = {sf}: expected a power of two from 2 to 64")
        for name, size in (("native_width", cfg.native_width), ("native_height", cfg.native_height)):
            if size % (2 * sf):
                raise ConfigError(f"model.autoencoder.{name} = {size}: expected a multiple of "
                                  f"2 * spatial_factor = {2 * sf} (the DiT patches 2x2 latent cells)")
        self.cfg = cfg
        self.levels = sf.bit_length() - 1  # log2(sf)
        self.encoder = Encoder(cfg, self.levels)
        self.decoder = Decoder(cfg, (2,) * self.levels)
        # the detail decoders: the same latents rendered at a larger size (None when not configured)
        self.mid = Decoder(cfg, tuple(cfg.mid_factors), what="model.autoencoder.mid_factors") \
            if cfg.mid_factors else None
        self.hires = Decoder(cfg, tuple(cfg.hires_factors), what="model.autoencoder.hires_factors") \
            if cfg.hires_factors else None
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    # -- raw (un-normalised) paths, used by training --------------------------------------------

    def encode_raw(self, video: Tensor) -> Tensor:
        """(B, T, 4, H, W) -> (B, T//tf, C, H/sf, W/sf) raw latents (before normalisation)."""
        _check_video(video, "VideoAutoencoder.encode(video)", 5)
        b, t, c, h, w = video.shape
        tf, sf = self.cfg.temporal_factor, self.cfg.spatial_factor
        if c != CHANNELS:
            raise AutoencoderError(f"VideoAutoencoder.encode(video): expected {CHANNELS} (RGBA) channels at "
                                   f"dim 2, got shape {tuple(video.shape)}")
        if t == 0 or t % tf:
            raise AutoencoderError(f"VideoAutoencoder.encode(video): frames T={t} must be a positive "
                                   f"multiple of temporal_factor={tf}")
        if h % sf or w % sf:
            raise AutoencoderError(f"VideoAutoencoder.encode(video): height x width {h}x{w} must be "
                                   f"multiples of spatial_factor={sf}")
        f = t // tf
        x = video.reshape(b * f, tf * c, h, w) * 2.0 - 1.0  # (B*F, tf*4, H, W) in [-1, 1]: tf frames stacked
        z = self.encoder(x)  # (B*F, C, h/sf, w/sf)
        return z.view(b, f, *z.shape[1:])

    def decoder_named(self, which: str, what: str = "VideoAutoencoder.decode") -> Decoder:
        """The decoder ``which`` ('native', 'mid' or 'hires'); a clear error when it is unknown or not configured."""
        if which == "native":
            return self.decoder
        if which not in DECODERS:
            raise AutoencoderError(f"{what}(which={which!r}): expected one of {', '.join(map(repr, DECODERS))}")
        decoder = getattr(self, which)
        if decoder is None:
            raise AutoencoderError(f"{what}(which={which!r}): no {which} decoder is configured "
                                   f"(model.autoencoder.{which}_factors is empty)")
        return decoder

    def decode_raw(self, z: Tensor, context: Tensor | None = None, *, which: str = "native") -> Tensor:
        """Raw latents (B, F, C, h, w) -> (B, F*tf, 4, h*r, w*r) in [0, 1] (r = sf, or the detail decoder's factor).

        ``context`` (B, 1, C, h, w) is the raw latent frame before ``z[:, 0]``; None starts a clip
        (the first frame is its own context). ``which`` names the decoder: 'native', 'mid' or 'hires'.
        """
        decoder = self.decoder_named(which)
        b, f, c, h, w = z.shape
        if context is None:
            context = z[:, :1]
        ctx = torch.cat([context, z[:, :-1]], dim=1)  # (B, F, C, h, w): latent i-1 for latent i
        logits = decoder(z.reshape(b * f, c, h, w), ctx.reshape(b * f, c, h, w))  # (B*F, tf*4, H, W)
        tf = self.cfg.temporal_factor
        return torch.sigmoid(logits).view(b, f * tf, CHANNELS, *logits.shape[-2:])

    def frame_size(self, which: str = "native") -> tuple[int, int]:
        """(width, height) of the frames the decoder ``which`` draws."""
        sf, r = self.cfg.spatial_factor, self.decoder_named(which, "VideoAutoencoder.frame_size").factor
        return self.cfg.native_width // sf * r, self.cfg.native_height // sf * r

    @property
    def hires_size(self) -> tuple[int, int] | None:
        """(width, height) of frames from the hires detail decoder, None without one."""
        return None if self.hires is None else self.frame_size("hires")

    @property
    def mid_size(self) -> tuple[int, int] | None:
        """(width, height) of frames from the mid detail decoder, None without one."""
        return None if self.mid is None else self.frame_size("mid")

    def _check_latents(self, latents: Tensor, what: str) -> None:
        _check_video(latents, what, 5)
        if latents.shape[2] != self.cfg.latent_channels or latents.shape[1] == 0:
            raise AutoencoderError(f"{what}: expected (B, F>=1, {self.cfg.latent_channels}, h, w), "
                                   f"got shape {tuple(latents.shape)}")

    # -- public API --------------------------------------------------------------------------------

    def normalize(self, z: Tensor) -> Tensor:
        """Raw -> normalised latents (per channel, dim -3)."""
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize(self, latents: Tensor) -> Tensor:
        """Normalised -> raw latents."""
        return latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None]

    def encode(self, video: Tensor) -> Tensor:
        """(B, T, 4, H, W) in [0, 1], T a multiple of tf -> normalised latents (B, T//tf, C, H/sf, W/sf)."""
        return self.normalize(self.encode_raw(video))

    def decode(self, latents: Tensor, *, which: str = "native") -> Tensor:
        """Normalised latents (B, F, C, h, w) -> (B, F*tf, 4, H, W) RGBA in [0, 1], the whole clip
        (H, W: ``frame_size(which)``)."""
        self._check_latents(latents, "VideoAutoencoder.decode(latents)")
        return self.decode_raw(self.denormalize(latents), which=which)

    def decoder_stream(self, *, which: str = "native") -> StreamingDecoder:
        """A fresh :class:`StreamingDecoder` over this model, drawing with the decoder ``which``."""
        self.decoder_named(which, "decoder_stream")
        return StreamingDecoder(self, which=which)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        c = self.cfg
        return f"params={n}, sf={c.spatial_factor}, tf={c.temporal_factor}, C={c.latent_channels}, width={c.width}"


class StreamingDecoder:
    """Decodes latents chunk by chunk; equal to ``VideoAutoencoder.decode`` of the whole clip.

    The temporal state is the last latent frame seen (the context of the next one).  Synchronous and
    explicit; the engine owns the thread it runs on::

        dec = ae.decoder_stream()            # or decoder_stream(which="mid"): a detail decoder
        dec.reset()                          # start of a clip (also after a session cut)
        frames = dec.step(latents)           # (B, F, C, h, w) -> (B, F*tf, 4, H, W)

    There is no lag, so no ``flush()``: every latent frame is decoded as soon as it is stepped.
    Runs under ``torch.no_grad()``.
    """

    def __init__(self, ae: VideoAutoencoder, *, which: str = "native") -> None:
        self.ae = ae
        self.which = which
        self._prev: Tensor | None = None  # (B, 1, C, h, w) raw latent of the last decoded frame
        self.frames_decoded = 0  # latent frames since reset()

    def reset(self) -> None:
        """Forget the temporal context: the next step starts a new clip."""
        self._prev = None
        self.frames_decoded = 0

    def step(self, latents: Tensor) -> Tensor:
        """Normalised latents (B, F, C, h, w) -> (B, F*tf, 4, H, W) RGBA in [0, 1]."""
        self.ae._check_latents(latents, "StreamingDecoder.step(latents)")
        prev = self._prev
        if prev is not None and (prev.shape[0] != latents.shape[0] or prev.shape[2:] != latents.shape[2:]
                                 or prev.device != latents.device):
            raise AutoencoderError(
                f"StreamingDecoder.step(latents): shape {tuple(latents.shape)} on {latents.device} does not "
                f"continue the stream (batch {prev.shape[0]}, latent {tuple(prev.shape[3:])} on {prev.device}); "
                "call reset() first")
        with torch.no_grad():
            z = self.ae.denormalize(latents)
            out = self.ae.decode_raw(z, context=prev, which=self.which)
        self._prev = z[:, -1:].detach()
        self.frames_decoded += latents.shape[1]
        return out


# ---------------------------------------------------------------------------------------------
# Pixel helpers
# ---------------------------------------------------------------------------------------------


def _resample_premultiplied(frames: Tensor, height: int, width: int, mode: str) -> Tensor:
    alpha = frames[:, 3:4].clamp(0.0, 1.0)
    premult = torch.cat([frames[:, :3].clamp(0.0, 1.0) * alpha, alpha], dim=1)  # (N, 4, H, W)
    # antialias=True: a wider kernel when downscaling; when upscaling the same filter (PIL's bicubic,
    # a=-0.5) and on CPU about 2x faster than PyTorch's plain bicubic path.
    out = F.interpolate(premult, size=(height, width), mode=mode, align_corners=False, antialias=True)
    a = out[:, 3:4].clamp_(0.0, 1.0)
    rgb = out[:, :3].clamp_(min=0.0)
    torch.minimum(rgb, a, out=rgb)  # premultiplied colour never exceeds alpha (bicubic overshoot)
    rgb.div_(a.clamp(min=1e-6))  # un-premultiply; 0 where alpha == 0
    return out.clamp_(0.0, 1.0)


def upscale(frames: Tensor, size: tuple[int, int], *, mode: str = "bicubic") -> Tensor:
    """Resample RGBA frames (N, 4, H, W) in [0, 1] to ``size`` = (width, height) -> (N, 4, height, width).

    Colour is premultiplied by alpha before resampling and divided after, so transparent pixels
    (whatever their RGB) do not bleed dark fringes into edges.  Antialiased when downscaling;
    the result is clamped to [0, 1] and premultiplied colour to [0, alpha] (bicubic overshoot).
    For display only: runs under ``torch.no_grad()``.
    """
    _check_video(frames, "upscale(frames)", 4)
    if frames.shape[1] != CHANNELS:
        raise AutoencoderError(f"upscale(frames): expected (N, 4, H, W) RGBA, got shape {tuple(frames.shape)}")
    if len(size) != 2 or not all(isinstance(s, int | np.integer) and not isinstance(s, bool) and s > 0
                                 for s in size):
        raise AutoencoderError(f"upscale(size): expected (width, height) positive integers, got {size!r}")
    if mode not in ("bilinear", "bicubic"):
        raise AutoencoderError(f"upscale(mode): expected 'bilinear' or 'bicubic', got {mode!r}")
    width, height = int(size[0]), int(size[1])
    if (height, width) == tuple(frames.shape[-2:]):
        return frames.clamp(0.0, 1.0)
    with torch.no_grad():
        return _resample_premultiplied(frames, height, width, mode)


def _box_sum(x: Tensor, k: int) -> Tensor:
    """(N, C, H, W) -> the sum over the k x k window centred on each pixel (zeros outside), separable, by k - 1
    shifted adds per axis (exact as a sum of k terms, unlike running sums; faster than avg_pool2d on a CPU)."""
    r = k // 2
    h, w = x.shape[-2:]
    p = F.pad(x, (r, r, 0, 0))
    rows = p[..., :w].clone()
    for i in range(1, k):
        rows += p[..., i:i + w]
    p = F.pad(rows, (0, 0, r, r))
    out = p[..., :h, :].clone()
    for i in range(1, k):
        out += p[..., i:i + h, :]
    return out


def upscale_uint8_hwc(frames: Tensor, size: tuple[int, int]) -> Tensor:
    """:func:`upscale` then :func:`quantize_hwc`, in uint8 (CPU): RGBA (N, 4, H, W) in [0, 1] -> (N, height, width, 4)
    uint8, bicubic (antialiased).

    The float path (premultiply, resample, divide, quantize at the output size) costs ~100 ms per 8 frames of
    960x540 on two CPU cores; this one ~10 ms from 256x144 and ~34 ms from 480x270 (the mid decoder's): it quantizes
    at the input size and resamples uint8 channels-last (PyTorch's vectorised path). Straight-alpha resampling would
    draw dark fringes where a transparent pixel's colour (black, or whatever the decoder left there) mixes into the
    edge, so first every pixel under alpha 1/255 takes the alpha-weighted mean colour of its 5x5 neighbourhood
    (colour bleeding, as game textures do; the window sums by shifted adds, half the time of two avg_pool2d). The composite over
    any background then differs from the float path only along the silhouette's anti-aliased rim (mean 0.1 of 255
    over whole frames of the default idol, a few pixels a frame up to ~50)."""
    _check_video(frames, "upscale_uint8_hwc(frames)", 4)
    if frames.shape[1] != CHANNELS:
        raise AutoencoderError(f"upscale_uint8_hwc(frames): expected (N, 4, H, W) RGBA, got {tuple(frames.shape)}")
    width, height = int(size[0]), int(size[1])
    with torch.no_grad():
        alpha = frames[:, 3:4].float().clamp(0.0, 1.0)
        rgb = frames[:, :3].float().clamp(0.0, 1.0)
        sums = _box_sum(torch.cat([rgb * alpha, alpha], 1), 5)  # (N, 4, H, W): alpha-weighted colour, alpha
        rgb = torch.where(alpha >= 1.0 / 255.0, rgb, sums[:, :3] / sums[:, 3:].clamp(min=1e-6))
        u8 = torch.cat([rgb, alpha], 1).mul_(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
        u8 = u8.contiguous(memory_format=torch.channels_last)
        if (height, width) != tuple(frames.shape[-2:]):
            u8 = F.interpolate(u8, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        return u8.permute(0, 2, 3, 1).contiguous()  # channels-last: the permute is already contiguous


def quantize_hwc(frames: Tensor) -> Tensor:
    """(N, 4, H, W) float in [0, 1] -> contiguous (N, H, W, 4) uint8 on the frames' device (rounded half up,
    clamped): a quarter of the bytes to move to the host."""
    _check_video(frames, "to_uint8_hwc(frames)", 4)
    if frames.shape[1] != CHANNELS:
        raise AutoencoderError(f"to_uint8_hwc(frames): expected (N, 4, H, W) RGBA, got shape {tuple(frames.shape)}")
    with torch.no_grad():
        u8 = frames.float().mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
        return u8.permute(0, 2, 3, 1).contiguous()


def to_uint8_hwc(frames: Tensor) -> np.ndarray:
    """(N, 4, H, W) float in [0, 1] -> contiguous numpy (N, H, W, 4) uint8 (rounded, clamped)."""
    return np.ascontiguousarray(quantize_hwc(frames).cpu().numpy())
