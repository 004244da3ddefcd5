"""The Wan2.1 video VAE: RGB video <-> 16-channel latents (4x in time, 8x in space), causal in time.

A re-implementation of ``wan/modules/vae.py`` of github Wan-Video/Wan2.1 that loads the public
``Wan2.1_VAE.pth`` unchanged (same state-dict keys and shapes) and decodes as a stream.  One file,
leaf-first: causal cache -> causal conv / RMS norm -> residual, attention and resample blocks ->
encoder -> decoder -> :class:`WanVAE` -> :class:`StreamingWanDecoder` -> :func:`load_wan_vae`.
Every size derives from :class:`WanVAEConfig` (the defaults are the public checkpoint's).

Time is causal everywhere: every 3D conv sees only the current and earlier frames (zeros before the
stream's start), attention and norms act within one frame.  So a stream can be cut into chunks
anywhere as long as each causal layer remembers the last input frames of the chunk before (its "tail",
the reference's feature cache); :class:`CausalCache` holds those tails.  The only special frame is the
first one of a stream:

* encoding: video frame 0 alone gives latent frame 0 (the temporal downsamplers pass it through and
  keep it as the left neighbour of the next frames); then every 4 frames give one latent frame, so a
  clip must have 1 + 4k frames;
* decoding: latent frame 0 gives one video frame (the temporal upsamplers pass it through); every
  later latent frame gives 4.

The public latents are normalised per channel, ``(mu - mean) / std``, with the checkpoint's published
``mean``/``std`` (in the config): :meth:`WanVAE.encode` returns and the decoders take normalised latents.

Usage::

    vae = load_wan_vae("Wan2.1_VAE.pth", device="cuda", dtype=torch.bfloat16)
    z = vae.encode(video)                   # (B, 3, 1+4k, H, W) in [-1, 1] -> (B, 16, 1+k, H/8, W/8)
    clip = vae.decode(z)                    # (B, 3, 1+4k, H, W) in [-1, 1]

    dec = StreamingWanDecoder(vae)          # the same frames, chunk by chunk
    for chunk in chunks:                    # (B, 16, t, h, w)
        frames = dec.step(chunk)            # (B, 3, 4t, 8h, 8w); the stream's first chunk gives 1 + 4(t-1)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend.errors import LiveIdolError
from backend.model.wan.weights import load_state_dict_into, read_state_dict

__all__ = [
    "WAN_LATENT_MEAN",
    "WAN_LATENT_STD",
    "CausalCache",
    "StreamingWanDecoder",
    "WanDecoderSnapshot",
    "WanVAE",
    "WanVAEConfig",
    "WanVAEError",
    "load_wan_vae",
]

# Per-channel statistics of the public checkpoint's latents (wan/modules/vae.py, class WanVAE).
WAN_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                   0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                  3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


class WanVAEError(LiveIdolError, ValueError):
    """Bad input to the Wan VAE (shape, size, frame count) or a stream continued with another shape."""


@dataclass(frozen=True)
class WanVAEConfig:
    """Sizes of the Wan VAE; the defaults are those of the public ``Wan2.1_VAE.pth``."""

    base_dim: int = 96  # channels at full resolution; level i has base_dim * dim_mult[i]
    z_dim: int = 16  # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # per encoder level (the decoder has one more per level)
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per level transition, encoder order
    latent_mean: tuple[float, ...] = WAN_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN_LATENT_STD

    def __post_init__(self) -> None:
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise WanVAEError(f"WanVAEConfig: temporal_downsample needs {len(self.dim_mult) - 1} entries "
                              f"(one per level transition), got {len(self.temporal_downsample)}")
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise WanVAEError(f"WanVAEConfig: latent_mean/latent_std need z_dim={self.z_dim} entries, "
                              f"got {len(self.latent_mean)}/{len(self.latent_std)}")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)


# ---------------------------------------------------------------------------------------------
# Leaves: the causal memory, causal conv, RMS norm
# ---------------------------------------------------------------------------------------------


class CausalCache:
    """What a causal network remembers between chunks: per layer, the last input frames it saw.

    ``tails[slot]`` is the layer's memory (``(B, C, n, H, W)``); ``frames`` counts the input frames
    already processed (0: the next pass starts the stream, where the temporal resamplers pass the frame
    through).  One cache per stream; :meth:`reset` starts a new one.
    """

    def __init__(self) -> None:
        self.tails: dict[int, Tensor] = {}
        self.frames = 0

    def reset(self) -> None:
        self.tails.clear()
        self.frames = 0

    @property
    def at_start(self) -> bool:
        return self.frames == 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tails.values())


class CausalConv3d(nn.Conv3d):
    """A 3D conv that pads time on the left only: with kernel kt it sees the current and kt-1 past frames.

    The past frames come from ``cache`` (zeros at the stream's start), and the last kt-1 frames of
    ``cat(past, x)`` are kept for the next chunk, so any chunking gives the same output.
    """

    slot: int = -1  # index into CausalCache.tails, numbered by WanVAE

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int, int],
                 padding: int | tuple[int, int, int] = 0) -> None:
        kt, kh, kw = (kernel,) * 3 if isinstance(kernel, int) else kernel
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        if kt > 1 and pt != (kt - 1) // 2:
            raise WanVAEError(f"CausalConv3d: temporal kernel {kt} needs temporal padding {(kt - 1) // 2}, got {pt}")
        super().__init__(cin, cout, (kt, kh, kw), padding=(0, ph, pw))  # time is padded by hand, causally
        self.past = kt - 1

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:  # (B, C, T, H, W)
        if self.past == 0:
            return super().forward(x)
        b, c, _, h, w = x.shape
        past = cache.tails.get(self.slot) if cache is not None else None
        if past is None:
            past = x.new_zeros(b, c, self.past, h, w)
        x = torch.cat([past, x], dim=2)  # (B, C, past + T, H, W)
        if cache is not None:
            cache.tails[self.slot] = x[:, :, -self.past:].clone()  # clone: do not keep the whole chunk alive
        return super().forward(x)  # (B, Cout, T, H, W)


class RMSNorm(nn.Module):
    """x / ||x|| * sqrt(C) * gamma over the channel axis (dim 1), per position."""

    def __init__(self, dim: int, *, video: bool) -> None:
        super().__init__()
        # The reference stores gamma as (C, 1, 1, 1) for video tensors and (C, 1, 1) for images.
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1, 1) if video else (1, 1))))
        self.scale = dim ** 0.5

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * (self.gamma * self.scale)  # one full-size temporary, not two


class _NearestUp2x(nn.Module):
    """2x nearest-exact spatial upsampling of (N, C, H, W).

    A pure copy, so bf16 gives the same values as the reference's float32 round trip, without it."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest-exact")


def _frames_to_batch(x: Tensor) -> Tensor:
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # (B*T, C, H, W)


def _batch_to_frames(x: Tensor, b: int) -> Tensor:
    bt, c, h, w = x.shape
    return x.reshape(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)  # (B, C, T, H, W)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """(RMSNorm, SiLU, causal 3x3x3 conv) twice, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        # Indices follow the reference's nn.Sequential (slot 5 was its dropout), so the keys match.
        self.residual = nn.Sequential(
            RMSNorm(cin, video=True), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1),
            RMSNorm(cout, video=True), nn.SiLU(), nn.Identity(), CausalConv3d(cout, cout, 3, padding=1))
        self.shortcut: nn.Module = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        h = conv1(F.silu(norm1(x), inplace=True), cache)  # in place on the norm's fresh output
        h = conv2(F.silu(norm2(h), inplace=True), cache)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the positions of each frame (no mixing across time)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, video=False)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        b, c, _, h, w = x.shape
        y = self.norm(_frames_to_batch(x))  # (B*T, C, H, W)
        qkv = self.to_qkv(y).flatten(2).transpose(1, 2).unsqueeze(1)  # (B*T, 1, H*W, 3C)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B*T, 1, H*W, C)
        y = F.scaled_dot_product_attention(q, k, v)  # (B*T, 1, H*W, C)
        y = y.squeeze(1).transpose(1, 2).reshape(-1, c, h, w)  # (B*T, C, H, W)
        return x + _batch_to_frames(self.proj(y), b)


