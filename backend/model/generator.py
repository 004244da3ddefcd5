"""The generator: the one synchronous API the streaming engine uses.

Per chunk: sample the chunk's latents with the causal DiT (``steps`` denoising passes plus one
clean pass at t=0 that writes the KV cache), stream-decode them with the autoencoder (its native decoder, or
a detail decoder: ``model.decoder``), resample to the output size, return RGBA uint8. Identity comes from the sink: :meth:`Generator.reset` encodes the
reference image into one latent frame and writes it into the cache at frame position 0.

Usage::

    gen = Generator(model_cfg)
    gen.reset(reference_rgba, Conditions())
    frames = gen.next_chunk(Conditions(action="wave"), mouth=None)  # (N, out_h, out_w, 4) uint8

Conditioning per chunk: ``Conditions`` (action, emotion, optional free-text embedding) become the
cross-attention context (its cache is recomputed only when they change); per latent frame the
controls are ``[mouth openness of its temporal_factor video frames..., action progress, emotion progress]``
(:func:`control_vector`, shared with training): how far the current action and the current emotion have come,
so the model knows when a face must have finished changing even where the frames before it have not. An action
switch takes effect at the next chunk; frames already produced never change (causality).

:class:`StreamingGenerator` is what this generator and the Wan tier's (``backend/model/wan/generator.py``)
share: caches, seeded noise, counters, snapshots, argument checks and the upscale-to-uint8 tail.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from backend.actions import ACTION_INDEX, EMOTION_INDEX, EMOTIONS, action
from backend.config import ModelConfig
from backend.errors import LiveIdolError
from backend.model.accel import FastDiT
from backend.model.attention import select_attention
from backend.model.autoencoder import (
    DECODERS,
    DETAIL_DECODERS,
    DETAIL_PREFIXES,
    VideoAutoencoder,
    quantize_hwc,
    to_uint8_hwc,
    upscale,
    upscale_uint8_hwc,
)
from backend.model.checkpoint import (
    check_config,
    init_dit_,
    load_dit,
    load_into,
    load_weights,
    recorded,
    split_state,
)
from backend.model.dit import CausalDiT
from backend.model.fp8 import fp8_supported, quantize_blocks_
from backend.model.kv_cache import CrossAttentionCache, KVCache, KVMark
from backend.model.sampler import FlowMatchSchedule, sample_chunk

__all__ = [
    "ACTION_FPS",
    "ChunkInterrupted",
    "Conditions",
    "Generator",
    "GeneratorError",
    "GeneratorSnapshot",
    "GeneratorState",
    "PendingFrames",
    "StageTimer",
    "StreamSnapshot",
    "StreamingGenerator",
    "action_progress",
    "control_vector",
    "distilled_pushes",
    "emotion_progress",
    "emotion_pushes",
    "reference_float",
    "residual_pushes",
    "resolve_device",
]

logger = logging.getLogger(__name__)

ACTION_FPS = 25.0  # video frame rate at which backend.actions durations are counted
EMOTION_RAMP_S = 1.0  # the emotion progress control goes 0 -> 1 over this long after an emotion changes (the world's
# face blends over about 0.6-0.9 s)
NO_EMOTION_CHANGE = -(1 << 30)  # latent position of "the emotion never changed" (its progress is 1)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class GeneratorError(LiveIdolError, ValueError):
    """Bad input to the generator (unknown action, wrong mouth length, bad reference image ...).

    Raised before any state changes: the stream can go on with corrected input.
    """


class ChunkInterrupted(LiveIdolError):
    """:meth:`StreamingGenerator.next_chunk` stopped between two passes because its ``interrupt`` check said
    so (the engine: a command came). The generator is then mid-chunk: restore the snapshot taken before it."""


@dataclass(frozen=True)
class Conditions:
    """What the idol should do from the next chunk on."""

    action: str = "idle"
    emotion: str = "neutral"
    text: torch.Tensor | None = field(default=None, compare=False)  # (L, text_dim) free-text embedding
    serial: int = 0  # bump it (e.g. the command id) to restart the same action from progress 0
    # The action's progress in [0, 1] at each VIDEO frame of the next chunk, from its one timing owner (the
    # engine's session, at the stream's fps); latent frame j takes the value of its first video frame. None:
    # the generator counts it itself from the chunks it made, at ACTION_FPS (tools, training, eval).
    progress: np.ndarray | None = field(default=None, compare=False, repr=False)

    def same_as(self, other: Conditions | None) -> bool:
        """Same action, emotion and text (the serial does not change the context)."""
        if other is None or (self.action, self.emotion) != (other.action, other.emotion):
            return False
        return self.same_text(other)

    def same_text(self, other: Conditions) -> bool:
        """Same text embedding (both None counts as the same)."""
        if self.text is None or other.text is None:
            return self.text is other.text
        return self.text is other.text or (self.text.shape == other.text.shape and torch.equal(self.text, other.text))


@dataclass(frozen=True)
class GeneratorState:
    frames_made: int  # video frames returned since reset
    latent_frames_made: int  # latent frames generated since reset (the sink not counted)
    chunks_made: int
    cache_frames: int  # latent frames now held in the KV cache
    cache_bytes: int  # self-attention + cross-attention cache memory
    steps: int
    chunk_frames: int
    attention_backend: str
    device: str
    dtype: str
    action: str  # the current action
    action_progress: float  # its progress at the next latent frame (1.0 = a one-shot action has finished)
    emotion_progress: float = 1.0  # the current emotion's progress at the next latent frame (1.0 = settled)
    linears: str = "dense"  # 'dense' or 'fp8' (the DiT blocks' linears)
    compiled: bool = False  # the cached DiT step compiled and replayed as CUDA graphs


def resolve_device(cfg: ModelConfig) -> tuple[torch.device, torch.dtype]:
    """``cfg.device`` / ``cfg.dtype`` with 'auto' resolved (CUDA + bfloat16 when present, else CPU + float32)."""
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif cfg.device == "cuda" and not torch.cuda.is_available():
        raise GeneratorError("model.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    else:
        device = torch.device(cfg.device)
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = _DTYPES[cfg.dtype]
    return device, dtype


def action_progress(name: str, frames_since_start: int, temporal_factor: int) -> float:
    """Progress in [0, 1] of action ``name`` ``frames_since_start`` latent frames after it began.

    One-shot actions: elapsed / duration, clipped at 1. Looping actions (idle, talk): the fraction
    within the current loop period. Durations come from backend.actions at ACTION_FPS.
    """
    act = action(name)
    duration = act.duration_s * ACTION_FPS / temporal_factor  # latent frames
    if duration <= 0:
        return 1.0
    if act.loop:
        return (frames_since_start % duration) / duration
    return min(max(frames_since_start / duration, 0.0), 1.0)


def emotion_pushes(cfg: ModelConfig) -> dict[str, float]:
    """Emotion guidance's push ``w`` per emotion it pushes (``f + w (f - f_neutral)``): ``model.emotion_guidance``
    times each emotion's ``model.emotion_guidance_weights``, for the emotions of ``model.emotion_guidance_for``.
    Shared by the generator and the distillation that folds the push into the weights."""
    moods = [e for e in EMOTIONS if e != "neutral"]  # what emotion guidance can push
    unknown = [e for e in cfg.emotion_guidance_for if e not in moods]
    if unknown:
        raise GeneratorError(f"model.emotion_guidance_for: unknown {', '.join(map(repr, unknown))} (allowed: "
                             f"{', '.join(moods)})")
    scales = cfg.emotion_guidance_weights or (1.0,) * len(moods)
    if len(scales) != len(moods) or not all(math.isfinite(w) and w >= 0 for w in scales):
        raise GeneratorError(f"model.emotion_guidance_weights: {list(cfg.emotion_guidance_weights)} must give one "
                             f"finite weight >= 0 for each of {', '.join(moods)} (or be empty)")
    return {e: cfg.emotion_guidance * w for e, w in zip(moods, scales) if e in cfg.emotion_guidance_for}


def distilled_pushes(record: Mapping[str, Any]) -> dict[str, float]:
    """The emotion guidance a training record (a checkpoint's ``training`` metadata, a distill run's state) says is
    distilled into the weights: emotion -> push (empty: none)."""
    return {str(k): float(v) for k, v in (record.get("emotion_guidance_distilled") or {}).items()}


def residual_pushes(wanted: Mapping[str, float], distilled: Mapping[str, float]) -> dict[str, float]:
    """The emotion guidance the generator still runs on weights with ``distilled`` pushes folded in, so that what a
    viewer gets is the ``wanted`` push (:func:`emotion_pushes`): emotion -> ``w'``, only where the two differ.

    A student distilled with push ``d`` draws about ``f + d (f - f_n)`` for that emotion and ``f_n`` under neutral
    (neutral is never pushed); pushing it once more by ``w'`` gives ``(1 + w')(1 + d) f - ...``, which is the
    teacher pushed by ``w`` when ``w' = (w - d) / (1 + d)`` (negative: a weaker face than the distilled one)."""
    out = {}
    for e in sorted(set(wanted) | set(distilled)):
        w, d = wanted.get(e, 0.0), distilled.get(e, 0.0)
        if not math.isclose(w, d, abs_tol=1e-9):
            out[e] = (w - d) / (1.0 + d)
    return out


