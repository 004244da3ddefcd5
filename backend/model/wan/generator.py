"""The Wan-tier generator: a Wan2.1-based causal checkpoint streaming an idol made from one image.

Per chunk: sample the chunk's latents with the causal DiT (``steps`` passes plus one at t=0 that writes the
KV cache, as Self-Forcing's inference; that pass runs at the start of the next chunk, ``defer_cache_pass``, and
stops at the last block's K/V), stream-decode them with TAEHV (default) or the Wan VAE's causal
decoder, upscale to the output size, return RGBA uint8 (opaque). Identity: :meth:`WanGenerator.reset`
encodes the reference image with the Wan VAE as the first latent frame and writes it into the cache's sink,
where it stays for the whole stream.

Conditioning is text only: :class:`~backend.model.generator.Conditions` ``.text`` holds the prompt's umT5
rows ``(L <= text_len, text_dim)``, zero-padded to ``text_len`` here exactly as ``WanModel`` pads them (the
action and emotion are kept for the state, not embedded: the DiT's LiveIdol extras stay zero for Wan
weights). When the text changes the cross-attention cache is refreshed at the next chunk.
:class:`PromptConditions` is the engine's conditions factory: it turns (action, emotion, prompt) into text
through the character's templates and the non-blocking :class:`~backend.model.wan.text.PromptEncoder`.

Usage::

    gen = build_wan_generator(cfg.model, character)      # DiT + VAE encoder + decoder + text encoder
    make = gen.conditions_factory()                       # for Engine(conditions=make)
    gen.reset(reference_rgba, make("idle", "neutral", ""))
    frames = gen.next_chunk(make("wave", "happy", ""))    # (N, out_h, out_w, 4) uint8
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from backend.actions import ACTIONS
from backend.config import ModelConfig
from backend.model.accel import FastDiT
from backend.model.attention import select_attention
from backend.model.checkpoint import init_dit_, load_dit, load_weights
from backend.model.dit import CausalDiT
from backend.model.generator import (
    Conditions,
    GeneratorError,
    PendingFrames,
    StreamingGenerator,
    StreamSnapshot,
    reference_float,
    resolve_device,
)
from backend.model.sampler import sample_chunk
from backend.model.wan.prompts import PromptTemplates
from backend.model.wan.taehv import (
    TAEHV,
    StreamingTAEHVDecoder,
    TAEHVConfig,
    TAEHVDecoderSnapshot,
    load_taehv,
)
from backend.model.wan.text import PromptEncoder, UMT5TextEncoder
from backend.model.wan.vae import StreamingWanDecoder, WanDecoderSnapshot, WanVAE, WanVAEConfig, load_wan_vae

__all__ = ["PromptConditions", "WanGenerator", "WanSnapshot", "build_wan_generator"]

log = logging.getLogger(__name__)

Decoder = StreamingWanDecoder | StreamingTAEHVDecoder
M = TypeVar("M", bound=torch.nn.Module)


@dataclass(frozen=True)
class WanSnapshot(StreamSnapshot):
    """Opaque state of a :class:`WanGenerator` at a chunk boundary."""

    decoder: WanDecoderSnapshot | TAEHVDecoderSnapshot = field(repr=False)
    pending: _CachePass | None = field(default=None, repr=False)  # the last chunk's cache pass, not run yet
    flushed: list[bool] = field(default_factory=lambda: [False])  # set when the next chunk ran that pass


@dataclass(frozen=True)
class _CachePass:
    """What the cache pass of a made chunk needs, kept until the next chunk runs it first (``defer_cache_pass``):
    the chunk's clean latents, its text context and cross-attention K/V, and its first latent frame."""

    x0: torch.Tensor = field(repr=False)
    context: torch.Tensor = field(repr=False)
    cross: tuple[list, list] = field(repr=False)
    position: int