class Resample(nn.Module):
    """Spatial 2x up/down sampling per frame, optionally with 2x temporal up/down sampling.

    * ``up2d`` / ``up3d``: nearest 2x + 3x3 conv that halves the channels; ``up3d`` first doubles the
      frames with a causal (3,1,1) conv to 2C channels whose halves become two consecutive frames.
    * ``down2d`` / ``down3d``: pad right/bottom by one, 3x3 conv with stride 2; ``down3d`` then halves the
      frames with a (3,1,1) conv of stride 2 over [the previous chunk's last frame, this chunk].

    At the stream's first frame both temporal variants pass the frame through (1 frame stays 1 frame).
    """

    slot: int = -1  # memory of down3d (its last input frame); up3d's causal conv has its own slot

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("up2d", "up3d", "down2d", "down3d"):
            raise WanVAEError(f"Resample: unknown mode {mode!r}")
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(_NearestUp2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "up3d":
            self.time_conv: nn.Module = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "down3d":
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def _upsample_time(self, x: Tensor, cache: CausalCache) -> Tensor:
        if cache.at_start:
            return x  # the first frame stays one frame; the conv's past stays zeros
        b, c, t, h, w = x.shape
        y = self.time_conv(x, cache)  # (B, 2C, T, H, W)
        return y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)  # frames interleaved

    def _downsample_time(self, x: Tensor, cache: CausalCache) -> Tensor:
        past = cache.tails.get(self.slot)
        cache.tails[self.slot] = x[:, :, -1:].clone()
        if cache.at_start or past is None:
            return x  # the first frame stays one frame and becomes the next frames' left neighbour
        if x.shape[2] % 2:
            raise WanVAEError(f"Resample(down3d): chunks after the first frame need an even frame count at this "
                              f"level, got {x.shape[2]}")
        return self.time_conv(torch.cat([past, x], dim=2))  # (B, C, T/2, H, W)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:  # (B, C, T, H, W)
        if self.mode == "up3d":
            x = self._upsample_time(x, cache)
        x = _batch_to_frames(self.resample(_frames_to_batch(x)), x.shape[0])
        if self.mode == "down3d":
            x = self._downsample_time(x, cache)
        return x