def emotion_progress(frames_since_change: int, temporal_factor: int) -> float:
    """Progress in [0, 1] of the current emotion ``frames_since_change`` latent frames after it changed: elapsed
    over ``EMOTION_RAMP_S``, clipped (an emotion held since the stream or clip began is at 1)."""
    return min(max(frames_since_change / (EMOTION_RAMP_S * ACTION_FPS / temporal_factor), 0.0), 1.0)


def control_vector(mouth_frames: Sequence[float] | np.ndarray | torch.Tensor | None, progress: float,
                   cfg: ModelConfig, emotion: float = 1.0) -> torch.Tensor:
    """Controls of ONE latent frame: ``[mouth of its temporal_factor video frames..., progress, emotion]``,
    zero-padded to ``cfg.dit.num_controls``; float32 ``(num_controls,)``. Shared with training.

    ``mouth_frames``: openness in [0, 1] per video frame (None = closed); values are clipped. ``emotion``: the
    emotion's progress (:func:`emotion_progress`), kept when ``num_controls`` has room for it (past
    ``temporal_factor + 1``); checkpoints trained before it have zero weights there, so it changes nothing.
    """
    tf, n = cfg.autoencoder.temporal_factor, cfg.dit.num_controls
    out = torch.zeros(n, dtype=torch.float32)
    if n == 0:
        return out
    if n < tf + 1:
        raise GeneratorError(f"model.dit.num_controls = {n}: need at least temporal_factor + 1 = {tf + 1} "
                             "(mouth per video frame + action progress), or 0 for none")
    if mouth_frames is not None:
        m = torch.as_tensor(np.asarray(mouth_frames, dtype=np.float32)).reshape(-1)
        if m.numel() != tf:
            raise GeneratorError(f"control_vector: {m.numel()} mouth values, expected temporal_factor = {tf}")
        if not torch.isfinite(m).all():
            raise GeneratorError("control_vector: mouth values must be finite")
        out[:tf] = m.clamp(0.0, 1.0)
    out[tf] = float(min(max(progress, 0.0), 1.0))
    if n > tf + 1:
        out[tf + 1] = float(min(max(emotion, 0.0), 1.0))
    return out


def reference_float(image: np.ndarray) -> torch.Tensor:
    """A reference image, checked: an (H, W, 4) or (H, W, 3) uint8 array -> ``(1, C, H, W)`` float32 in [0, 1]."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        got = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise GeneratorError(f"reference image: expected a (H, W, 4) or (H, W, 3) uint8 array, got {got}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise GeneratorError(f"reference image: empty shape {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0


@dataclass(frozen=True)
class StreamSnapshot:
    """The state every tier's generator snapshots: caches, noise, conditions and counters."""

    # the self-attention cache: a mark to rewind to (what the chunks since changed is kept, not the cache), or
    # with ``copy_cache_snapshots`` a copy of its K, V and counters
    kv: KVMark | tuple[torch.Tensor, torch.Tensor, tuple[int, int]] = field(repr=False)
    cross: tuple[list, list] = field(repr=False)
    noise: torch.Tensor = field(repr=False)
    conditions: Conditions | None
    context: torch.Tensor | None = field(repr=False)
    counters: tuple[int, ...]


