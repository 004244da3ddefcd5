"""``liveidol eval``: does the idol do what she is told, stay herself, move smoothly, and how fast?

Four measurements, each on frames read back by the evaluation probe (``backend.training.probe``):

* **action following** — ``commands`` random commands (every action but idle/talk, a random emotion
  about a third of the time) are issued at chunk boundaries, about a third of them while the previous
  action is still playing (interruptions). The first second after each command is probed and scored
  with :func:`followed`. The SAME command sequence is simulated and rendered in the procedural world,
  probed and scored the same way: ``rate_world`` is the ceiling of probe + rule on perfect video.
* **identity** — ``minutes`` of video (a sparse random command script) are generated chunk after chunk;
  about one frame every 2 s of the first and of the last minute is probed: hair style / eye shape /
  outfit agreement with the character and palette distance to the reference frame; ``drift`` is the
  change between the two minutes. A pixel check: mean RGB inside the matte (alpha > 0.5) of all idle
  frames of each minute (0..255, straight alpha), and each minute's mean frame-to-frame change.
  "Minute" is min(60 s, half the run), so short CPU runs still compare two disjoint windows.
* **temporal** — mean absolute difference of consecutive frames (and of frames two apart) over the
  action-following video, divided by the same measure over its world render; plus the share of
  frame-to-frame jumps larger than twice the world's 99th percentile.
* **speed** — a short timed run at the configured output size.

The probe metrics run a generator built at output size = native size (no upscaling cost); only the
speed run uses the configured output size. Everything is deterministic for ``seed`` and the model seed.

Usage::

    result = run_eval(cfg, commands=100, minutes=30.0)   # a JSON-able dict
    print(result["action_following"]["rate"], result["action_following"]["rate_world"])
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backend.actions import ACTIONS, EMOTIONS, action
from backend.config import Config, ModelConfig
from backend.errors import LiveIdolError
from backend.model.generator import ACTION_FPS, Conditions, Generator, resolve_device
from backend.training.probe import PROBE_PATH, Probe
from backend.world.character import CharacterConfig, identity_tensor, load_character
from backend.world.pose import action_scores, simulate
from backend.world.reference import reference_frame
from backend.world.render import premultiplied, render, straight_alpha

__all__ = [
    "FOLLOW_MIN_SCORE",
    "FOLLOW_SMOOTH_FRAMES",
    "EvalError",
    "PlannedCommand",
    "chunk_conditions",
    "followed",
    "plan_commands",
    "run_eval",
]

log = logging.getLogger(__name__)

FOLLOW_WINDOW_S = 1.0  # how long after a command takes effect its action must show
FOLLOW_SMOOTH_FRAMES = 5  # scores are averaged over this many consecutive frames before the argmax
FOLLOW_MIN_SCORE = 0.25  # ... and the commanded action's averaged score must reach this
INTERRUPT_SHARE = 1.0 / 3.0
JUMP_FACTOR = 2.0  # a jump: a frame-to-frame change > JUMP_FACTOR x the world's 99th percentile
IDENTITY_SAMPLE_S = 2.0
SEGMENT_S = 60.0  # "first minute" / "last minute" of the identity run
COMMANDABLE = tuple(a.name for a in ACTIONS if a.name not in ("idle", "talk"))
_SCORED = tuple(a.name for a in ACTIONS if a.name != "idle")  # the candidates of the argmax


class EvalError(LiveIdolError, RuntimeError):
    """The evaluation cannot run (no probe file, a probe of another size ...); the message says what to do."""


# ---------------------------------------------------------------------------------------------
# The command plan and the rule (pure; tested on world renders)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedCommand:
    index: int
    start: int  # generated frame at which it takes effect (a chunk boundary)
    action: str
    emotion: str
    interrupts: bool  # issued while the previous command's action was still playing
    window: int  # frames scored from ``start`` (1 s, shorter only when the next command comes sooner)


def _frames(seconds: float, fps: float) -> int:
    return max(1, round(seconds * fps))


def _ceil_to(x: int, step: int) -> int:
    return -(-x // step) * step


def plan_commands(n: int, *, frames_per_chunk: int, seed: int, fps: float = ACTION_FPS,
                  interrupt_share: float = INTERRUPT_SHARE, lead_in_s: float = 1.0,
                  max_rest_s: float = 1.5) -> list[PlannedCommand]:
    """``n`` random commands at chunk boundaries, deterministic for ``seed``.

    Exactly ``round((n - 1) * interrupt_share)`` of commands 1..n-1 are interruptions: they come while
    the previous action still plays, but (when the chunk size allows it) after the previous command's
    1 s scoring window, so every window shows one command only. The command before an interruption is
    drawn from the actions long enough to be interrupted that way. Other commands come after the
    previous action has ended, with 0 to ``max_rest_s`` of idle in between.
    """
    if n < 0:
        raise ValueError(f"commands = {n}: expected >= 0")
    rng = np.random.default_rng([seed, 7919])
    fpc = frames_per_chunk
    win = _frames(FOLLOW_WINDOW_S, fps)
    win_aligned = _ceil_to(win, fpc)
    dur = {a: _frames(action(a).duration_s, fps) for a in COMMANDABLE}
    k = round(max(0, n - 1) * interrupt_share)
    interrupts = np.zeros(n, dtype=bool)
    if k:
        interrupts[1 + rng.choice(n - 1, size=k, replace=False)] = True
    long_enough = [a for a in COMMANDABLE if dur[a] > win_aligned] or [a for a in COMMANDABLE if dur[a] > fpc]
    if k and not long_enough:
        raise ValueError(f"frames_per_chunk = {fpc}: no action lasts longer than one chunk, none can be interrupted")
    out: list[PlannedCommand] = []
    start = _ceil_to(_frames(lead_in_s, fps), fpc)
    for i in range(n):
        pool = long_enough if i + 1 < n and interrupts[i + 1] else COMMANDABLE
        name = str(pool[rng.integers(len(pool))])
        emo = "neutral" if rng.random() >= 1 / 3 else str(EMOTIONS[1 + rng.integers(len(EMOTIONS) - 1)])
        if i > 0:
            prev = out[-1]
            if interrupts[i]:
                lo = win_aligned if dur[prev.action] > win_aligned else fpc
                choices = list(range(lo, dur[prev.action], fpc))  # non-empty: prev was drawn from long_enough
                gap = int(choices[rng.integers(len(choices))])
            else:
                rest = int(rng.integers(0, _frames(max_rest_s, fps) + 1))
                gap = _ceil_to(max(dur[prev.action], win) + rest, fpc)
            start = prev.start + gap
            out[-1] = dataclasses.replace(prev, window=min(prev.window, gap))
        out.append(PlannedCommand(i, start, name, emo, bool(interrupts[i]), win))
    return out


def chunk_conditions(plan: list[PlannedCommand], g0: int, fps: float = ACTION_FPS) -> Conditions:
    """What the engine would condition the chunk starting at generated frame ``g0`` on: the latest
    command that took effect, or idle (keeping its emotion) once its action has ended."""
    current = None
    for c in plan:
        if c.start > g0:
            break
        current = c
    if current is None:
        return Conditions()
    act = action(current.action)
    if not act.loop and g0 >= current.start + _frames(act.duration_s, fps):
        return Conditions("idle", current.emotion)
    return Conditions(current.action, current.emotion, serial=current.index + 1)


def world_script(plan: list[PlannedCommand]) -> list[tuple[int, str, str]]:
    """The plan as a ``backend.world.pose.simulate`` script (idle before the first command and after
    each ended action is filled in by ``simulate``, at the exact end frame)."""
    return [(0, "idle", "neutral")] + [(c.start, c.action, c.emotion) for c in plan]


def followed(scores: dict[str, Tensor], commanded: str, *, smooth: int = FOLLOW_SMOOTH_FRAMES,
             min_score: float = FOLLOW_MIN_SCORE) -> bool:
    """THE success rule of action following, applied alike to generated and world frames.

    ``scores``: ``action_scores`` of the probed poses of the scoring window (T frames). Each
    non-idle action's score is averaged over every run of ``smooth`` consecutive frames (all T when
    shorter); the command is followed when in at least one run the commanded action has the highest
    average of all non-idle actions AND that average is at least ``min_score`` (so a still, empty or
    noisy clip where every score is near 0 does not pass by a tie).
    """
    if commanded not in _SCORED:
        raise ValueError(f"followed: {commanded!r} is not a scored action (known: {', '.join(_SCORED)})")
    s = torch.stack([scores[a].float() for a in _SCORED])  # (A, T)
    k = max(1, min(smooth, s.shape[1]))
    avg = s.unfold(1, k, 1).mean(-1)  # (A, T - k + 1)
    best = avg.argmax(0)
    i = _SCORED.index(commanded)
    return bool(((best == i) & (avg[i] >= min_score)).any())


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


def _premultiplied(frames: np.ndarray | Tensor, device: torch.device) -> Tensor:
    """(N, H, W, 4) uint8 straight alpha -> (N, 4, H, W) float [0, 1] premultiplied (what the probe reads)."""
    return premultiplied(torch.as_tensor(frames).to(device).permute(0, 3, 1, 2).float() / 255.0)


def _world_uint8(video: Tensor) -> Tensor:
    """Premultiplied world renders (N, 4, H, W) -> (N, H, W, 4) uint8 straight alpha, the generator's output format."""
    return (straight_alpha(video).permute(0, 2, 3, 1) * 255).round().to(torch.uint8)