# ---------------------------------------------------------------------------------------------
# Encoder, decoder
# ---------------------------------------------------------------------------------------------


def _norm_act_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(cin, video=True), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1))


def _apply_head(head: nn.Sequential, x: Tensor, cache: CausalCache) -> Tensor:
    norm, _, conv = head
    return conv(F.silu(norm(x), inplace=True), cache)


class Encoder3d(nn.Module):
    """Video (B, 3, T, H, W) -> (B, 2*z_dim, T', H/sf, W/sf): mean and log-variance halves."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]  # 96, 96, 192, 384, 384 at the defaults
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for level, (cin, cout) in enumerate(itertools.pairwise(dims)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout))
                cin = cout
            if level < len(cfg.dim_mult) - 1:
                blocks.append(Resample(cout, "down3d" if cfg.temporal_downsample[level] else "down2d"))
        self.downsamples = nn.ModuleList(blocks)
        top = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(top, top), AttentionBlock(top), ResidualBlock(top, top)])
        self.head = _norm_act_conv(top, cfg.z_dim * 2)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = self.conv1(x, cache)
        for block in (*self.downsamples, *self.middle):
            x = block(x, cache)
        return _apply_head(self.head, x, cache)


class Decoder3d(nn.Module):
    """Raw latents (B, z_dim, t, h, w) -> video (B, 3, T, H*sf, W*sf), unclamped."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.base_dim * m for m in (mult[-1], *reversed(mult))]  # 384, 384, 384, 192, 96 at the defaults
        temporal_upsample = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0])])
        blocks: list[nn.Module] = []
        for level, (cin, cout) in enumerate(itertools.pairwise(dims)):
            if level > 0:
                cin //= 2  # the upsampler before this level halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(cin, cout))
                cin = cout
            if level < len(mult) - 1:
                blocks.append(Resample(cout, "up3d" if temporal_upsample[level] else "up2d"))
        self.upsamples = nn.ModuleList(blocks)
        self.head = _norm_act_conv(dims[-1], 3)

    def forward(self, x: Tensor, cache: CausalCache) -> Tensor:
        x = self.conv1(x, cache)
        for block in (*self.middle, *self.upsamples):
            x = block(x, cache)
        return _apply_head(self.head, x, cache)


# ---------------------------------------------------------------------------------------------
# The VAE
# ---------------------------------------------------------------------------------------------