@dataclass(frozen=True)
class GeneratorSnapshot(StreamSnapshot):
    """Opaque state of a :class:`Generator` at a chunk boundary (see :meth:`Generator.snapshot`)."""

    cross_idle: tuple[list, list] = field(repr=False)
    decoder: tuple[torch.Tensor | None, int] = field(repr=False)
    idle_context: torch.Tensor | None = field(repr=False)
    cross_neutral: tuple[list, list] = field(repr=False)
    neutral_context: torch.Tensor | None = field(repr=False)


class StageTimer:
    """Per-stage times of :meth:`Generator.next_chunk` on the device's own clock (CUDA events; the host
    clock on a CPU), read once per chunk after its frames reached the host, so timing adds no waits.

    ``laps`` maps a stage name to its durations in ms, one entry per chunk (several passes of one stage
    in a chunk are summed): ``dit`` (the denoising passes), ``cache`` (the pass that writes the clean
    K/V), ``decode``, ``upscale`` and ``host_copy`` (to uint8 and to the host).
    """

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.laps: dict[str, list[float]] = {}
        self._marks: list[tuple[str, object]] = []

    def _now(self) -> object:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        import time

        return time.perf_counter()

    def start(self) -> None:
        self._marks = [("", self._now())]

    def lap(self, stage: str) -> None:
        """The stage ``stage`` ends now (it began at the previous mark)."""
        if self._marks:
            self._marks.append((stage, self._now()))

    def take(self) -> list[tuple[str, object]]:
        """This chunk's marks, handed over (to fold in with :meth:`finish` once its frames are on the host)."""
        marks, self._marks = self._marks, []
        return marks

    def finish(self, marks: list[tuple[str, object]] | None = None) -> None:
        """Fold this chunk's marks (or ``marks`` from :meth:`take`) into ``laps`` (the device has finished:
        the frames are on the host)."""
        own = marks is None
        marks = self._marks if marks is None else marks
        chunk: dict[str, float] = {}
        for (_, a), (stage, b) in pairwise(marks):
            ms = a.elapsed_time(b) if self.cuda else 1000.0 * (b - a)  # type: ignore[attr-defined,operator]
            chunk[stage] = chunk.get(stage, 0.0) + ms
        for stage, ms in chunk.items():
            self.laps.setdefault(stage, []).append(ms)
        if own:  # marks handed over by take() are another chunk's: the next chunk may be marking meanwhile
            self._marks = []


class PendingFrames:
    """A chunk's frames on their way to the host: ``count`` RGBA uint8 frames. :meth:`done` asks without
    waiting; :meth:`result` waits and returns ``(count, H, W, 4)``.

    On CUDA with a decode stream (the Wan tier's ``model.wan.decode_stream``) the decode, the resampling and
    the copy into pinned host memory run on that second stream while the next chunk's DiT passes run on the
    main one; ``event`` marks their end and this object keeps the host buffer alive. Without one (a CPU, or
    the option off) the frames are already here (:meth:`ready`)."""

    def __init__(self, count: int, host: torch.Tensor | None = None, event: Any = None,
                 on_done: Callable[[], None] | None = None, frames: np.ndarray | None = None) -> None:
        self.count = count
        self._host, self._event, self._on_done, self._frames = host, event, on_done, frames

    @classmethod
    def ready(cls, frames: np.ndarray) -> PendingFrames:
        return cls(int(frames.shape[0]), frames=frames)

    def done(self) -> bool:
        return self._frames is not None or self._event is None or bool(self._event.query())

    def result(self) -> np.ndarray:
        if self._frames is None:
            if self._event is not None:
                self._event.synchronize()
            assert self._host is not None
            self._frames = self._host.numpy()  # the pinned buffer itself: it lives as long as the array
            self._host = self._event = None
            if self._on_done is not None:
                self._on_done()
                self._on_done = None
        return self._frames