def _world_chunks(character: CharacterConfig, poses: Tensor, size: tuple[int, int], device: torch.device,
                  batch: int = 128) -> Iterator[Tensor]:
    """World renders of ``poses`` (T, P), ``batch`` frames at a time, as uint8 straight alpha (N, H, W, 4)."""
    ident = identity_tensor([character.identity], device=device)
    for i in range(0, poses.shape[0], batch):
        video = render(ident, poses[None, i:i + batch].to(device), size)[0]  # (n, 4, H, W) premultiplied
        yield _world_uint8(video)


class _Motion:
    """Streaming frame-difference statistics: mean |x_t - x_{t-1}| and |x_t - x_{t-2}| per frame."""

    def __init__(self) -> None:
        self.d1: list[float] = []
        self.d2: list[float] = []
        self._tail: Tensor | None = None  # the last two frames seen

    def add(self, x: Tensor) -> None:  # x: (N, 4, H, W) premultiplied float
        seq = x if self._tail is None else torch.cat([self._tail, x])
        if seq.shape[0] > 1:
            self.d1 += (seq[1:] - seq[:-1]).abs().mean((1, 2, 3)).tolist()[-x.shape[0]:]
        if seq.shape[0] > 2:
            self.d2 += (seq[2:] - seq[:-2]).abs().mean((1, 2, 3)).tolist()[-x.shape[0]:]
        self._tail = seq[-2:]

    def summary(self) -> dict[str, float]:
        return {"diff1": float(np.mean(self.d1)) if self.d1 else 0.0,
                "diff2": float(np.mean(self.d2)) if self.d2 else 0.0}


# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------


def _load_probe(probe: Probe | str | Path | None, device: torch.device) -> Probe:
    if isinstance(probe, Probe):
        return probe.to(device).eval()
    path = Path(probe) if probe is not None else PROBE_PATH
    if not path.exists():
        raise EvalError(f"{path}: evaluation probe not found; train it with `liveidol train probe --run DIR` "
                        "(it writes backend/weights/probe.safetensors)")
    return Probe.load(path, device)


def _native_cfg(cfg: ModelConfig) -> ModelConfig:
    ae = cfg.autoencoder
    return dataclasses.replace(cfg, output_width=ae.native_width, output_height=ae.native_height)


def _action_following(gen: Generator, probe: Probe, character: CharacterConfig, reference: np.ndarray,
                      commands: int, seed: int, fps: float) -> tuple[dict[str, Any], dict[str, Any], float]:
    fpc = gen.frames_per_chunk()
    plan = plan_commands(commands, frames_per_chunk=fpc, seed=seed, fps=fps)
    win = _frames(FOLLOW_WINDOW_S, fps)
    n_frames = _ceil_to(plan[-1].start + win, fpc) if plan else 0
    device = gen.device
    gen_ok: list[bool] = []
    world_ok: list[bool] = []
    motion = {"generated": _Motion(), "world": _Motion()}
    gen_seconds = 0.0

    # Generated: stream chunks, keep only the frames still needed for scoring (windows are in order).
    gen.reset(reference, Conditions())
    made: list[Tensor] = []
    kept_from = 0  # frames before this were dropped
    for g0 in range(0, n_frames, fpc):
        t0 = time.perf_counter()
        chunk = gen.next_chunk(chunk_conditions(plan, g0, fps))
        gen_seconds += time.perf_counter() - t0
        x = _premultiplied(chunk, device)
        motion["generated"].add(x)
        made.append(x)
        frames = torch.cat(made)
        while len(gen_ok) < len(plan) and plan[len(gen_ok)].start + plan[len(gen_ok)].window <= kept_from + frames.shape[0]:
            c = plan[len(gen_ok)]
            poses, _ = probe.predict(frames[c.start - kept_from:c.start - kept_from + c.window])
            gen_ok.append(followed(action_scores(poses.cpu(), fps), c.action))
            if len(gen_ok) % 10 == 0 or len(gen_ok) == len(plan):
                log.info("action following commands=%d/%d rate_so_far=%.3f", len(gen_ok), len(plan),
                         sum(gen_ok) / len(gen_ok))
        next_start = plan[len(gen_ok)].start if len(gen_ok) < len(plan) else n_frames
        drop = min(max(0, next_start - kept_from), frames.shape[0])
        made, kept_from = [frames[drop:]], kept_from + drop

    # World: the same command sequence, simulated and rendered at the native size.
    if n_frames:
        poses, _ = simulate(world_script(plan), n_frames, fps=fps, seed=seed)
        for chunk in _world_chunks(character, poses, gen.native_size, device):
            motion["world"].add(_premultiplied(chunk, device))
        for c in plan:
            window = torch.cat([_premultiplied(x, device) for x in _world_chunks(
                character, poses[c.start:c.start + c.window], gen.native_size, device)])
            p, _ = probe.predict(window)
            world_ok.append(followed(action_scores(p.cpu(), fps), c.action))

    per_action: dict[str, dict[str, float | int]] = {}
    for name in COMMANDABLE:
        idx = [i for i, c in enumerate(plan) if c.action == name]
        if idx:
            per_action[name] = {"n": len(idx), "rate": sum(gen_ok[i] for i in idx) / len(idx),
                                "rate_world": sum(world_ok[i] for i in idx) / len(idx)}

    def rate(ok: list[bool], which: list[int]) -> float | None:
        return sum(ok[i] for i in which) / len(which) if which else None

    inter = [i for i, c in enumerate(plan) if c.interrupts]
    fresh = [i for i, c in enumerate(plan) if not c.interrupts]
    result = {
        "issued": len(plan),
        "interruptions": len(inter),
        "interruption_share": len(inter) / len(plan) if plan else 0.0,
        "rate": rate(gen_ok, list(range(len(plan)))),
        "rate_world": rate(world_ok, list(range(len(plan)))),
        "rate_interrupting": rate(gen_ok, inter),
        "rate_world_interrupting": rate(world_ok, inter),
        "rate_fresh": rate(gen_ok, fresh),
        "rate_world_fresh": rate(world_ok, fresh),
        "per_action": per_action,
        "frames": n_frames,
        "window_frames": win,
        "rule": (f"scores = action_scores(probe(frames of the first {FOLLOW_WINDOW_S:g} s)); followed when, in some run "
                 f"of {FOLLOW_SMOOTH_FRAMES} consecutive frames, the commanded action has the highest mean score of "
                 f"all non-idle actions and that mean is >= {FOLLOW_MIN_SCORE}"),
        "target": 0.9,
    }
    return result, _temporal(motion), (n_frames / gen_seconds if gen_seconds > 0 else 0.0)