class WanGenerator(StreamingGenerator):
    """Streaming generator over a Wan2.1 causal DiT (the engine's ``FrameGenerator``; see module docstring).

    ``vae``: the Wan VAE (its encoder makes the sink frame; also the decoder when ``decoder`` is None);
    ``decoder``: a streaming decoder (TAEHV's or the VAE's); ``weights``: a flat DiT state dict instead of
    ``cfg.checkpoint``. Not thread-safe; the engine runs it on one worker thread.
    """

    def __init__(self, cfg: ModelConfig, vae: WanVAE, decoder: Decoder | None = None, *,
                 weights: dict[str, torch.Tensor] | None = None, prompts: PromptEncoder | None = None,
                 templates: PromptTemplates | None = None, idle_action: str = "idle") -> None:
        self.cfg = cfg
        s, ae = cfg.dit, cfg.autoencoder
        if s.in_dim != vae.cfg.z_dim or s.out_dim != vae.cfg.z_dim:
            raise GeneratorError(f"model.dit.in_dim/out_dim = {s.in_dim}/{s.out_dim} but the Wan VAE has "
                                 f"{vae.cfg.z_dim} latent channels")
        self._check_stream_config(cfg)
        sf, tf = vae.cfg.spatial_factor, vae.cfg.temporal_factor
        if (ae.spatial_factor, ae.temporal_factor) != (sf, tf):
            raise GeneratorError(f"model.autoencoder.spatial_factor/temporal_factor = {ae.spatial_factor}/"
                                 f"{ae.temporal_factor}, the Wan VAE's are {sf}/{tf}")
        if ae.native_width % (sf * s.patch_size[2]) or ae.native_height % (sf * s.patch_size[1]):
            raise GeneratorError(f"model.autoencoder.native_width x native_height = {ae.native_width}x"
                                 f"{ae.native_height}: both must be multiples of {sf * s.patch_size[1]} "
                                 "(VAE factor x patch), e.g. 832x480 or 960x544")
        if cfg.steps > min(4, len(cfg.timesteps)):
            raise GeneratorError(f"model.steps = {cfg.steps} but model.timesteps has only {len(cfg.timesteps)} values")
        if cfg.guidance > 0:
            log.warning("model.guidance is not used by the Wan tier (guidance=%s)", cfg.guidance)
        self.device, self.dtype = resolve_device(cfg)
        attn = select_attention(cfg.attention, self.device, dtype=self.dtype, sparse_keep=cfg.sparse_keep)
        self.dit = CausalDiT(s, attention=attn)
        self._load(weights)
        self.dit.to(self.device, self.dtype).eval().requires_grad_(False)
        cuda = self.device.type == "cuda"  # model.compile: compiled cached passes replayed as CUDA graphs
        # one graph per cache placement of a chunk: while the cache fills, every chunk lands at a new place (9
        # places for 1-latent chunks and a 9-frame window, the last one the steady state): room for all of them
        graphs = max(8, 2 * (cfg.sink_frames + cfg.window_frames) + 4)
        self.fast = FastDiT(self.dit, compile=cfg.compile and cuda, graphs=cfg.compile and cuda, max_graphs=graphs)
        self.vae = vae.to(self.device, self.dtype)
        self.decoder: Decoder = decoder if decoder is not None else StreamingWanDecoder(self.vae)
        self.prompts, self.templates, self.idle_action = prompts, templates or PromptTemplates(), idle_action
        # decode on a second CUDA stream, overlapped with the next chunk's passes (TAEHV only: its frame count
        # per chunk is known before it runs)
        self.decode_stream: torch.cuda.Stream | None = None
        if cuda and cfg.wan.decode_stream and isinstance(self.decoder, StreamingTAEHVDecoder):
            self.decode_stream = torch.cuda.Stream(self.device)
        self._init_stream()
        # A chunk's cache pass runs at the start of the next chunk's making instead of at its own end, so its
        # frames are decoded and shown one pass sooner, and a chunk that a command stops after that pass has
        # done work that stands (the pass writes the previous chunk's clean K/V: nothing of the stopped chunk).
        # The same passes with the same inputs in the same order on the cache: the same frames. Needs clean
        # context frames (model.context_noise = 0, as the Wan checkpoints): with noise the pass draws noise.
        self.defer_cache_pass = cfg.context_noise == 0
        self._pending_pass: _CachePass | None = None
        self._flushed: list[bool] | None = None  # the latest snapshot's ``flushed``
        log.info("wan generator ready device=%s dtype=%s attention=%s decoder=%s native=%dx%d output=%dx%d "
                 "tokens_per_frame=%d cache_mb=%.1f", self.device, self.dtype, attn.name, type(self.decoder).__name__,
                 *self.native_size, *self.output_size, self.frame_tokens, self.kv.nbytes / 2**20)

    def _load(self, flat: dict[str, torch.Tensor] | None) -> None:
        from backend.model.checkpoint import split_state

        weights = split_state(flat, "<weights>") if flat is not None else load_weights(self.cfg.checkpoint)
        if weights is None:
            init_dit_(self.dit, generator=torch.Generator().manual_seed(self.cfg.seed))
            log.info("wan generator weights source=random")
            return
        load_dit(self.dit, weights)
        log.info("wan generator weights source=%s", weights.source)

    def close(self) -> None:
        """Stop the text encoder's thread (the generator itself holds no other resources)."""
        if self.prompts is not None:
            self.prompts.close()

    # -- sizes -----------------------------------------------------------------------------------
    @property
    def parameter_count(self) -> int:
        """Parameters of the DiT, the VAE and the frame decoder (the text encoder not counted)."""
        mods: list[torch.nn.Module] = [self.dit, self.vae]
        if isinstance(self.decoder, StreamingTAEHVDecoder):
            mods.append(self.decoder.tae)
        return sum(p.numel() for m in mods for p in m.parameters())

    # -- conditioning ----------------------------------------------------------------------------
    def conditions_factory(self) -> PromptConditions:
        """The engine's ``conditions`` factory for this generator (needs ``prompts``)."""
        if self.prompts is None:
            raise GeneratorError("the Wan generator was built without a text encoder")
        return PromptConditions(self.prompts, self.templates, idle_action=self.idle_action)

    def _check(self, c: Conditions) -> None:
        s = self.cfg.dit
        self._check_names(c)
        if c.text is None:
            raise GeneratorError("the Wan generator needs a text embedding: Conditions(text=...) "
                                 "(use WanGenerator.conditions_factory())")
        if c.text.ndim != 2 or c.text.shape[1] != s.text_dim or not 1 <= c.text.shape[0] <= s.text_len:
            raise GeneratorError(f"Conditions.text: expected (1 <= L <= {s.text_len}, {s.text_dim}), "
                                 f"got {tuple(c.text.shape)}")

    def _apply(self, c: Conditions) -> None:
        prev = self._switch_conditions(c)
        if prev is not None and c.same_text(prev) and self._context is not None:
            return
        assert c.text is not None
        s = self.cfg.dit
        text = c.text.to(self.device, self.dtype)
        pad = text.new_zeros(s.text_len - text.shape[0], s.text_dim)  # WanModel's zero padding to text_len
        self._context = torch.cat([text, pad])[None]  # (1, text_len, text_dim)
        self.cross.reset()  # refreshed from the new context by the next pass

    def _flow(self, x: torch.Tensor, t: torch.Tensor, cache_only: bool = False) -> torch.Tensor:  # x: (B, F, C, h, w)
        """The DiT's flow for ``x``; with ``cache_only`` (the pass after the last step, whose flow nobody reads)
        the cache is written and ``x`` returned."""
        assert self._context is not None
        out = self.fast(x.permute(0, 2, 1, 3, 4).to(self.dtype), t, self._context, start_frame=self._position,
                        cache=self.kv, cross_cache=self.cross, cache_only=cache_only, before_launch=self._before_pass)
        return x if cache_only else out.permute(0, 2, 1, 3, 4)

    # -- snapshots -------------------------------------------------------------------------------
    @torch.inference_mode()
    def snapshot(self) -> WanSnapshot:
        snap = WanSnapshot(**self._snapshot_stream(), decoder=self.decoder.snapshot(), pending=self._pending_pass)
        self._flushed = snap.flushed
        return snap

    @torch.inference_mode()
    def restore(self, snap: WanSnapshot) -> None:
        self._restore_stream(snap)
        self.decoder.restore(snap.decoder)  # type: ignore[arg-type]
        # a cache pass that ran after the snapshot stands when the cache is rewound (it wrote the slots of a chunk
        # made before the snapshot, which a rewind keeps); a copy of the cache brings back the slots before it
        self._pending_pass = snap.pending if not snap.flushed[0] or self.copy_cache_snapshots else None
        self._flushed = snap.flushed

    def _run_pending_pass(self) -> None:
        """The deferred cache pass of the last chunk (if any), under that chunk's text and position."""
        p = self._pending_pass
        if p is None:
            return
        now = self._context, self.cross.state(), self._position
        self._context, self._position = p.context, p.position
        self.cross.load(p.cross)
        try:
            t = torch.zeros(p.x0.shape[:2], dtype=torch.float32, device=p.x0.device)
            self._flow(p.x0, t, cache_only=not self.full_cache_pass)
        finally:
            self._context, cross, self._position = now
            self.cross.load(cross)
        self._pending_pass = None
        if self._flushed is not None:
            self._flushed[0] = True

    # -- the stream ------------------------------------------------------------------------------
    def _reference_video(self, image: np.ndarray) -> torch.Tensor:
        rgba = reference_float(image)
        if rgba.shape[1] == 4:  # straight alpha over white: a cut-out avatar on a plain studio wall
            rgba = torch.cat([rgba[:, :3] * rgba[:, 3:] + (1 - rgba[:, 3:]), rgba[:, 3:]], dim=1)
        w, h = self.native_size
        rgb = torch.nn.functional.interpolate(rgba[:, :3], size=(h, w), mode="bicubic", antialias=True,
                                              align_corners=False).clamp(0, 1)  # (1, 3, H, W)
        return (rgb * 2 - 1)[:, :, None].to(self.device, self.dtype)  # (1, 3, 1, H, W) in [-1, 1]

    @torch.inference_mode()
    def reset(self, reference_rgba: np.ndarray | None, conditions: Conditions) -> None:
        """Start a new stream: clear caches, reseed, encode the reference as latent frame 0 into the sink."""
        self._check(conditions)
        video = self._reference_video(reference_rgba) if reference_rgba is not None else None
        self._reset_stream()
        self._pending_pass, self._flushed = None, None
        self._apply(conditions)
        if video is None:
            return
        latent = self.vae.encode(video).permute(0, 2, 1, 3, 4)  # (1, 1, C, h, w)
        self._flow(latent, torch.zeros((1, 1), device=self.device))  # the t=0 pass writes the sink frame
        side = self.decode_stream
        if side is None:
            self.decoder.step(latent.permute(0, 2, 1, 3, 4))  # primes the decoder's causal memory (1 frame, dropped)
        else:  # the decoder's memory is made, read and freed on its own stream only
            side.wait_stream(torch.cuda.current_stream(self.device))
            latent.record_stream(side)
            with torch.cuda.stream(side):
                self.decoder.step(latent.permute(0, 2, 1, 3, 4))
        self._position = self._action_start = 1

    @torch.inference_mode()
    def next_chunk(self, conditions: Conditions, *, mouth: np.ndarray | None = None,
                   steps: int | None = None, chunk_frames: int | None = None) -> np.ndarray:
        """The next chunk ``(N, out_h, out_w, 4)`` RGBA uint8 (N = 4 x latent frames; 1 + 4(F-1) for a
        stream's first chunk without a reference). ``mouth`` is accepted and ignored (no mouth control here)."""
        return self.start_chunk(conditions, mouth=mouth, steps=steps, chunk_frames=chunk_frames).result()

    @torch.inference_mode()
    def start_chunk(self, conditions: Conditions, *, mouth: np.ndarray | None = None,
                    steps: int | None = None, chunk_frames: int | None = None) -> PendingFrames:
        """:meth:`next_chunk` returning as soon as the DiT passes are queued: with a decode stream the
        decode and host copy run there, overlapped with the next chunk's passes (``.result()`` waits for the
        frames); without one the frames come back done. The generator's state has moved past the chunk
        either way: the next call continues the stream."""
        cfg = self.cfg
        steps, f = self._chunk_args(steps, chunk_frames)
        self._check(conditions)
        timer = self.timer
        passes = [0]
        if timer is not None:  # per-stage times: the denoising passes, then the pass that writes the cache
            timer.start()
        if self._pending_pass is not None:  # the previous chunk's cache pass first, under its own conditions
            self._run_pending_pass()
            if timer is not None:
                timer.lap("cache")
        self._apply(conditions)
        defer = self.defer_cache_pass and cfg.context_noise == 0
        position = self._position

        def flow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            passes[0] += 1
            cache = passes[0] > steps  # the pass after the last step writes the cache; its flow is not read
            out = self._flow(x, t, cache_only=cache and not self.full_cache_pass)
            if timer is not None:
                timer.lap("cache" if cache else "dit")
            return out
        x0 = sample_chunk(flow, self._chunk_noise(f), self.schedule.warp_list(cfg.timesteps[:steps]),
                          self.schedule, self._noise, context_t=1000.0 * cfg.context_noise, cache_pass=not defer)
        if defer:
            assert self._context is not None
            self._pending_pass = _CachePass(x0, self._context, self.cross.state(), position)
        if self.decode_stream is not None:
            assert isinstance(self.decoder, StreamingTAEHVDecoder)
            trim = self.decoder.tae.frames_to_trim if self.decoder.latent_frames == 0 else 0
            pending = self._finish_chunk_on(self.decode_stream, lambda: self._decode_rgba(x0), x0,
                                            self.frames_per_chunk(f) - trim, steps, f)
            # return when the passes are done (the decode goes on): the caller's clock then measures the
            # chunk's own work, and the host never queues more than one chunk ahead of the device
            torch.cuda.current_stream(self.device).synchronize()
            return pending
        rgba = self._decode_rgba(x0)
        if timer is not None:
            timer.lap("decode")
        return PendingFrames.ready(self._finish_chunk(rgba, steps, f))

    def _decode_rgba(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents ``(1, F, C, h, w)`` -> opaque RGBA ``(T, 4, H, W)`` in [0, 1] (the decoder's state moves on)."""
        video = self.decoder.step(x0.permute(0, 2, 1, 3, 4))[0]  # (3, T, H, W) in [-1, 1]
        rgb = ((video.float() + 1) / 2).clamp(0, 1).permute(1, 0, 2, 3)  # (T, 3, H, W)
        return torch.cat([rgb, torch.ones_like(rgb[:, :1])], dim=1)


class PromptConditions:
    """The engine's conditions factory for the Wan tier: (action, emotion, prompt) -> ``Conditions(text=...)``.

    Never blocks once the first prompt is encoded: a prompt not yet embedded is queued on the encoder's
    thread and the previous embedding is used until it is ready (then the next chunk switches). Every action's
    prompt at the current emotion is prefetched in the background, so a command usually finds it ready.
    """

    def __init__(self, prompts: PromptEncoder, templates: PromptTemplates, *, idle_action: str = "idle") -> None:
        self.prompts, self.templates, self.idle_action = prompts, templates, idle_action
        self._current: tuple[str, torch.Tensor] | None = None
        self._prefetched: str | None = None  # the emotion whose action prompts were queued for prefetch

    @property
    def current_text(self) -> str:
        """The text whose embedding the last conditions carried."""
        return self._current[0] if self._current is not None else ""

    def __call__(self, action: str, emotion: str, prompt: str, serial: int = 0,
                 progress: Any = None) -> Conditions:
        text = self.templates.text(action, emotion, prompt, idle_action=self.idle_action)
        emb, exact = self.prompts.lookup(text)
        if exact and emb is not None:
            self._current = (text, emb)
        elif self._current is None:
            self._current = (text, self.prompts.encode_now(text))  # the very first prompt: nothing to fall back on
        if emotion != self._prefetched:  # every action's prompt at this emotion, so a command finds it ready
            self._prefetched = emotion
            self.prompts.prefetch([self.templates.text(a.name, emotion, idle_action=self.idle_action) for a in ACTIONS])
        # the serial restarts a repeated command (the Wan DiT has no progress control: ``progress`` is unused)
        return Conditions(action=action, emotion=emotion, text=self._current[1], serial=serial)


def build_wan_generator(cfg: ModelConfig, templates: PromptTemplates | None = None, *, idle_action: str = "idle",
                        vae_cfg: WanVAEConfig | None = None, taehv_cfg: TAEHVConfig | None = None) -> WanGenerator:
    """The Wan-tier generator from ``cfg`` (``model.family = 'wan'``): the DiT from ``model.checkpoint``, the
    VAE from ``model.wan.vae``, the decoder (``model.wan.decoder``: TAEHV from ``model.wan.taehv`` or the
    VAE's), the text encoder from ``model.wan.text_encoder``. ``''``: the `liveidol models pull` cache;
    ``'random'``: random weights (benchmarks; with ``model.checkpoint = 'random'`` every piece left at '' is random
    too). ``vae_cfg`` / ``taehv_cfg``: other sizes than the public weights' (tests)."""
    if cfg.checkpoint in ("", "builtin"):
        cfg = dataclasses.replace(cfg, checkpoint=str(_path("", "model.checkpoint", "self-forcing-dmd")))
    if cfg.checkpoint == "random":
        unset: dict[str, Any] = {k: "random" for k in ("vae", "taehv", "text_encoder") if not getattr(cfg.wan, k)}
        cfg = dataclasses.replace(cfg, wan=dataclasses.replace(cfg.wan, **unset))
    w = cfg.wan
    device, dtype = resolve_device(cfg)
    if w.vae == "random":
        vae = _seeded(lambda: WanVAE(vae_cfg or WanVAEConfig()), cfg.seed, device, dtype)
    else:
        vae = load_wan_vae(_path(w.vae, "model.wan.vae", "wan-vae"), device=device, dtype=dtype, cfg=vae_cfg)
    decoder: Decoder
    if w.decoder == "taehv":
        if w.taehv == "random":
            tae = _seeded(lambda: TAEHV(taehv_cfg or TAEHVConfig()), cfg.seed, device, dtype)
        else:
            tae = load_taehv(_path(w.taehv, "model.wan.taehv", "taehv"), device=device, dtype=dtype, cfg=taehv_cfg)
        decoder = StreamingTAEHVDecoder(tae)
    else:
        decoder = StreamingWanDecoder(vae)
    text_device = device if w.text_encoder_device == "auto" else torch.device(w.text_encoder_device)
    text_dtype = dtype if text_device.type != "cpu" or dtype != torch.float16 else torch.float32
    if w.text_encoder == "random":
        encoder = UMT5TextEncoder.random(dim=cfg.dit.text_dim, text_len=cfg.dit.text_len, device=text_device,
                                         dtype=text_dtype, seed=cfg.seed, offload=w.text_encoder_offload)
    else:
        encoder = UMT5TextEncoder.from_folder(_path(w.text_encoder, "model.wan.text_encoder", "umt5-xxl"),
                                              text_len=cfg.dit.text_len, device=text_device, dtype=text_dtype,
                                              offload=w.text_encoder_offload)
    if encoder.dim != cfg.dit.text_dim:
        raise GeneratorError(f"the text encoder gives {encoder.dim}-wide rows but model.dit.text_dim = "
                             f"{cfg.dit.text_dim}")
    prompts = PromptEncoder(encoder, capacity=w.prompt_cache).start()
    return WanGenerator(cfg, vae, decoder, prompts=prompts, templates=templates, idle_action=idle_action)


def _seeded(make: Callable[[], M], seed: int, device: torch.device, dtype: torch.dtype) -> M:
    """``make()``'s module with its random init drawn from ``seed`` (the global RNG left as it was), for inference."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make().to(device, dtype).eval().requires_grad_(False)


def _path(value: str, key: str, recipe: str) -> Path:
    """``value`` as a path; '' = where `liveidol models pull RECIPE` puts it (which must exist then)."""
    if value:
        return Path(value).expanduser()
    from backend.model.wan.hub import local_path

    path = local_path(recipe)
    if not path.exists():
        raise GeneratorError(f"{key} is not set and {path} does not exist: run `liveidol models pull {recipe}` "
                             f"(offline: copy the files there), or set {key} to a local path")
    return path