class WanVAE(nn.Module):
    """Encoder + decoder with the public state-dict layout (``encoder.*``, ``conv1``, ``conv2``, ``decoder.*``)."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)  # on (mu, log_var)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)  # on the raw latents before the decoder
        self.decoder = Decoder3d(cfg)
        slot = 0
        for module in self.modules():  # give every layer with a temporal memory its own CausalCache slot
            if (isinstance(module, CausalConv3d) and module.past > 0) or (
                    isinstance(module, Resample) and module.mode == "down3d"):
                module.slot = slot
                slot += 1

    @classmethod
    def from_config(cls, cfg: WanVAEConfig | None = None) -> WanVAE:
        return cls(cfg or WanVAEConfig())

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, self.cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(self.cfg.latent_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(self.cfg.latent_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    def normalize(self, mu: Tensor) -> Tensor:
        mean, std = self._stats(mu)
        return (mu - mean) / std

    def denormalize(self, latents: Tensor) -> Tensor:
        mean, std = self._stats(latents)
        return latents * std + mean

    def check_latents(self, latents: Tensor, what: str) -> None:
        if not isinstance(latents, Tensor) or latents.ndim != 5 or latents.shape[1] != self.cfg.z_dim:
            shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise WanVAEError(f"{what}: expected latents (B, {self.cfg.z_dim}, t, h, w), got {shape}")
        if not latents.is_floating_point():
            raise WanVAEError(f"{what}: expected a floating-point tensor, got {latents.dtype}")

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """Video (B, 3, 1+4k, H, W) in [-1, 1] -> normalised latent means (B, z_dim, 1+k, H/8, W/8).

        Runs frame 0, then groups of ``temporal_factor`` frames, through one causal stream (as the
        reference does; any grouping gives the same result)."""
        cfg = self.cfg
        sf, tf = cfg.spatial_factor, cfg.temporal_factor
        if not isinstance(video, Tensor) or video.ndim != 5 or video.shape[1] != 3 or not video.is_floating_point():
            shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise WanVAEError(f"WanVAE.encode(video): expected a float tensor (B, 3, T, H, W), got {shape}")
        _b, _, t, h, w = video.shape
        if (t - 1) % tf or h % sf or w % sf:
            raise WanVAEError(f"WanVAE.encode(video): need 1 + {tf}k frames and H, W multiples of {sf}, "
                              f"got T={t}, H={h}, W={w}")
        cache = CausalCache()
        outs = []
        for start in range(0, t, tf):
            group = video[:, :, :1] if start == 0 else video[:, :, start - tf + 1:start + 1]
            outs.append(self.encoder(group, cache))
            cache.frames += group.shape[2]
        mu, _log_var = self.conv1(torch.cat(outs, dim=2)).chunk(2, dim=1)
        return self.normalize(mu)  # (B, z_dim, 1 + k, H/sf, W/sf)

    @torch.no_grad()
    def decode(self, latents: Tensor, *, clamp: bool = True) -> Tensor:
        """Normalised latents (B, z_dim, t, h, w) -> video (B, 3, 1 + 4(t-1), 8h, 8w), in [-1, 1] if clamped."""
        dec = StreamingWanDecoder(self, clamp=clamp)
        return dec.step(latents)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        c = self.cfg
        return f"params={n}, base_dim={c.base_dim}, z_dim={c.z_dim}, dim_mult={c.dim_mult}"


@dataclass(frozen=True)
class WanDecoderSnapshot:
    """A :class:`StreamingWanDecoder`'s state between two steps (for rolling a stream back).

    It shares the cache's tensors: a step replaces the tails with new tensors and never writes them in
    place, so a snapshot stays valid however far the stream goes on."""

    tails: dict[int, Tensor] = field(repr=False)
    frames: int
    shape: tuple[int, int, int] | None
    out: tuple[int, int, int, torch.device, torch.dtype] | None


class StreamingWanDecoder:
    """Decodes Wan latents chunk by chunk; equal to decoding the whole sequence at once.

    The causal feature cache (:class:`CausalCache`: each causal conv's last input frames) is carried
    from one chunk to the next.  Synchronous and explicit; the engine owns the thread::

        dec = StreamingWanDecoder(vae)
        dec.reset()                         # start of a stream (also after a cut)
        for chunk in chunks:                # normalised latents (B, 16, t, h, w), any t >= 1
            frames = dec.step(chunk)        # (B, 3, 4t, 8h, 8w) in [-1, 1]; the first chunk: 1 + 4(t-1)
        rest = dec.flush()                  # (B, 3, 0, H, W): a causal decoder holds nothing back

        snap = dec.snapshot()               # roll back: dec.restore(snap) continues from here again

    Memory: the cache holds two frames per causal conv at that conv's resolution; it does not grow.
    Activations grow with the latent frames decoded in one pass: ``frames_per_pass`` (default: the
    whole chunk) bounds them, with the same output (the reference decodes one latent frame per pass).
    """

    def __init__(self, vae: WanVAE, *, clamp: bool = True, frames_per_pass: int | None = None) -> None:
        if frames_per_pass is not None and frames_per_pass < 1:
            raise WanVAEError(f"StreamingWanDecoder: frames_per_pass must be >= 1 or None, got {frames_per_pass}")
        self.vae = vae
        self.clamp = clamp
        self.frames_per_pass = frames_per_pass
        self.cache = CausalCache()
        self._shape: tuple[int, int, int] | None = None  # (B, h, w) of the stream
        self._out: tuple[int, int, int, torch.device, torch.dtype] | None = None

    def reset(self) -> None:
        """Forget the stream: the next step's first latent frame decodes to one video frame."""
        self.cache.reset()
        self._shape = None

    @property
    def latent_frames(self) -> int:
        """Latent frames decoded since :meth:`reset`."""
        return self.cache.frames

    def snapshot(self) -> WanDecoderSnapshot:
        """The stream's state now (cheap: no tensor is copied)."""
        return WanDecoderSnapshot(dict(self.cache.tails), self.cache.frames, self._shape, self._out)

    def restore(self, snap: WanDecoderSnapshot) -> None:
        """Go back to ``snap``: the next step continues the stream as it was then."""
        self.cache.tails, self.cache.frames = dict(snap.tails), snap.frames
        self._shape, self._out = snap.shape, snap.out

    @torch.no_grad()
    def step(self, latents: Tensor) -> Tensor:
        """Normalised latents (B, z_dim, t, h, w) -> video frames (B, 3, T, 8h, 8w)."""
        self.vae.check_latents(latents, "StreamingWanDecoder.step(latents)")
        b, _, t, h, w = latents.shape
        if self._shape is not None and self._shape != (b, h, w):
            raise WanVAEError(f"StreamingWanDecoder.step(latents): shape {tuple(latents.shape)} does not continue "
                              f"the stream (batch {self._shape[0]}, latent {self._shape[1:]}); call reset() first")
        self._shape = (b, h, w)
        x = self.vae.conv2(self.vae.denormalize(latents))  # (B, z_dim, t, h, w) raw
        # The stream's first latent frame goes alone (it becomes one video frame), the rest in passes of
        # frames_per_pass latent frames (all at once by default).
        sizes = [1] if self.cache.at_start else []
        rest, per_pass = t - sum(sizes), self.frames_per_pass or t
        sizes += [per_pass] * (rest // per_pass) + ([rest % per_pass] if rest % per_pass else [])
        parts = []
        for piece in x.split(sizes, dim=2):
            parts.append(self.vae.decoder(piece, self.cache))
            self.cache.frames += piece.shape[2]
        out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        sf = self.vae.cfg.spatial_factor
        self._out = (b, h * sf, w * sf, out.device, out.dtype)
        return out.clamp(-1.0, 1.0) if self.clamp else out

    def flush(self) -> Tensor:
        """End of stream: the frames still held back, none for this causal decoder (B, 3, 0, H, W)."""
        if self._out is None:
            raise WanVAEError("StreamingWanDecoder.flush(): nothing was decoded since the decoder was made")
        b, hh, ww, device, dtype = self._out
        return torch.zeros(b, 3, 0, hh, ww, device=device, dtype=dtype)


def load_wan_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 cfg: WanVAEConfig | None = None) -> WanVAE:
    """Build the VAE and load ``Wan2.1_VAE.pth`` (or a safetensors file with its keys) from a local path."""
    cfg = cfg or WanVAEConfig()
    state = read_state_dict(path, what="Wan VAE")
    with torch.device("meta"):
        vae = WanVAE(cfg)
    hint = ""
    if any(k.startswith(("decoder.up_blocks", "encoder.down_blocks")) for k in state):
        hint = "this is the diffusers layout: use the original Wan2.1_VAE.pth"
    load_state_dict_into(vae, state, what="Wan VAE", source=str(path), assign=True, hint=hint)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)

