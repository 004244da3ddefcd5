"""The causal video DiT: a re-implementation of Self-Forcing's ``CausalWanModel`` (Wan2.1 blocks).

Parameter names follow the Wan state-dict layout exactly, so Wan2.1-T2V-1.3B and Self-Forcing
checkpoints load unchanged (see checkpoint.py). Three extra modules (``EXTRA_PREFIXES``) carry
LiveIdol's conditioning; their keys are absent from Wan checkpoints and they start at zero, so a Wan
checkpoint behaves as upstream:

* ``cond_embedding``: action and emotion tables giving one ``text_dim`` token each; the context is
  ``[action, emotion, free text...]`` zero-padded to ``text_len``. Cross-attention has no positions,
  so two zero tokens in front of a Wan prompt (with the padding shortened by two) change nothing.
* ``control_embedding``: ``Linear(num_controls, dim)`` of per-latent-frame controls, added to the
  per-frame time embedding ``e`` (before ``time_projection`` and the head).
* ``cond_modulation``: ``Linear(2 * text_dim, dim)`` of the first two context tokens (action and
  emotion), also added to ``e``: the command modulates every block (adaLN, as class labels do in
  class-conditional DiTs), not only through cross-attention.

The model returns flow (noise minus clean latents) whatever its head draws: Wan's head predicts the flow itself;
with ``model.dit.prediction = "x0"`` it draws the clean latents x0 and :meth:`CausalDiT.finish` returns
``(x - x0) / max(sigma, X0_SIGMA_MIN)``, for patches as wide as the model (g64's 4x4x16 = 256 values at dim 256),
where a flow head must carry the noise through the same widths as the picture.

Layout: the model takes and returns ``(B, C, F, H, W)`` (Wan); timesteps are per frame ``(B, F)``.
With a :class:`KVCache` the call covers latent frames ``[start_frame, start_frame + F)``; RoPE angles
are computed for those absolute positions on the fly (float64), so a stream never runs out of them.

Usage::

    dit = CausalDiT(cfg.dit)
    ctx = dit.build_context(torch.tensor([action_idx]), torch.tensor([emotion_idx]))
    flow = dit(x, t, ctx, start_frame=f0, cache=kv, cross_cache=xkv, controls=c)
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from backend.config import DiTSizes
from backend.model.attention import Attention, FlexAttention, SdpaAttention
from backend.model.kv_cache import CacheStep, CrossAttentionCache, KVCache

__all__ = ["BLOCK_OUTPUTS", "EXTRA_PREFIXES", "CausalDiT", "block_count", "deepen_state", "rope_split",
           "sinusoidal_embedding"]

# State-dict prefixes of LiveIdol's own modules (absent from Wan / Self-Forcing checkpoints).
EXTRA_PREFIXES = ("cond_embedding.", "control_embedding.", "cond_modulation.")
# A block's residual branches end in these projections: zeroed, the block passes its input through unchanged.
BLOCK_OUTPUTS = ("self_attn.o.", "cross_attn.o.", "ffn.2.")
# model.dit.prediction = "x0": flow = (x - x0) / max(sigma, this) (JiT's clamp), bounded as sigma goes to 0; the
# sampler's x0 = x - sigma * flow is the head's own x0 for every sigma at or above it
X0_SIGMA_MIN = 0.05


# ---------------------------------------------------------------------------------------------
# Numerics shared with the reference
# ---------------------------------------------------------------------------------------------


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's timestep sinusoid in float64: ``[cos(p*f), sin(p*f)]``, ``f_i = 10000^(-i/(dim/2))``."""
    assert dim % 2 == 0, f"freq_dim must be even, got {dim}"
    half = dim // 2
    position = position.to(torch.float64)
    ladder = torch.arange(half, dtype=torch.float64, device=position.device)  # on the device: graph-capturable
    sinusoid = torch.outer(position, torch.pow(10000, -ladder.div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (time, height, width) for one head, as Wan's ``causal_rope_apply``."""
    assert head_dim % 2 == 0, f"head dim must be even, got {head_dim}"
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


class Rope3D:
    """3D rotary embedding on adjacent-channel pairs with per-axis ladders ``theta^(-2i/d_axis)``.

    Angles are computed in float64 for the requested absolute positions (no fixed table), with a
    small per-call-shape cache; equal to the reference's 1024-row table where that is defined.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        self.split = rope_split(head_dim)
        self.inv_freq = [
            1.0 / torch.pow(theta, torch.arange(0, 2 * p, 2).to(torch.float64).div(2 * p)) for p in self.split
        ]
        self._cached: tuple[tuple[int, int, int, int, str], torch.Tensor, torch.Tensor] | None = None

    def angles(self, start_frame: int, f: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(f*h*w, 1, head_dim/2)`` float64 for frames ``[start_frame, start_frame+f)``."""
        key = (start_frame, f, h, w, str(device))
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1], self._cached[2]
        ang = self.angles_at(torch.arange(start_frame, start_frame + f, dtype=torch.float64), h, w).to(device)
        cos, sin = torch.cos(ang), torch.sin(ang)
        self._cached = (key, cos, sin)
        return cos, sin

    def angles_at(self, pos_t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Rotation angles ``(f*h*w, 1, head_dim/2)`` float64 (CPU) for arbitrary temporal positions ``pos_t`` ``(f,)``."""
        ft, fh, fw = self.split
        f = pos_t.shape[0]
        ang_t = torch.outer(pos_t.to(torch.float64).cpu(), self.inv_freq[0])  # (f, ft)
        ang_h = torch.outer(torch.arange(h, dtype=torch.float64), self.inv_freq[1])  # (h, fh)
        ang_w = torch.outer(torch.arange(w, dtype=torch.float64), self.inv_freq[2])  # (w, fw)
        return torch.cat([
            ang_t.view(f, 1, 1, ft).expand(f, h, w, ft),
            ang_h.view(1, h, 1, fh).expand(f, h, w, fh),
            ang_w.view(1, 1, w, fw).expand(f, h, w, fw),
        ], dim=-1).reshape(f * h * w, 1, -1)

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` ``(B, S, H, D)`` pairwise (2i, 2i+1) in float64; returns x's dtype."""
        b, s, n, d = x.shape
        xd = x.to(cos.dtype).reshape(b, s, n, d // 2, 2)  # float64 cos/sin: the reference's precision
        xr, xi = xd[..., 0], xd[..., 1]
        out = torch.stack([xr * cos - xi * sin, xr * sin + xi * cos], dim=-1)  # (B, S, H, D/2, 2)
        return out.flatten(3).type_as(x)


# ---------------------------------------------------------------------------------------------
# Layers (leaf first)
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Wan RMSNorm: float32 math, learned weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class LayerNorm(nn.LayerNorm):
    """Wan LayerNorm: computed in float32 and cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()  # weights may be bf16 after .to(dtype)
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v ``(B, S, H, D)`` of ``x`` ``(B, S, C)``: projected, q/k normed and rotated (before the cache)."""
        b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
        q = self.norm_q(self.q(x)).view(b, s, n, d)
        k = self.norm_k(self.k(x)).view(b, s, n, d)
        v = self.v(x).view(b, s, n, d)
        q = Rope3D.apply(q, *rope).type_as(v)
        k = Rope3D.apply(k, *rope).type_as(v)
        return q, k, v


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V ``(B, L, H, D)`` of the embedded context ``(B, L, C)`` (what the cross-attention cache keeps)."""
        b, n, d = context.shape[0], self.num_heads, self.head_dim
        return self.norm_k(self.k(context)).view(b, -1, n, d), self.v(context).view(b, -1, n, d)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: Attention) -> torch.Tensor:
        """``x`` ``(B', S, C)`` attends to ``k``/``v`` ``(B', L, H, D)``; returns ``(B', S, C)``."""
        q = self.norm_q(self.q(x)).view(x.shape[0], -1, self.num_heads, self.head_dim)
        return self.o(attn(q, k, v).flatten(2))


class Block(nn.Module):
    """Wan attention block: modulated self-attn, cross-attn on norm3(x), modulated FFN.

    Split at the self-attention's cache so the two halves have fixed shapes (the compiled, graphed
    step compiles them; see accel.py): :meth:`attn_in` (norm1, modulation, q/k/v, q/k norms, RoPE)
    and :meth:`attn_out` (output projection, gated residual, cross-attention, modulated FFN).
    """

    def __init__(self, s: DiTSizes) -> None:
        super().__init__()
        self.norm1 = LayerNorm(s.dim, s.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(s.dim, s.num_heads, s.qk_norm, s.eps)
        self.norm3 = LayerNorm(s.dim, s.eps, elementwise_affine=True) if s.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(s.dim, s.num_heads, s.qk_norm, s.eps)
        self.norm2 = LayerNorm(s.dim, s.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(s.dim, s.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(s.ffn_dim, s.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, s.dim) / s.dim**0.5)

    def attn_in(self, x: torch.Tensor, e: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention q, k, v ``(B, S, H, D)`` of ``x`` ``(B, F*T, C)`` under the modulation ``e`` ``(B, F, 6, C)``."""
        num_frames, frame_tokens = e.shape[1], x.shape[1] // e.shape[1]
        mod = (self.modulation.unsqueeze(1) + e).chunk(6, dim=2)  # 6 x (B, F, 1, C)
        h = self.norm1(x).unflatten(dim=1, sizes=(num_frames, frame_tokens)) * (1 + mod[1]) + mod[0]
        return self.self_attn.qkv(h.flatten(1, 2), (cos, sin))

    def attn_out(self, x: torch.Tensor, y: torch.Tensor, e: torch.Tensor, cross_k: torch.Tensor,
                 cross_v: torch.Tensor, attn: Attention) -> torch.Tensor:
        """The rest of the block after self-attention ``y`` ``(B, S, H, D)``. ``cross_k``/``cross_v``:
        ``(B, L, H, D)``, or ``(B*F, L, H, D)`` when each frame cross-attends to its own context (training)."""
        b, num_frames, frame_tokens = x.shape[0], e.shape[1], x.shape[1] // e.shape[1]
        mod = (self.modulation.unsqueeze(1) + e).chunk(6, dim=2)

        def per_frame(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(dim=1, sizes=(num_frames, frame_tokens))  # (B, F, T, C)

        x = x + (per_frame(self.self_attn.o(y.flatten(2))) * mod[2]).flatten(1, 2)
        if cross_k.shape[0] != b:  # (B*F, L, H, D): each frame cross-attends to its own frame's context
            y = self.cross_attn.attend(per_frame(self.norm3(x)).flatten(0, 1), cross_k, cross_v, attn)
            x = x + y.unflatten(0, (b, num_frames)).flatten(1, 2)
        else:
            x = x + self.cross_attn.attend(self.norm3(x), cross_k, cross_v, attn)
        y = self.ffn((per_frame(self.norm2(x)) * (1 + mod[4]) + mod[3]).flatten(1, 2))
        return x + (per_frame(y) * mod[5]).flatten(1, 2)

    def forward(self, x: torch.Tensor, e: torch.Tensor, cross_kv: tuple[torch.Tensor, torch.Tensor],
                rope: tuple[torch.Tensor, torch.Tensor], attn: Attention, cache: KVCache | None,
                step: CacheStep | None, layer: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, F*T, C); e: (B, F, 6, C); cross_kv: this layer's cross-attention K/V
        q, k, v = self.attn_in(x, e, *rope)
        if cache is not None:
            assert step is not None
            k, v = cache.write(layer, step, k, v)  # write, then attend over every filled slot
        return self.attn_out(x, attn(q, k, v, mask), e, *cross_kv, attn)


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float) -> None:
        super().__init__()
        self.norm = LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # x: (B, F*T, C); e: (B, F, 1, C)
        num_frames, frame_tokens = e.shape[1], x.shape[1] // e.shape[1]
        mod = (self.modulation.unsqueeze(1) + e).chunk(2, dim=2)
        return self.head(self.norm(x).unflatten(dim=1, sizes=(num_frames, frame_tokens)) * (1 + mod[1]) + mod[0])


class ConditionEmbedding(nn.Module):
    """Action and emotion tables, one ``text_dim`` token each (zero at init)."""

    def __init__(self, num_actions: int, num_emotions: int, text_dim: int) -> None:
        super().__init__()
        self.action = nn.Embedding(num_actions, text_dim)
        self.emotion = nn.Embedding(num_emotions, text_dim)
        nn.init.zeros_(self.action.weight)
        nn.init.zeros_(self.emotion.weight)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class CausalDiT(nn.Module):
    """Causal Wan2.1 DiT with per-frame timesteps, a KV cache, and LiveIdol's conditioning."""

    def __init__(self, sizes: DiTSizes, attention: Attention | None = None) -> None:
        super().__init__()
        s = sizes
        if s.dim % s.num_heads:
            raise ValueError(f"model.dit: dim {s.dim} is not a multiple of num_heads {s.num_heads}")
        if (s.dim // s.num_heads) % 2:
            raise ValueError(f"model.dit: head size {s.dim // s.num_heads} must be even for RoPE")
        self.sizes = s
        self.attention: Attention = attention or SdpaAttention()
        self.patch_embedding = nn.Conv3d(s.in_dim, s.dim, kernel_size=s.patch_size, stride=s.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(s.text_dim, s.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(s.dim, s.dim))
        self.time_embedding = nn.Sequential(nn.Linear(s.freq_dim, s.dim), nn.SiLU(), nn.Linear(s.dim, s.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(s.dim, 6 * s.dim))
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.num_layers))
        self.head = Head(s.dim, s.out_dim, s.patch_size, s.eps)
        self.cond_embedding = ConditionEmbedding(s.num_actions, s.num_emotions, s.text_dim)
        self.control_embedding = nn.Linear(s.num_controls, s.dim) if s.num_controls > 0 else None
        if self.control_embedding is not None:
            nn.init.zeros_(self.control_embedding.weight)
            nn.init.zeros_(self.control_embedding.bias)
        self.cond_modulation = nn.Linear(2 * s.text_dim, s.dim)
        nn.init.zeros_(self.cond_modulation.weight)
        nn.init.zeros_(self.cond_modulation.bias)
        self.rope = Rope3D(s.dim // s.num_heads, s.rope_theta)

    @property
    def head_dim(self) -> int:
        return self.sizes.dim // self.sizes.num_heads

    def frame_tokens(self, latent_h: int, latent_w: int) -> int:
        """Tokens per latent frame of a ``latent_h`` x ``latent_w`` latent."""
        _, ph, pw = self.sizes.patch_size
        return (latent_h // ph) * (latent_w // pw)

    def build_context(self, action: torch.Tensor, emotion: torch.Tensor,
                      text: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, text_len, text_dim)``: [action token, emotion token, text tokens], zero-padded.

        ``action``/``emotion``: ``(B,)`` long indices; ``text``: ``(B, L, text_dim)`` or None.
        """
        s = self.sizes
        tokens = [self.cond_embedding.action(action)[:, None], self.cond_embedding.emotion(emotion)[:, None]]
        if text is not None:
            if text.ndim != 3 or text.shape[-1] != s.text_dim:
                raise ValueError(f"free text embedding: expected (B, L, {s.text_dim}), got {tuple(text.shape)}")
            if text.shape[1] > s.text_len - 2:
                raise ValueError(f"free text embedding: {text.shape[1]} tokens, at most text_len - 2 = "
                                 f"{s.text_len - 2} fit beside the action and emotion tokens")
            tokens.append(text.to(tokens[0].dtype))
        ctx = torch.cat(tokens, dim=1)
        pad = ctx.new_zeros(ctx.shape[0], s.text_len - ctx.shape[1], s.text_dim)
        return torch.cat([ctx, pad], dim=1)

    def _embed(self, x: torch.Tensor, t: torch.Tensor, controls: torch.Tensor | None, context: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int, int]]:
        """Patch tokens ``(B, F'*H'*W', C)`` (frame, then row, then column), the per-frame time(+controls
        +command) embedding e ``(B*F, C)``, its 6-way projection ``(B, F, 6, C)``, and the token grid.
        ``context``: the raw conditioning tokens, ``(B, L, text_dim)`` or per frame ``(B, F, L, text_dim)``."""
        s = self.sizes
        x = self.patch_embedding(x)  # (B, C, F', H', W')
        b, _, gf, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        e = self.time_embedding(sinusoidal_embedding(s.freq_dim, t.flatten()).type_as(x))  # (B*F, C)
        if self.control_embedding is not None and controls is not None:
            assert controls.shape == (b, gf, s.num_controls), (
                f"controls must be (B, F, num_controls) = {(b, gf, s.num_controls)}, got {tuple(controls.shape)}")
            e = e + self.control_embedding(controls.flatten(0, 1).type_as(e))
        if context.shape[-2] >= 2:  # the command pair: [action, emotion] (zeros for a Wan prompt's padding)
            command = context[..., :2, :].flatten(-2).type_as(e)  # (B, 2 * text_dim) or (B, F, 2 * text_dim)
            command = command[:, None].expand(b, gf, -1) if command.ndim == 2 else command
            e = e + self.cond_modulation(command.flatten(0, 1))
        e0 = self.time_projection(e).unflatten(1, (6, s.dim)).unflatten(0, t.shape)  # (B, F, 6, C)
        return x, e, e0, (gf, gh, gw)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, start_frame: int = 0,
                cache: KVCache | None = None, cross_cache: CrossAttentionCache | None = None,
                controls: torch.Tensor | None = None, causal_chunk: int | None = None,
                cache_only: bool = False) -> torch.Tensor:
        """Flow prediction ``(B, out_dim, F, H, W)`` for latents ``x`` ``(B, in_dim, F, H, W)``.

        ``t``: ``(B, F)`` timesteps in [0, 1000]; ``context``: ``(B, L <= text_len, text_dim)``;
        ``controls``: ``(B, F, num_controls)`` or None; ``start_frame``: absolute latent index of frame 0.
        Without ``cache`` the call attends only to itself: bidirectionally, or, with ``causal_chunk``
        (latent frames per chunk), block-causally as the streaming cache sees it (training's mask).
        ``cache_only``: the pass that only writes the cache (a chunk's clean K/V): it stops once the last block's
        K/V are written (that block's attention, cross-attention, FFN and the head feed nothing) and returns
        an empty tensor; the cache gets the same values as a full pass writes.
        """
        s = self.sizes
        b, c, f, h, w = x.shape
        pt, ph, pw = s.patch_size
        assert c == s.in_dim, f"latents have {c} channels, model.dit.in_dim is {s.in_dim}"
        assert f % pt == 0 and h % ph == 0 and w % pw == 0, f"latent {(f, h, w)} not divisible by patch {s.patch_size}"
        assert t.shape == (b, f // pt), f"timesteps must be (B, F) = {(b, f // pt)}, got {tuple(t.shape)}"
        assert context.ndim == 3 and context.shape[0] == b and context.shape[1] <= s.text_len, (
            f"context must be (B={b}, L<={s.text_len}, {s.text_dim}), got {tuple(context.shape)}")

        latents = x
        x, e, e0, (gf, gh, gw) = self._embed(x, t, controls, context)
        frame_tokens = gh * gw

        if cross_cache is None or not cross_cache.filled:  # else every layer reads its cached K/V
            context = self.embed_context(context, x.dtype)

        if cache is not None and cache.frame_tokens != frame_tokens:
            raise ValueError(f"KV cache holds {cache.frame_tokens} tokens per frame, the input has {frame_tokens}")
        rope = self.rope.angles(start_frame, gf, gh, gw, x.device)
        step = cache.roll(cache.plan(start_frame * frame_tokens, gf * frame_tokens)) if cache is not None else None
        mask = None
        if causal_chunk is not None:
            if cache is not None:
                raise ValueError("causal_chunk is for cache-free (training) calls; the cache is causal already")
            chunk_of = torch.arange(gf, device=x.device).repeat_interleave(frame_tokens) // causal_chunk  # (S,)
            mask = chunk_of[:, None] >= chunk_of[None, :]  # (Sq, Sk) True = may attend
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if cache_only and i == last:  # only the cache is wanted: the last block's K/V, nothing after them
                if cache is None or step is None:
                    raise ValueError("cache_only needs a cache")
                _, k, v = cast(Block, block).attn_in(x, e0, *rope)
                cache.write(i, step, k, v)
                cache.commit(step)
                return x[:, :0]
            x = block(x, e0, self.cross_kv(i, context, cross_cache), rope, self.attention, cache, step, i, mask)
        if cache is not None:
            assert step is not None
            cache.commit(step)
        return self.finish(x, e, (gf, gh, gw), latents, t)

    def embed_context(self, context: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Raw conditioning tokens ``(B, L <= text_len, text_dim)`` -> embedded ``(B, text_len, C)`` (zero-padded)."""
        s = self.sizes
        if context.shape[-2] < s.text_len:
            pad = context.new_zeros(*context.shape[:-2], s.text_len - context.shape[-2], context.shape[-1])
            context = torch.cat([context, pad], dim=-2)
        return self.text_embedding(context.to(dtype))

    def cross_kv(self, layer: int, context: torch.Tensor, cache: CrossAttentionCache | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s cross-attention K/V: from ``cache`` when it holds them, else from the embedded
        ``context`` (``(B, L, C)``, or ``(B, F, L, C)`` per frame), stored into ``cache``."""
        kv = cache.get(layer) if cache is not None else None
        if kv is None:
            block = cast(Block, self.blocks[layer])
            kv = block.cross_attn.kv(context.flatten(0, 1) if context.ndim == 4 else context)
            if cache is not None:
                cache.put(layer, *kv)
        return kv

    def finish(self, x: torch.Tensor, e: torch.Tensor, grid: tuple[int, int, int], latents: torch.Tensor,
               t: torch.Tensor) -> torch.Tensor:
        """Head and unpatchify: tokens ``(B, F*T, C)`` and the time embedding e ``(B*F, C)`` -> the flow ``(B, out, F,
        H, W)`` for the input ``latents`` at timesteps ``t`` ``(B, F')``. A head that predicts x0 (``prediction =
        "x0"``) runs in its weights' dtype outside autocast (the division by sigma would scale a bf16 rounding up to
        20 times) and its x0 is turned into flow."""
        e = e.unflatten(0, (x.shape[0], grid[0])).unsqueeze(2)
        if self.sizes.prediction == "flow":
            return self._unpatchify(self.head(x, e), grid)  # (B, F, T, prod(patch)*out) -> latents
        dtype = self.head.head.weight.dtype
        with torch.autocast(x.device.type, enabled=False):
            x0 = self._unpatchify(self.head(x.to(dtype), e.to(dtype)), grid)
            sigma = (t.float() / 1000).clamp(min=X0_SIGMA_MIN).repeat_interleave(self.sizes.patch_size[0], dim=1)
            return ((latents.float() - x0.float()) / sigma[:, None, :, None, None]).to(dtype)

    def forward_train(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, controls: torch.Tensor | None,
                      frame_pos: torch.Tensor, attn_mask: torch.Tensor,
                      flex: FlexAttention | None = None) -> torch.Tensor:
        """Training forward without a cache: flow ``(B, out_dim, F, H, W)`` for latents ``x`` ``(B, in_dim, F, H, W)``.

        ``t``: ``(B, F)``; ``context``: ``(B, F, L, text_dim)`` (each frame its own conditions) or ``(B, L, text_dim)``;
        ``controls``: ``(B, F, num_controls)`` or None; ``frame_pos``: ``(F,)`` temporal RoPE position of each
        frame (frames may share positions: a clean and a noisy copy of one latent frame); ``attn_mask``:
        ``(F, F)`` bool, True where frame i may attend to frame j (expanded to tokens, or with ``flex`` to a
        block mask that skips the masked tiles: same result, less work). RoPE is applied in
        float32 here (angles still computed in float64), the inference path keeps the reference's float64.
        """
        s = self.sizes
        b, f = x.shape[0], x.shape[2]
        assert s.patch_size[0] == 1, "forward_train needs a time patch of 1"
        assert t.shape == (b, f), f"timesteps must be (B, F) = {(b, f)}, got {tuple(t.shape)}"
        assert frame_pos.shape == (f,), f"frame_pos must be (F,) = ({f},), got {tuple(frame_pos.shape)}"
        assert attn_mask.shape == (f, f) and attn_mask.dtype == torch.bool, (
            f"attn_mask must be bool (F, F) = {(f, f)}, got {tuple(attn_mask.shape)} {attn_mask.dtype}")
        latents = x
        x, e, grid = self._train_blocks(x, t, context, controls, frame_pos, attn_mask, flex, None)
        return self.finish(x, e, grid, latents, t)

    def block_features(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
                       controls: torch.Tensor | None, frame_pos: torch.Tensor, attn_mask: torch.Tensor,
                       flex: FlexAttention | None = None) -> list[torch.Tensor]:
        """Every block's output tokens ``(B, F*T, C)`` for :meth:`forward_train`'s inputs (the head is not run):
        the features a latent critic reads (``backend.training.critic``)."""
        assert self.sizes.patch_size[0] == 1, "block_features needs a time patch of 1"
        features: list[torch.Tensor] = []
        self._train_blocks(x, t, context, controls, frame_pos, attn_mask, flex, features)
        return features

    def _train_blocks(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, controls: torch.Tensor | None,
                      frame_pos: torch.Tensor, attn_mask: torch.Tensor, flex: FlexAttention | None,
                      features: list[torch.Tensor] | None
                      ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
        """The blocks of a cache-free training pass: the last block's tokens, the time embedding and the token
        grid; each block's output appended to ``features`` when given."""
        x, e, e0, (gf, gh, gw) = self._embed(x, t, controls, context)
        frame_tokens = gh * gw
        context = self.embed_context(context, x.dtype)
        ang = self.rope.angles_at(frame_pos, gh, gw).to(x.device)
        rope = (torch.cos(ang).float(), torch.sin(ang).float())
        attn: Attention
        mask: Any  # (S, S) bool tensor, or flex's BlockMask over the same tokens
        if flex is not None:
            attn, mask = flex, flex.frame_mask(attn_mask, frame_tokens)
        else:
            attn = self.attention
            mask = attn_mask.repeat_interleave(frame_tokens, 0).repeat_interleave(frame_tokens, 1)  # (S, S)
        for i, block in enumerate(self.blocks):
            x = block(x, e0, self.cross_kv(i, context, None), rope, attn, None, None, i, mask)
            if features is not None:
                features.append(x)
        return x, e, (gf, gh, gw)

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        b = x.shape[0]
        co, (pt, ph, pw), (gf, gh, gw) = self.sizes.out_dim, self.sizes.patch_size, grid
        x = x.reshape(b, gf, gh, gw, pt, ph, pw, co)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(b, co, gf * pt, gh * ph, gw * pw)


def block_count(state: dict[str, torch.Tensor]) -> int:
    """How many transformer blocks a DiT state dict holds (``blocks.{i}.*`` keys)."""
    return 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)


def deepen_state(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """A DiT state dict with ``layers`` blocks made from one with fewer, computing the same function: the new
    blocks are spread evenly between the old ones, each a copy of the block before it with its residual outputs
    (``BLOCK_OUTPUTS``) zeroed, so it passes its input through until training moves those projections (block
    expansion as in LLaMA Pro: the deeper model starts where the trained one stands, not from scratch)."""
    old = block_count(state)
    if layers < old:
        raise ValueError(f"deepen_state: the DiT has {old} blocks; {layers} would drop some")
    extra = layers - old
    after = [i * old // extra for i in range(extra)]  # the old block each new one follows
    plan: list[tuple[int, bool]] = []  # (old block to copy, zero its outputs) per new position
    for b in range(old):
        plan.append((b, False))
        plan += [(b, True)] * after.count(b)
    out = {k: v for k, v in state.items() if not k.startswith("blocks.")}
    for j, (b, fresh) in enumerate(plan):
        prefix = f"blocks.{b}."
        for k, v in state.items():
            if k.startswith(prefix):
                rest = k[len(prefix):]
                out[f"blocks.{j}.{rest}"] = torch.zeros_like(v) if fresh and rest.startswith(BLOCK_OUTPUTS) else v.clone()
    return out