class StreamingGenerator:
    """What every tier's generator shares (:class:`Generator`, the Wan tier's ``WanGenerator``): the sizes,
    the self- and cross-attention caches over the latent grid, the seeded chunk noise, the stream's counters
    and their snapshot, the checks of :meth:`next_chunk`'s arguments and the upscale-to-uint8 tail.

    A subclass sets ``cfg``, ``device``, ``dtype``, ``dit`` and ``decoder`` (``reset()``, ``step(latents)``),
    then calls :meth:`_init_stream`.
    """

    cfg: ModelConfig
    device: torch.device
    dtype: torch.dtype
    dit: CausalDiT
    decoder: Any
    fast: FastDiT

    @staticmethod
    def _check_stream_config(cfg: ModelConfig) -> None:
        if cfg.dit.patch_size[0] != 1:
            raise GeneratorError(f"model.dit.patch_size = {cfg.dit.patch_size}: the generator needs a time patch of 1")
        if cfg.chunk_frames > cfg.window_frames:
            raise GeneratorError(f"model.chunk_frames = {cfg.chunk_frames} exceeds model.window_frames = "
                                 f"{cfg.window_frames}: a chunk must fit the cache window")

    def _init_stream(self) -> None:
        """The caches, schedule, noise and counters (after ``dit``, ``device`` and ``dtype`` exist)."""
        cfg, s, ae = self.cfg, self.cfg.dit, self.cfg.autoencoder
        self.timer: StageTimer | None = None  # set one to collect per-stage times (the bench does)
        # Checked before every pass of next_chunk: True stops the chunk (ChunkInterrupted; see _before_pass).
        self.interrupt: Callable[[], bool] | None = None
        self.copy_cache_snapshots = False  # snapshots copy the whole KV cache (the former way; benchmarks compare)
        self.full_cache_pass = False  # the cache pass runs the whole DiT (the former way; benchmarks compare)
        self.latent_hw = (ae.native_height // ae.spatial_factor, ae.native_width // ae.spatial_factor)
        self.frame_tokens = self.dit.frame_tokens(*self.latent_hw)
        self.kv = KVCache(num_layers=s.num_layers, heads=s.num_heads, head_dim=self.dit.head_dim,
                          frame_tokens=self.frame_tokens, sink_frames=cfg.sink_frames,
                          window_frames=cfg.window_frames, dtype=self.dtype, device=self.device)
        self.cross = CrossAttentionCache(s.num_layers)
        self.schedule = FlowMatchSchedule(shift=cfg.shift)
        self._noise = torch.Generator().manual_seed(cfg.seed)
        self._conditions: Conditions | None = None
        self._context: torch.Tensor | None = None
        self._position = 0  # next absolute latent frame
        self._action_start = 0
        self._emotion_start = NO_EMOTION_CHANGE  # latent position where the current emotion began
        self._frames_made = self._latents_made = self._chunks_made = 0
        self._last_steps, self._last_chunk = cfg.steps, cfg.chunk_frames

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) of decoded frames before upscaling."""
        return self.cfg.autoencoder.native_width, self.cfg.autoencoder.native_height

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of returned frames."""
        return self.cfg.output_width, self.cfg.output_height

    def frames_per_chunk(self, chunk_frames: int | None = None) -> int:
        """Video frames returned by one :meth:`next_chunk` call."""
        return (chunk_frames or self.cfg.chunk_frames) * self.cfg.autoencoder.temporal_factor

    @property
    def state(self) -> GeneratorState:
        action_name = self._conditions.action if self._conditions is not None else "idle"
        progress = action_progress(action_name, self._position - self._action_start, self.cfg.autoencoder.temporal_factor)
        return GeneratorState(
            frames_made=self._frames_made, latent_frames_made=self._latents_made, chunks_made=self._chunks_made,
            cache_frames=self.kv.filled_frames, cache_bytes=self.kv.nbytes + self.cross.nbytes,
            steps=self._last_steps, chunk_frames=self._last_chunk, attention_backend=self.dit.attention.name,
            device=str(self.device), dtype=str(self.dtype).removeprefix("torch."), action=action_name,
            action_progress=progress, compiled=self.fast.compiled,
            emotion_progress=emotion_progress(self._position - self._emotion_start, self.cfg.autoencoder.temporal_factor))

    # -- conditioning --------------------------------------------------------------------------
    @staticmethod
    def _check_names(c: Conditions) -> None:
        if c.action not in ACTION_INDEX:
            raise GeneratorError(f"unknown action {c.action!r} (known: {', '.join(ACTION_INDEX)})")
        if c.emotion not in EMOTION_INDEX:
            raise GeneratorError(f"unknown emotion {c.emotion!r} (known: {', '.join(EMOTION_INDEX)})")

    def _switch_conditions(self, c: Conditions) -> Conditions | None:
        """Make ``c`` current (a new action, or a new play of it, starts at this chunk); the previous ones."""
        prev = self._conditions
        if prev is None or (c.action, c.serial) != (prev.action, prev.serial):
            self._action_start = self._position
        if c.emotion != ("neutral" if prev is None else prev.emotion):  # the reference shows the neutral face
            self._emotion_start = self._position
        self._conditions = c
        return prev

    def _before_pass(self) -> None:
        """Called before each DiT pass of a chunk: raise :class:`ChunkInterrupted` if ``interrupt()`` says so.
        On CUDA the host runs ahead of the device; with an ``interrupt`` set it first waits for the work
        queued so far (the previous pass), so a stop saves every pass not yet run. The Wan tier calls it from
        ``FastDiT`` once the next pass's inputs are queued (``before_launch``): the gap this leaves on the device
        is the eviction and one CUDA graph launch."""
        check = self.interrupt
        if check is None:
            return
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # releases the GIL while it waits
        if check():
            raise ChunkInterrupted("chunk interrupted between passes")

    def _to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A host tensor on the model's device and dtype; on CUDA through pinned memory, without waiting."""
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, self.dtype, non_blocking=True)
        return host.to(self.device, self.dtype)

    # -- snapshots (the engine rolls back unshown chunks when a command interrupts them) -----
    def _snapshot_stream(self) -> dict[str, Any]:
        """The :class:`StreamSnapshot` fields. The self-attention cache (the only state written in place) is
        marked: each chunk made after it keeps what a rewind needs (:meth:`KVCache.rewind`; a copy of the
        whole cache with ``copy_cache_snapshots``, as before: 2.9-3.8 GB at the Wan tier's sizes, per chunk);
        everything else is replaced, never mutated, so it is shared."""
        kv: Any = ((self.kv.k.clone(), self.kv.v.clone(), (self.kv.global_end, self.kv.local_end))
                   if self.copy_cache_snapshots else self.kv.mark())
        return dict(kv=kv, cross=self.cross.state(), noise=self._noise.get_state(),
                    conditions=self._conditions, context=self._context,
                    counters=(self._position, self._action_start, self._emotion_start, self._frames_made,
                              self._latents_made, self._chunks_made, self._last_steps, self._last_chunk))

    def _restore_stream(self, snap: StreamSnapshot) -> None:
        if isinstance(snap.kv, KVMark):
            self.kv.rewind(snap.kv)
        else:
            k, v, (self.kv.global_end, self.kv.local_end) = snap.kv
            self.kv.k.copy_(k)
            self.kv.v.copy_(v)
        self.cross.load(snap.cross)
        self._noise.set_state(snap.noise)
        self._conditions, self._context = snap.conditions, snap.context
        (self._position, self._action_start, self._emotion_start, self._frames_made, self._latents_made,
         self._chunks_made, self._last_steps, self._last_chunk) = snap.counters

    # -- the stream ----------------------------------------------------------------------------
    def _reset_stream(self) -> None:
        """Empty caches, reseeded noise, no conditions, counters at 0."""
        self.kv.reset()
        self.cross.reset()
        self.decoder.reset()
        self._noise.manual_seed(self.cfg.seed)
        self._conditions, self._context = None, None
        self._position = self._action_start = 0
        self._emotion_start = NO_EMOTION_CHANGE
        self._frames_made = self._latents_made = self._chunks_made = 0

    def _chunk_args(self, steps: int | None, chunk_frames: int | None) -> tuple[int, int]:
        """``next_chunk``'s ``steps`` and ``chunk_frames``, defaulted from config and checked."""
        cfg = self.cfg
        steps = cfg.steps if steps is None else steps
        f = cfg.chunk_frames if chunk_frames is None else chunk_frames
        max_steps = min(4, len(cfg.timesteps))
        if not 1 <= steps <= max_steps:
            raise GeneratorError(f"steps = {steps}: expected 1 to {max_steps}")
        if not 1 <= f <= cfg.window_frames:
            raise GeneratorError(f"chunk_frames = {f}: expected 1 to model.window_frames = {cfg.window_frames}")
        return steps, f

    def _chunk_noise(self, f: int) -> torch.Tensor:
        """The starting noise of an ``f``-latent-frame chunk ``(1, F, C, h, w)``, from the stream's seeded generator."""
        h, w = self.latent_hw
        return self._to_device(torch.randn((1, f, self.cfg.dit.in_dim, h, w), generator=self._noise))

    def _finish_chunk(self, frames: torch.Tensor, steps: int, f: int) -> np.ndarray:
        """Decoded RGBA ``(T, 4, H, W)`` in [0, 1] (the native size, or a detail decoder's: the mid one's 480x270
        is resampled 2x) -> the output size as uint8 on the host; counts the chunk."""
        timer = self.timer
        if frames.device.type == "cpu":  # resampled in uint8: a fifth of the float path's time on a CPU
            u8 = upscale_uint8_hwc(frames, self.output_size)
            if timer is not None:
                timer.lap("upscale")
            out = np.ascontiguousarray(u8.numpy())
        else:
            frames = upscale(frames.float(), self.output_size)
            if timer is not None:
                timer.lap("upscale")
            out = to_uint8_hwc(frames)
        if timer is not None:
            timer.lap("host_copy")
            timer.finish()
        self._count_chunk(steps, f, out.shape[0])
        return out

    def _count_chunk(self, steps: int, f: int, frames: int) -> None:
        self._position += f
        self._latents_made += f
        self._frames_made += frames
        self._chunks_made += 1
        self._last_steps, self._last_chunk = steps, f

    def _finish_chunk_on(self, stream: Any, decode: Callable[[], torch.Tensor], x0: torch.Tensor, count: int,
                         steps: int, f: int) -> PendingFrames:
        """:meth:`_finish_chunk` on the CUDA ``stream`` without waiting: ``decode()`` (RGBA ``(T, 4, H, W)`` in
        [0, 1] from ``x0``), the resampling, uint8, and a non-blocking copy into pinned host memory, all after
        the work queued so far on the current stream (the chunk's passes). ``x0`` is marked as used by
        ``stream`` so the allocator does not hand its memory to the next chunk's passes too early; what the
        decode allocates belongs to ``stream`` and is only reused there, in order."""
        timer = self.timer
        stream.wait_stream(torch.cuda.current_stream(self.device))
        x0.record_stream(stream)
        with torch.cuda.stream(stream):
            frames = decode()
            if timer is not None:
                timer.lap("decode")
            frames = upscale(frames.float(), self.output_size)
            if timer is not None:
                timer.lap("upscale")
            u8 = quantize_hwc(frames)
            host = torch.empty(u8.shape, dtype=torch.uint8, pin_memory=True)
            host.copy_(u8, non_blocking=True)
            if timer is not None:
                timer.lap("host_copy")
            done = torch.cuda.Event()
            done.record(stream)
        if int(u8.shape[0]) != count:
            raise GeneratorError(f"decoded {u8.shape[0]} frames, expected {count}")
        self._count_chunk(steps, f, count)
        marks = timer.take() if timer is not None else None
        return PendingFrames(count, host, done, on_done=(lambda: timer.finish(marks)) if timer is not None else None)


