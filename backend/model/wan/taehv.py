"""TAEHV: a tiny autoencoder for Wan2.1's latents, the fast decoder for real time.

A re-implementation of ``taehv.py`` of github madebyollin/taehv (MIT) for the ``taew2_1.pth``
weights (Wan 2.1 latents: 16 channels, 4x in time, 8x in space), loading its state dict unchanged.
One file, leaf-first: conv helpers -> MemBlock / TPool / TGrow -> the two ``nn.Sequential`` stacks
(their indices are the state-dict keys) -> :class:`TAEHV` -> :class:`StreamingTAEHVDecoder` ->
:func:`load_taehv`.  Sizes come from :class:`TAEHVConfig` (the defaults are ``taew2_1.pth``'s).

Each layer works on single frames, except:

* ``MemBlock``: a residual conv block that also sees its own input one frame earlier (zeros at the
  stream's start), the only temporal memory of the decoder;
* ``TPool`` (encoder): stacks ``stride`` consecutive frames along channels and mixes them with a 1x1
  conv (``stride`` frames -> 1);
* ``TGrow`` (decoder): a 1x1 conv to ``stride`` x channels whose blocks become consecutive frames.

So latent frame i decodes to 4 frames from latents <= i alone, and a stream can be decoded chunk by
chunk with each MemBlock's last input as the memory.  The first ``t_upscale - 1`` (3) decoded frames of
a stream are dropped, which aligns the output with the Wan VAE: t latents -> 1 + 4(t-1) frames.

This module speaks the Wan VAE's conventions (the reference uses NTCHW and [0, 1]): video
``(B, 3, T, H, W)`` in [-1, 1], latents ``(B, 16, t, h, w)`` normalised as the Wan VAE's.

Usage::

    tae = load_taehv("taew2_1.pth", device="cuda", dtype=torch.float16)
    clip = tae.decode(latents)             # (B, 16, t, h, w) -> (B, 3, 1 + 4(t-1), 8h, 8w) in [-1, 1]
    dec = StreamingTAEHVDecoder(tae)       # the same frames, chunk by chunk
    for chunk in chunks:                   # (B, 16, t, h, w)
        frames = dec.step(chunk)           # (B, 3, 4t, 8h, 8w); the stream's first chunk gives 4t - 3
    z = tae.encode(video)                  # (B, 3, T, H, W) -> (B, 16, ceil(T/4), H/8, W/8)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend.errors import LiveIdolError
from backend.model.wan.weights import load_state_dict_into, read_state_dict

__all__ = ["TAEHV", "StreamingTAEHVDecoder", "TAEHVConfig", "TAEHVDecoderSnapshot", "TAEHVError", "load_taehv"]


class TAEHVError(LiveIdolError, ValueError):
    """Bad input to TAEHV (shape, size) or a stream continued with another shape."""


@dataclass(frozen=True)
class TAEHVConfig:
    """Sizes of TAEHV; the defaults are those of ``taew2_1.pth`` (Wan 2.1 latents)."""

    latent_channels: int = 16
    encoder_width: int = 64
    decoder_widths: tuple[int, ...] = (256, 128, 64, 64)  # per decoder level, then the last conv
    encoder_time_downscale: tuple[bool, ...] = (True, True, False)
    decoder_time_upscale: tuple[bool, ...] = (False, True, True)
    decoder_space_upscale: tuple[bool, ...] = (True, True, True)

    def __post_init__(self) -> None:
        levels = len(self.encoder_time_downscale)
        if len(self.decoder_time_upscale) != levels or len(self.decoder_space_upscale) != levels:
            raise TAEHVError(f"TAEHVConfig: encoder_time_downscale, decoder_time_upscale and decoder_space_upscale "
                             f"need one entry per level ({levels})")
        if len(self.decoder_widths) != levels + 1:
            raise TAEHVError(f"TAEHVConfig: decoder_widths needs {levels + 1} entries (one per level and the "
                             f"last conv), got {len(self.decoder_widths)}")

    @property
    def t_downscale(self) -> int:
        return 2 ** sum(self.encoder_time_downscale)

    @property
    def t_upscale(self) -> int:
        return 2 ** sum(self.decoder_time_upscale)

    @property
    def spatial_factor(self) -> int:
        return 2 ** len(self.encoder_time_downscale)  # the encoder halves H and W once per level


IMAGE_CHANNELS = 3


# ---------------------------------------------------------------------------------------------
# Leaves
# ---------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latents to (-3, 3): 3 * tanh(x / 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """relu(convs(cat(x, past)) + skip(x)); ``past`` is this block's input one frame earlier."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(cin * 2, cout), nn.ReLU(), _conv(cout, cout), nn.ReLU(), _conv(cout, cout))
        self.skip: nn.Module = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, past: Tensor) -> Tensor:  # (N, C, H, W) each
        return F.relu(self.conv(torch.cat([x, past], dim=1)) + self.skip(x))