def _temporal(motion: dict[str, _Motion]) -> dict[str, Any]:
    g, w = motion["generated"], motion["world"]
    gs, ws = g.summary(), w.summary()
    threshold = JUMP_FACTOR * float(np.percentile(w.d1, 99)) if w.d1 else 0.0

    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    def jumps(d: list[float]) -> float:
        return float(np.mean(np.asarray(d) > threshold)) if d else 0.0

    return {
        "generated": gs, "world": ws,
        "flicker_ratio": ratio(gs["diff1"], ws["diff1"]),  # 1.0 = as smooth as the world
        "flicker_ratio_2": ratio(gs["diff2"], ws["diff2"]),
        "jump_threshold": threshold,
        "jump_fraction": jumps(g.d1),
        "jump_fraction_world": jumps(w.d1),
        "measure": "mean |frame_t - frame_t-k| of premultiplied RGBA in [0, 1] at the native size, k = 1 (diff1), 2 (diff2)",
    }


def _stream_plan(n_frames: int, fpc: int, seed: int, fps: float) -> list[PlannedCommand]:
    """A sparse random script for the identity run: a command every 3-8 s, idle in between."""
    rng = np.random.default_rng([seed, 104729])
    plan, g = [], _ceil_to(_frames(3.0, fps), fpc)
    while g < n_frames:
        name = str(COMMANDABLE[rng.integers(len(COMMANDABLE))])
        emo = "neutral" if rng.random() >= 1 / 3 else str(EMOTIONS[1 + rng.integers(len(EMOTIONS) - 1)])
        plan.append(PlannedCommand(len(plan), g, name, emo, False, 0))
        g += _ceil_to(_frames(float(rng.uniform(3.0, 8.0)), fps), fpc)
    return plan