class Generator(StreamingGenerator):
    """Streaming video generator over a causal DiT, a bounded KV cache and a streaming decoder.

    usage::

        gen = Generator(model_cfg)                      # loads cfg.checkpoint unless weights are given
        gen.reset(reference_rgba, Conditions())         # the reference image becomes the sink frame
        frames = gen.next_chunk(Conditions(action="wave"), mouth=None)  # (N, out_h, out_w, 4) uint8

    Not thread-safe; the engine runs it on one worker thread. Same seed + same inputs => same frames.
    """

    def __init__(self, cfg: ModelConfig, *, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.cfg = cfg
        ae_cfg, sizes = cfg.autoencoder, cfg.dit
        if not (ae_cfg.latent_channels == sizes.in_dim == sizes.out_dim):
            raise GeneratorError(f"model.autoencoder.latent_channels = {ae_cfg.latent_channels} must equal "
                                 f"model.dit.in_dim = {sizes.in_dim} and out_dim = {sizes.out_dim}")
        self._check_stream_config(cfg)
        if 0 < sizes.num_controls < ae_cfg.temporal_factor + 1:
            raise GeneratorError(f"model.dit.num_controls = {sizes.num_controls}: need 0 or at least "
                                 f"temporal_factor + 1 = {ae_cfg.temporal_factor + 1}")
        if cfg.steps > min(4, len(cfg.timesteps)):
            raise GeneratorError(f"model.steps = {cfg.steps} but model.timesteps has only {len(cfg.timesteps)} "
                                 "values (at most 4 are used)")
        self.device, self.dtype = resolve_device(cfg)
        attn = select_attention(cfg.attention, self.device, dtype=self.dtype, sparse_keep=cfg.sparse_keep)
        self.dit = CausalDiT(sizes, attention=attn)
        self.autoencoder = VideoAutoencoder(ae_cfg)
        self._load(weights)
        self.dit.to(self.device, self.dtype).eval().requires_grad_(False)
        self.autoencoder.to(self.device, self.dtype).eval().requires_grad_(False)
        self.linears = self._pick_linears(cfg.linears)
        if self.linears == "fp8":
            quantize_blocks_(self.dit)  # after the dtype move: .to(dtype) would cast the e4m3 weights back
        cuda = self.device.type == "cuda"
        if cfg.compile and not cuda:
            logger.info("model.compile applies on CUDA only; the DiT runs eager on %s", self.device)
        self.fast = FastDiT(self.dit, compile=cfg.compile and cuda, graphs=cfg.compile and cuda)

        self._init_stream()
        # The cache pass one block short is checked bitwise on the CPU; on CUDA (compiled, graphs) one check against
        # the whole pass compared a cold run with a warm one and differed, so the default idol keeps the whole pass
        # there until a warmed comparison says the frames are the same (a GPU gains little from it: 470+ FPS).
        self.full_cache_pass = cuda
        _, ph, pw = sizes.patch_size
        if self.latent_hw[0] % ph or self.latent_hw[1] % pw:
            raise GeneratorError(f"latent grid {self.latent_hw} (native size / spatial_factor) is not divisible "
                                 f"by the patch {sizes.patch_size[1:]}")
        self.cross_idle = CrossAttentionCache(sizes.num_layers)  # the idle context, for action guidance
        self._idle_context: torch.Tensor | None = None
        self.cross_neutral = CrossAttentionCache(sizes.num_layers)  # the neutral-emotion context (emotion guidance)
        self._neutral_context: torch.Tensor | None = None
        # the push f + w (f - f_neutral) per emotion of emotion_guidance_for (others: not pushed); when the checkpoint
        # has it distilled (`liveidol train distill`) and model.distilled_guidance = 'skip', only what the configured
        # pushes differ by (the defaults on the shipped v8: angry alone, 1 asked where v8 has 2 inside)
        pushes = emotion_pushes(cfg)
        residual = bool(self.emotion_guidance_distilled) and cfg.distilled_guidance == "skip"
        self.emotion_push = residual_pushes(pushes, self.emotion_guidance_distilled) if residual else pushes
        if residual and self.emotion_push:
            logger.info("emotion guidance distilled %s, configured %s: residual push %s (one more pass on those "
                        "emotions)", self.emotion_guidance_distilled, pushes,
                        {e: round(w, 3) for e, w in self.emotion_push.items()})
        self.which_decoder = self._pick_decoder()  # 'native', 'mid' or 'hires'
        self.decoder = self.autoencoder.decoder_stream(which=self.which_decoder)
        logger.info("generator ready device=%s dtype=%s attention=%s native=%dx%d decoder=%s decoded=%dx%d "
                    "output=%dx%d tokens_per_frame=%d cache_frames=%d cache_mb=%.1f", self.device, self.dtype,
                    attn.name, *self.native_size, self.which_decoder, *self.decoded_size, *self.output_size,
                    self.frame_tokens, cfg.sink_frames + cfg.window_frames, self.kv.nbytes / 2**20)

    def check_framing(self, framing: str, where: str) -> None:
        """Raise GeneratorError unless the weights were trained on ``framing`` (a character's, named by ``where``):
        a reference framed otherwise would be drawn over in the framing the model knows."""
        if framing not in self.framings:
            raise GeneratorError(f"{where}: framing = {framing!r}, but {self._weights_source} was trained on "
                                 f"{' and '.join(map(repr, self.framings))} only (train it with model.framings "
                                 f"including {framing!r}, or set framing = {self.framings[0]!r})")

    def _pick_linears(self, choice: str) -> str:
        """'dense' or 'fp8' for ``model.linears``: 'auto' keeps dense (FP8 misses the error budget, see
        docs/perf-notes.md); 'fp8' needs bfloat16 on a GPU with FP8 matrix units."""
        if choice == "fp8":
            if self.dtype != torch.bfloat16 or not fp8_supported(self.device):
                raise GeneratorError(f"model.linears = 'fp8' needs model.dtype bfloat16 on a CUDA GPU with FP8 "
                                     f"matrix units (compute capability 8.9+); this run is {self.dtype} on {self.device}")
            return "fp8"
        if choice not in ("auto", "dense"):
            raise GeneratorError(f"model.linears = {choice!r}: expected 'auto', 'dense' or 'fp8'")
        return "dense"

    # -- weights -------------------------------------------------------------------------------
    def _load(self, flat: dict[str, torch.Tensor] | None) -> None:
        weights = split_state(flat, "<weights>") if flat is not None else load_weights(self.cfg.checkpoint)
        self._trained_details: set[str] = set()  # detail decoders ('mid', 'hires') whose weights the checkpoint has
        self._weights_source = "random weights" if weights is None else weights.source
        self.guidance_distilled = False
        self.emotion_guidance_distilled: dict[str, float] = {}  # emotion -> the push distilled into the weights
        self.framings: tuple[str, ...] = ("half",)  # what the weights were trained on (before the record: half)
        if weights is None:
            init_dit_(self.dit, generator=torch.Generator().manual_seed(self.cfg.seed))
            logger.info("generator weights source=random")
            return
        check_config(weights, self.cfg)
        # `liveidol train distill` folds the action guidance into the weights: no second pass then
        training = (weights.config or {}).get("training") or {}
        self.guidance_distilled = bool(training.get("guidance_distilled"))
        self.emotion_guidance_distilled = distilled_pushes(training)
        self.framings = tuple(recorded(weights, "training", "framings"))
        load_dit(self.dit, weights)
        if weights.autoencoder is not None:
            load_into(self.autoencoder, weights.autoencoder, source=weights.source, what="autoencoder",
                      optional_prefixes=DETAIL_PREFIXES)
            self._trained_details = {d for d in DETAIL_DECODERS if any(k.startswith(f"{d}.") for k in weights.autoencoder)}
        else:
            logger.warning("checkpoint has no autoencoder weights, the autoencoder stays untrained source=%s",
                           weights.source)
        logger.info("generator weights source=%s", weights.source)

    def _pick_decoder(self) -> str:
        """Which decoder draws the frames: ``model.decoder`` resolved. 'auto' takes, of the detail decoders the
        checkpoint has weights for, 'hires' on CUDA (else 'mid'), 'mid' on a CPU ('hires' is too slow there; the
        shipped 'mid' now beats the native decoder resampled on the round trip: 25.6-27.0 against 25.5-26.6 dB),
        and otherwise 'native'. An explicit detail decoder must be configured and, unless the checkpoint is
        'random', have weights."""
        mode = self.cfg.decoder
        if mode == "native":
            return "native"
        if mode in DECODERS:
            if getattr(self.autoencoder, mode) is None:
                raise GeneratorError(f"model.decoder = {mode!r} but model.autoencoder.{mode}_factors is empty: "
                                     f"there is no {mode} decoder")
            if mode not in self._trained_details and self.cfg.checkpoint != "random":
                train = "liveidol train hires" + (" --decoder mid" if mode == "mid" else "")
                raise GeneratorError(f"model.decoder = {mode!r} but {self._weights_source} has no {mode} decoder "
                                     f"weights (autoencoder.{mode}.*; train them with `{train}`); use 'native' or "
                                     "'auto'")
            return mode
        prefer = ("hires", "mid") if self.device.type == "cuda" else ("mid",)
        return next((d for d in prefer if d in self._trained_details and getattr(self.autoencoder, d) is not None),
                    "native")

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def decoded_size(self) -> tuple[int, int]:
        """(width, height) of frames as the decoder draws them, before resampling to the output size."""
        return self.autoencoder.frame_size(self.which_decoder)

    @property
    def parameter_count(self) -> int:
        """Parameters of the DiT and the autoencoder."""
        return sum(p.numel() for m in (self.dit, self.autoencoder) for p in m.parameters())

    @property
    def state(self) -> GeneratorState:
        return replace(super().state, linears=self.linears)

    # -- conditioning --------------------------------------------------------------------------
    def _check_conditions(self, c: Conditions) -> tuple[int, int]:
        s = self.cfg.dit
        self._check_names(c)
        a, e = ACTION_INDEX[c.action], EMOTION_INDEX[c.emotion]
        if a >= s.num_actions or e >= s.num_emotions:
            raise GeneratorError(f"action {c.action!r} (row {a}) or emotion {c.emotion!r} (row {e}) is past the "
                                 f"model's tables ({s.num_actions} actions, {s.num_emotions} emotions)")
        if c.text is not None and (c.text.ndim != 2 or c.text.shape[1] != s.text_dim
                                   or c.text.shape[0] > s.text_len - 2):
            raise GeneratorError(f"Conditions.text: expected (L <= {s.text_len - 2}, {s.text_dim}), "
                                 f"got {tuple(c.text.shape)}")
        return a, e

    def _apply_conditions(self, c: Conditions, indices: tuple[int, int]) -> None:
        prev = self._switch_conditions(c)
        if prev is not None and c.same_as(prev):
            return
        a, e = (torch.tensor([i], device=self.device) for i in indices)
        text = None if c.text is None else c.text[None].to(self.device, self.dtype)
        self._context = self.dit.build_context(a, e, text)
        self.cross.reset()  # recomputed from the new context by the next pass
        idle = ACTION_INDEX[self.cfg.guidance_negative]
        self._idle_context = None if indices[0] == idle else self.dit.build_context(torch.full_like(a, idle), e, text)
        self.cross_idle.reset()
        pushed = self.emotion_push.get(EMOTIONS[indices[1]], 0.0) != 0
        self._neutral_context = (self.dit.build_context(a, torch.full_like(e, EMOTION_INDEX["neutral"]), text)
                                 if pushed else None)
        self.cross_neutral.reset()

    def _controls(self, mouth: np.ndarray | None, num_frames: int) -> torch.Tensor:
        tf = self.cfg.autoencoder.temporal_factor
        rows = []
        given = None if self._conditions is None else self._conditions.progress
        for j in range(num_frames):
            assert self._conditions is not None
            if given is not None and len(given) >= num_frames * tf:
                prog = float(given[j * tf])
            else:
                prog = action_progress(self._conditions.action, self._position + j - self._action_start, tf)
            emo = emotion_progress(self._position + j - self._emotion_start, tf)
            rows.append(control_vector(None if mouth is None else mouth[j * tf:(j + 1) * tf], prog, self.cfg, emo))
        return self._to_device(torch.stack(rows)[None])  # (1, F, num_controls)

    def _guidance_now(self) -> float:
        """The guidance scale for the chunk about to be made: ``model.guidance`` while the action is younger
        than ``model.guidance_frames`` latent frames (or always, when that is 0), else 0; always 0 for a checkpoint
        whose guidance is distilled (unless ``model.distilled_guidance`` = 'apply')."""
        cfg = self.cfg
        if self.guidance_distilled and cfg.distilled_guidance == "skip":
            return 0.0
        if cfg.guidance <= 0 or (cfg.guidance_frames and self._position - self._action_start >= cfg.guidance_frames):
            return 0.0
        return cfg.guidance

    def _flow_fn(self, controls: torch.Tensor, guidance: float = 0.0, steps: int = 0):
        """The model's flow for the current chunk. With ``guidance`` > 0 and an action other than idle, the
        prediction is pushed away from the idle prediction: ``f + g * (f - f_idle)`` (action guidance); while an
        emotion of ``model.emotion_guidance_for`` is held, also away from the neutral emotion's prediction under
        the same action: ``+ w * (f - f_neutral)`` (emotion guidance; ``w`` from :attr:`emotion_push`). Every
        pass writes the chunk's own cache slots, the conditional one last; the cache pass is never guided."""

        def run(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cross: CrossAttentionCache,
                cache_only: bool = False) -> torch.Tensor:
            self._before_pass()
            out = self.fast(x.permute(0, 2, 1, 3, 4).to(self.dtype), t, context, start_frame=self._position,
                            cache=self.kv, cross_cache=cross, controls=controls, cache_only=cache_only)
            return x if cache_only else out.permute(0, 2, 1, 3, 4)  # a cache-only pass has no flow: nobody reads it

        def flow(x: torch.Tensor, t: torch.Tensor, t_value: float) -> torch.Tensor:  # x: (B, F, C, h, w)
            assert self._context is not None
            # the denoising calls only: the cache pass (call steps + 1, at t = 1000 * context_noise, which is > 0
            # for this model) keeps only the conditional K/V and its output is discarded, so an idle pass there
            # was wasted work
            denoising = calls[0] < steps and t_value > 0
            idle_ctx = self._idle_context if guidance > 0 and denoising else None
            calm_ctx = self._neutral_context if denoising else None
            if calls[0] >= steps:  # the cache pass: it stops once the last block's K/V are written (its flow is unread)
                out = run(x, t, self._context, self.cross, cache_only=not self.full_cache_pass)
            else:  # the negatives first: the conditional pass writes the chunk's cache slots last
                idle = None if idle_ctx is None else run(x, t, idle_ctx, self.cross_idle)
                calm = None if calm_ctx is None else run(x, t, calm_ctx, self.cross_neutral)
                out = cond = run(x, t, self._context, self.cross)
                if idle is not None:
                    out = out + guidance * (cond - idle)
                if calm is not None:
                    assert self._conditions is not None
                    out = out + self.emotion_push[self._conditions.emotion] * (cond - calm)
            calls[0] += 1
            if self.timer is not None:
                self.timer.lap("cache" if calls[0] > steps else "dit")
            return out
        calls = [0]
        return flow

    # -- snapshots (the engine rolls back unshown chunks when a command interrupts them) -----
    @torch.inference_mode()
    def snapshot(self) -> GeneratorSnapshot:
        """Everything next_chunk depends on, at this chunk boundary. The self-attention cache (the only
        state written in place) is copied; everything else is replaced, never mutated, so it is shared."""
        return GeneratorSnapshot(
            **self._snapshot_stream(), cross_idle=self.cross_idle.state(),
            decoder=(self.decoder._prev, self.decoder.frames_decoded), idle_context=self._idle_context,
            cross_neutral=self.cross_neutral.state(), neutral_context=self._neutral_context)

    @torch.inference_mode()
    def restore(self, snap: GeneratorSnapshot) -> None:
        """Return to the state of :meth:`snapshot` (the snapshot stays valid for another restore)."""
        self._restore_stream(snap)
        self.cross_idle.load(snap.cross_idle)
        self.decoder._prev, self.decoder.frames_decoded = snap.decoder
        self._idle_context = snap.idle_context
        self.cross_neutral.load(snap.cross_neutral)
        self._neutral_context = snap.neutral_context

    # -- lifecycle -----------------------------------------------------------------------------
    @torch.inference_mode()
    def reset(self, reference_rgba: np.ndarray | None, conditions: Conditions) -> None:
        """Start a new stream: clear caches, reseed the noise, write the reference as the sink frame.

        ``reference_rgba``: (H, W, 4) (or (H, W, 3)) uint8 at any size, resized to the native size;
        None starts without a reference (the first generated frames become the sink).
        """
        indices = self._check_conditions(conditions)
        ref = self._reference_tensor(reference_rgba) if reference_rgba is not None else None
        self._reset_stream()
        self.cross_idle.reset()
        self.cross_neutral.reset()
        self._apply_conditions(conditions, indices)
        if ref is None:
            return
        tf = self.cfg.autoencoder.temporal_factor
        video = ref[:, None].expand(1, tf, *ref.shape[1:])  # (1, tf, 4, H, W): the still image, tf times
        latent = self.autoencoder.encode(video)  # (1, 1, C, h, w)
        controls = self._to_device(torch.zeros(1, 1, self.cfg.dit.num_controls))  # the sink's, as in training
        self._flow_fn(controls)(latent, torch.zeros((1, 1), device=self.device), 0.0)  # t=0 pass writes the sink
        self.decoder.step(latent)  # prime the decoder's temporal context with the reference
        self._position = 1
        self._action_start = 1
        if self._emotion_start != NO_EMOTION_CHANGE:  # a first emotion other than neutral starts after the sink
            self._emotion_start = 1

    def _reference_tensor(self, image: np.ndarray) -> torch.Tensor:
        t = reference_float(image)
        if t.shape[1] == 3:  # opaque
            t = torch.cat([t, torch.ones_like(t[:, :1])], dim=1)  # (1, 4, H, W)
        return upscale(t, self.native_size).to(self.device, self.dtype)

    @torch.inference_mode()
    def next_chunk(self, conditions: Conditions, *, mouth: np.ndarray | None = None,
                   steps: int | None = None, chunk_frames: int | None = None) -> np.ndarray:
        """Generate the next chunk: ``(frames_per_chunk, out_h, out_w, 4)`` RGBA uint8.

        ``mouth``: openness in [0, 1] per VIDEO frame of this chunk (None = closed);
        ``steps`` (1-4) and ``chunk_frames`` (latent frames) override the config for this chunk.
        """
        cfg, tf = self.cfg, self.cfg.autoencoder.temporal_factor
        steps, f = self._chunk_args(steps, chunk_frames)
        if mouth is not None:
            mouth = np.asarray(mouth, dtype=np.float32).reshape(-1)
            if mouth.shape[0] != f * tf:
                raise GeneratorError(f"mouth: {mouth.shape[0]} values, expected one per video frame = {f * tf}")
            if not np.isfinite(mouth).all():
                raise GeneratorError("mouth: values must be finite")
        if conditions.progress is not None:
            progress = np.asarray(conditions.progress, dtype=np.float32).reshape(-1)
            if progress.shape[0] != f * tf or not np.isfinite(progress).all():
                raise GeneratorError(f"Conditions.progress: {progress.shape[0]} values, expected one finite value "
                                     f"per video frame = {f * tf}")
        indices = self._check_conditions(conditions)
        self._apply_conditions(conditions, indices)

        noise = self._chunk_noise(f)
        timesteps = self.schedule.warp_list(cfg.timesteps[:steps])
        timer = self.timer
        if timer is not None:
            timer.start()
        x0 = sample_chunk(self._flow_fn(self._controls(mouth, f), self._guidance_now(), steps), noise, timesteps,
                          self.schedule, self._noise, context_t=1000.0 * cfg.context_noise)
        frames = self.decoder.step(x0)[0]  # (F*tf, 4, H, W)
        if timer is not None:
            timer.lap("decode")
        return self._finish_chunk(frames, steps, f)