class TPool(nn.Module):
    """``stride`` consecutive frames -> one: (B*T, C, H, W) -> (B*T/stride, C, H, W)."""

    def __init__(self, ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(ch * stride, ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _, c, h, w = x.shape
        return self.conv(x.reshape(-1, self.stride * c, h, w))  # frames t..t+stride-1 stacked on channels


class TGrow(nn.Module):
    """One frame -> ``stride`` consecutive frames: (B*T, C, H, W) -> (B*T*stride, C, H, W)."""

    def __init__(self, ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(ch, ch * stride, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _, c, h, w = x.shape
        return self.conv(x).reshape(-1, c, h, w)  # channel block j -> the j-th new frame


def _run_stack(stack: nn.Sequential, x: Tensor, memory: dict[int, Tensor] | None) -> Tensor:
    """Apply ``stack`` to frames (B, T, C, H, W), all frames of a layer at once -> (B, T', C', H', W').

    ``memory[i]`` is MemBlock i's input at the last frame of the previous chunk (absent: zeros, the
    stream's start); its entries are replaced by new tensors (never written in place, so a shallow copy
    of the dict is a snapshot).  TPool needs T to be a multiple of its stride here.
    """
    b = x.shape[0]
    memory = {} if memory is None else memory
    h = x.flatten(0, 1)  # (B*T, C, H, W)
    for i, layer in enumerate(stack):
        if isinstance(layer, MemBlock):
            frames = h.unflatten(0, (b, -1))  # (B, T, C, H, W)
            prev = memory.get(i)
            if prev is None:
                prev = torch.zeros_like(frames[:, :1])
            past = torch.cat([prev, frames[:, :-1]], dim=1)  # each frame's predecessor
            memory[i] = frames[:, -1:].clone()
            h = layer(h, past.flatten(0, 1))
        else:
            h = layer(h)
    return h.unflatten(0, (b, -1))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class TAEHV(nn.Module):
    """``encoder`` and ``decoder`` stacks with the reference's layer indices (= state-dict keys)."""

    def __init__(self, cfg: TAEHVConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, z = cfg.encoder_width, cfg.latent_channels
        enc: list[nn.Module] = [_conv(IMAGE_CHANNELS, w), nn.ReLU()]
        for down in cfg.encoder_time_downscale:
            enc += [TPool(w, 2 if down else 1), _conv(w, w, stride=2, bias=False),
                    MemBlock(w, w), MemBlock(w, w), MemBlock(w, w)]
        enc.append(_conv(w, z))
        self.encoder = nn.Sequential(*enc)

        n = cfg.decoder_widths
        dec: list[nn.Module] = [Clamp(), _conv(z, n[0]), nn.ReLU()]
        for level, (grow, up) in enumerate(zip(cfg.decoder_time_upscale, cfg.decoder_space_upscale, strict=True)):
            ch = n[level]
            dec += [MemBlock(ch, ch), MemBlock(ch, ch), MemBlock(ch, ch),
                    nn.Upsample(scale_factor=2 if up else 1), TGrow(ch, 2 if grow else 1),
                    _conv(ch, n[level + 1], bias=False)]
        dec += [nn.ReLU(), _conv(n[-1], IMAGE_CHANNELS)]
        self.decoder = nn.Sequential(*dec)

    @classmethod
    def from_config(cls, cfg: TAEHVConfig | None = None) -> TAEHV:
        return cls(cfg or TAEHVConfig())

    @property
    def frames_to_trim(self) -> int:
        """Decoded frames dropped at a stream's start (aligns t latents with 1 + 4(t-1) frames)."""
        return self.cfg.t_upscale - 1

    def check_latents(self, latents: Tensor, what: str) -> None:
        z = self.cfg.latent_channels
        if not isinstance(latents, Tensor) or latents.ndim != 5 or latents.shape[1] != z:
            shape = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise TAEHVError(f"{what}: expected latents (B, {z}, t, h, w), got {shape}")
        if not latents.is_floating_point():
            raise TAEHVError(f"{what}: expected a floating-point tensor, got {latents.dtype}")

    def decode_frames(self, latents: Tensor, memory: dict[int, Tensor]) -> Tensor:
        """Raw decoder: latents (B, t, z, h, w) NTCHW -> (B, t*t_upscale, 3, H, W) in ~[0, 1], untrimmed."""
        return _run_stack(self.decoder, latents, memory)

    @torch.no_grad()
    def decode(self, latents: Tensor, *, clamp: bool = True) -> Tensor:
        """Latents (B, z, t, h, w) -> video (B, 3, 1 + 4(t-1), 8h, 8w), in [-1, 1] if clamped."""
        return StreamingTAEHVDecoder(self, clamp=clamp).step(latents)

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> latents (B, z, ceil(T/4), H/8, W/8).

        Like the reference, T is padded at the end with copies of the last frame to a multiple of 4."""
        sf, td = self.cfg.spatial_factor, self.cfg.t_downscale
        if not isinstance(video, Tensor) or video.ndim != 5 or video.shape[1] != IMAGE_CHANNELS:
            shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise TAEHVError(f"TAEHV.encode(video): expected (B, 3, T, H, W), got {shape}")
        if video.shape[3] % sf or video.shape[4] % sf:
            raise TAEHVError(f"TAEHV.encode(video): H and W must be multiples of {sf}, got {tuple(video.shape[3:])}")
        x = ((video + 1) / 2).permute(0, 2, 1, 3, 4)  # (B, T, 3, H, W) in [0, 1]
        if x.shape[1] % td:
            pad = td - x.shape[1] % td
            x = torch.cat([x, x[:, -1:].expand(-1, pad, -1, -1, -1)], dim=1)
        return _run_stack(self.encoder, x, None).permute(0, 2, 1, 3, 4)  # (B, z, T/td, h, w)

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"params={n}, latent_channels={self.cfg.latent_channels}, decoder_widths={self.cfg.decoder_widths}"


@dataclass(frozen=True)
class TAEHVDecoderSnapshot:
    """A :class:`StreamingTAEHVDecoder`'s state between two steps (for rolling a stream back).

    It shares the memory's tensors: a step replaces them with new tensors and never writes them in place."""

    memory: dict[int, Tensor] = field(repr=False)
    latent_frames: int
    shape: tuple[int, int, int] | None
    out: tuple[int, int, int, torch.device, torch.dtype] | None


class StreamingTAEHVDecoder:
    """Decodes latents chunk by chunk with TAEHV; equal to :meth:`TAEHV.decode` of the whole sequence.

    The memory is each MemBlock's input at the last frame of the chunk before.  Synchronous and
    explicit; the engine owns the thread::

        dec = StreamingTAEHVDecoder(tae)
        dec.reset()                         # start of a stream (also after a cut)
        for chunk in chunks:                # latents (B, 16, t, h, w), any t >= 1
            frames = dec.step(chunk)        # (B, 3, 4t, 8h, 8w) in [-1, 1]; the first chunk: 4t - 3
        rest = dec.flush()                  # (B, 3, 0, H, W): every latent's frames come out at once

        snap = dec.snapshot()               # roll back: dec.restore(snap) continues from here again

    (The reference's ``StreamingTAEHV.decode`` returns one frame per call; here a whole chunk is decoded
    per call, every layer over all its frames at once, which is what a GPU wants.)
    """

    def __init__(self, tae: TAEHV, *, clamp: bool = True) -> None:
        self.tae = tae
        self.clamp = clamp
        self.memory: dict[int, Tensor] = {}
        self.latent_frames = 0  # since reset()
        self._shape: tuple[int, int, int] | None = None
        self._out: tuple[int, int, int, torch.device, torch.dtype] | None = None

    def reset(self) -> None:
        """Forget the stream: the next step's first frames are trimmed again."""
        self.memory.clear()
        self.latent_frames = 0
        self._shape = None

    def snapshot(self) -> TAEHVDecoderSnapshot:
        """The stream's state now (cheap: no tensor is copied)."""
        return TAEHVDecoderSnapshot(dict(self.memory), self.latent_frames, self._shape, self._out)

    def restore(self, snap: TAEHVDecoderSnapshot) -> None:
        """Go back to ``snap``: the next step continues the stream as it was then."""
        self.memory, self.latent_frames = dict(snap.memory), snap.latent_frames
        self._shape, self._out = snap.shape, snap.out

    @torch.no_grad()
    def step(self, latents: Tensor) -> Tensor:
        """Latents (B, z, t, h, w) -> video frames (B, 3, T, 8h, 8w)."""
        self.tae.check_latents(latents, "StreamingTAEHVDecoder.step(latents)")
        b, _, t, h, w = latents.shape
        if self._shape is not None and self._shape != (b, h, w):
            raise TAEHVError(f"StreamingTAEHVDecoder.step(latents): shape {tuple(latents.shape)} does not continue "
                             f"the stream (batch {self._shape[0]}, latent {self._shape[1:]}); call reset() first")
        self._shape = (b, h, w)
        out = self.tae.decode_frames(latents.permute(0, 2, 1, 3, 4), self.memory)  # (B, 4t, 3, H, W)
        if self.latent_frames == 0:
            out = out[:, self.tae.frames_to_trim:]
        self.latent_frames += t
        out = out.permute(0, 2, 1, 3, 4)  # (B, 3, T, H, W)
        self._out = (b, out.shape[3], out.shape[4], out.device, out.dtype)
        return out.clamp(0.0, 1.0) * 2 - 1 if self.clamp else out * 2 - 1

    def flush(self) -> Tensor:
        """End of stream: the frames still held back, none here (B, 3, 0, H, W)."""
        if self._out is None:
            raise TAEHVError("StreamingTAEHVDecoder.flush(): nothing was decoded since the decoder was made")
        b, hh, ww, device, dtype = self._out
        return torch.zeros(b, 3, 0, hh, ww, device=device, dtype=dtype)


def _fit_tgrow(tae: TAEHV, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint trained with temporal upscaling loads into a model built without it (a cheaper
    preview): keep the TGrow conv's last-frame output channels, as the reference does."""
    state = dict(state)
    for i, layer in enumerate(tae.decoder):
        key = f"decoder.{i}.conv.weight"
        if isinstance(layer, TGrow) and key in state and state[key].shape[0] > layer.conv.weight.shape[0]:
            state[key] = state[key][-layer.conv.weight.shape[0]:]
    return state


def load_taehv(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16,
               cfg: TAEHVConfig | None = None) -> TAEHV:
    """Build TAEHV and load ``taew2_1.pth`` (or its ``.safetensors``) from a local path."""
    cfg = cfg or TAEHVConfig()
    state = read_state_dict(path, what="TAEHV")
    with torch.device("meta"):
        tae = TAEHV(cfg)
    load_state_dict_into(tae, _fit_tgrow(tae, state), what="TAEHV", source=str(path), assign=True,
                         hint="expected taew2_1 (Wan 2.1 latents, 16 channels)")
    return tae.to(device=device, dtype=dtype).eval().requires_grad_(False)