class _Segment:
    """Identity samples and idle-pixel sums of one minute of the identity run."""

    def __init__(self) -> None:
        self.samples: list[Tensor] = []
        self.rgb_sum = np.zeros(3)
        self.matte = 0.0
        self.idle_frames = 0
        self.motion = _Motion()  # frame-to-frame change within this minute (generated only)

    def add_idle(self, frames: np.ndarray) -> None:  # (N, H, W, 4) uint8 straight alpha
        mask = frames[..., 3] > 127
        self.rgb_sum += frames[..., :3][mask].astype(np.float64).sum(0)
        self.matte += float(mask.sum())
        self.idle_frames += frames.shape[0]

    def summary(self, probe: Probe, character: CharacterConfig, ref_palette: Tensor, device: torch.device) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": len(self.samples), "idle_frames": self.idle_frames,
                               "diff1": self.motion.summary()["diff1"],
                               "idle_rgb": (self.rgb_sum / self.matte).tolist() if self.matte else None}
        if not self.samples:
            return out | {"agreement": None, "palette_dist": None}
        _, ident = probe.predict(_premultiplied(torch.stack(self.samples), device))
        agree = {k: float(np.mean([v == getattr(character, k) for v in ident[k]]))  # type: ignore[attr-defined]
                 for k in ("hair_style", "eye_shape", "outfit")}
        return out | agree | {"agreement": float(np.mean(list(agree.values()))),
                              "palette_dist": _palette_dist(ident["palette"], ref_palette)}  # type: ignore[arg-type]


def _palette_dist(palette: Tensor, ref: Tensor) -> float:
    """Mean Euclidean RGB distance (0..sqrt 3) over the six palette colours, averaged over frames."""
    d = (palette.reshape(palette.shape[0], -1, 3).cpu() - ref.reshape(1, -1, 3).cpu()).norm(dim=-1)
    return float(d.mean())


def _identity(gen: Generator, probe: Probe, character: CharacterConfig, reference: np.ndarray, minutes: float,
              seed: int, fps: float) -> dict[str, Any]:
    fpc, device = gen.frames_per_chunk(), gen.device
    n_frames = max(0, round(minutes * 60.0 * fps))
    seg = max(1, min(_frames(SEGMENT_S, fps), n_frames // 2))
    every = max(1, min(_frames(IDENTITY_SAMPLE_S, fps), seg // 4))
    plan = _stream_plan(n_frames, fpc, seed, fps)
    first, last = _Segment(), _Segment()
    per_minute = _frames(60.0, fps)
    gen.reset(reference, Conditions())
    for g0 in range(0, n_frames, fpc):
        cond = chunk_conditions(plan, g0, fps)
        chunk = gen.next_chunk(cond)[: n_frames - g0]
        for part, lo, hi in ((first, 0, seg), (last, n_frames - seg, n_frames)):
            a, b = max(lo, g0), min(hi, g0 + chunk.shape[0])
            if a >= b:
                continue
            part.samples += [torch.from_numpy(chunk[g - g0].copy()) for g in range(a, b) if (g - lo) % every == 0]
            part.motion.add(_premultiplied(chunk[a - g0:b - g0], device))
            if cond.action == "idle":
                part.add_idle(chunk[a - g0:b - g0])
        if (g0 + fpc) // per_minute > g0 // per_minute:
            log.info("identity run minute=%d of minutes=%.2f frames=%d", (g0 + fpc) // per_minute, minutes, g0 + fpc)
    _, ref_ident = probe.predict(_premultiplied(reference[None], device))
    ref_palette = ref_ident["palette"]  # type: ignore[index]
    true_palette = identity_tensor([character.identity])[0, :18]
    ref_agree = float(np.mean([ref_ident[k][0] == getattr(character, k)  # type: ignore[index]
                               for k in ("hair_style", "eye_shape", "outfit")]))
    ref_mask = reference[..., 3] > 127
    a = first.summary(probe, character, ref_palette, device)  # type: ignore[arg-type]
    b = last.summary(probe, character, ref_palette, device)  # type: ignore[arg-type]

    def delta(key: str) -> float | None:
        return b[key] - a[key] if a.get(key) is not None and b.get(key) is not None else None

    rgb_drift = (float(np.linalg.norm(np.subtract(b["idle_rgb"], a["idle_rgb"])))
                 if a["idle_rgb"] is not None and b["idle_rgb"] is not None else None)
    return {
        "frames": n_frames, "minutes": minutes, "window_s": seg / fps, "sample_every_s": every / fps,
        "first": a, "last": b,
        "reference": {"agreement": ref_agree, "palette_dist_to_true": _palette_dist(ref_palette, true_palette),  # type: ignore[arg-type]
                      "rgb": reference[..., :3][ref_mask].astype(np.float64).mean(0).tolist() if ref_mask.any() else None},
        "drift": {"agreement": delta("agreement"), "palette_dist": delta("palette_dist"), "idle_rgb": rgb_drift,
                  "diff1": delta("diff1")},
    }


def _speed(cfg: ModelConfig, weights: dict[str, Tensor] | None, reference: np.ndarray,
           min_seconds: float = 3.0, max_chunks: int = 64) -> dict[str, Any]:
    gen = Generator(cfg, weights=weights)
    gen.reset(reference, Conditions())
    for _ in range(2):  # warm-up (kernels, allocator)
        gen.next_chunk(Conditions())
    frames, t0 = 0, time.perf_counter()
    chunks = 0
    while chunks < 2 or (time.perf_counter() - t0 < min_seconds and chunks < max_chunks):
        frames += gen.next_chunk(Conditions("wave" if chunks % 8 < 4 else "idle")).shape[0]
        chunks += 1
    seconds = time.perf_counter() - t0
    st = gen.state
    return {"fps": frames / seconds, "frames": frames, "seconds": seconds, "output_size": list(gen.output_size),
            "device": st.device, "dtype": st.dtype, "attention": st.attention_backend,
            "device_name": torch.cuda.get_device_name(gen.device) if gen.device.type == "cuda" else "cpu"}


def run_eval(cfg: Config, *, commands: int = 100, minutes: float = 30.0, seed: int = 0,
             probe: Probe | str | Path | None = None, weights: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """Run the whole evaluation and return a JSON-able dict (see the module docstring).

    ``commands`` and ``minutes`` are honoured exactly (0 skips that part). ``probe``: a loaded
    :class:`Probe`, a probe file, or None for the shipped ``backend/weights/probe.safetensors``.
    ``weights``: flat generator weights instead of ``cfg.model.checkpoint`` (tests).
    """
    if commands < 0 or not (minutes >= 0 and math.isfinite(minutes)):
        raise EvalError(f"commands = {commands}, minutes = {minutes}: expected commands >= 0 and minutes >= 0")
    t_start = time.perf_counter()
    fps = ACTION_FPS
    native = _native_cfg(cfg.model)
    the_probe = _load_probe(probe, resolve_device(native)[0])  # before the (slow) model load
    gen = Generator(native, weights=weights)
    character = load_character(cfg.character)
    reference = reference_frame(character, gen.native_size)
    log.info("eval start commands=%d minutes=%.2f checkpoint=%s device=%s native=%dx%d", commands, minutes,
             cfg.model.checkpoint, gen.device, *gen.native_size)

    following, temporal, native_fps = _action_following(gen, the_probe, character, reference, commands, seed, fps)
    identity = _identity(gen, the_probe, character, reference, minutes, seed, fps)
    st = gen.state
    del gen
    speed = _speed(cfg.model, weights, reference) | {"native_fps": native_fps,
                                                     "native_size": [native.output_width, native.output_height]}
    log.info("eval done seconds=%.1f rate=%s rate_world=%s", time.perf_counter() - t_start, following["rate"],
             following["rate_world"])
    return {
        "action_following": following,
        "identity": identity,
        "temporal": temporal,
        "speed": speed,
        "config": {"checkpoint": cfg.model.checkpoint, "steps": cfg.model.steps, "chunk_frames": cfg.model.chunk_frames,
                   "device": st.device, "dtype": st.dtype, "character": character.name, "seed": seed,
                   "model_seed": cfg.model.seed, "fps": fps, "commands": commands, "minutes": minutes,
                   "probe": "<in memory>" if isinstance(probe, Probe) else str(probe or PROBE_PATH)},
        "seconds": time.perf_counter() - t_start,
    }
