"""The idol's pose: a named per-frame parameter vector, the action trajectories that drive it, and the
skeleton (forward kinematics) that the renderer and the evaluation share.

A pose is one row of ``POSE_PARAMS`` floats. Angles are radians; weights and openness are 0..1 (eye
openness may exceed 1 for wide eyes). Layout of one frame, in design pixels of the 256x144 frame::

    head (big, chibi)   centre (128, 50)
    shoulders           (128 -/+ 19, 82)      'r' = the idol's right = the viewer's left (x smaller)
    arm                 upper arm 22 px, forearm 20 px; shoulder angle 0 = hanging down, + = outward
                        (pi/2 = horizontal out, pi = straight up); forearm direction = shoulder + elbow

Usage::

    poses, progress = simulate([(0, "idle", "neutral"), (40, "wave", "happy")], 100, seed=1)
    scores = action_scores(poses)      # {"wave": (T,), ...}

``simulate`` layers (1) a base layer that never stops (breathing, random blinks, slow sway), (2) the
current action's trajectory and (3) the emotion's face offsets. Layers (2)+(3) are blended across a
switch by inertialisation: the difference between where the previous segment was and where the new
one starts decays with a critically damped response, so any action can interrupt any other with no jump.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from backend.actions import ACTION_INDEX, ACTIONS, EMOTIONS, action, emotion_index

__all__ = [
    "ARM_FORE",
    "ARM_UPPER",
    "NECK",
    "POSE_INDEX",
    "POSE_PARAMS",
    "POSE_RANGES",
    "REST_POSE",
    "Skeleton",
    "action_scores",
    "random_script",
    "segments",
    "simulate",
    "skeleton",
]

POSE_PARAMS: tuple[str, ...] = (
    "head_yaw", "head_pitch", "head_roll",            # rad; pitch + = looking down
    "body_bow", "body_sway", "breath",                 # bow 0..1, sway rad, breath -1..1
    "eye_open_l", "eye_open_r", "eye_smile",           # openness 0..1.4; smile bends closed eyes into ^ ^
    "gaze_x", "gaze_y",                                # -1..1
    "brow_height", "brow_anger",                       # -1..1; anger - = worried (inner ends up)
    "mouth_open", "mouth_smile", "mouth_wide", "mouth_round",  # open 0..1, smile -1..1, visemes 0..1
    "blush",                                           # 0..1
    "r_shoulder", "r_elbow", "l_shoulder", "l_elbow",  # rad
    "r_open", "r_fist", "r_thumb", "r_point", "r_heart",  # right hand shape blend weights 0..1
    "l_open", "l_fist", "l_thumb", "l_point", "l_heart",  # left hand shape blend weights 0..1
    "racket",                                          # tennis racket in the right hand, 0..1 visibility
)
POSE_INDEX: dict[str, int] = {n: i for i, n in enumerate(POSE_PARAMS)}
P = len(POSE_PARAMS)

_RANGES = {
    "head_yaw": (-0.7, 0.7), "head_pitch": (-0.5, 0.6), "head_roll": (-0.5, 0.5),
    "body_bow": (0.0, 1.0), "body_sway": (-0.2, 0.2), "breath": (-1.0, 1.0),
    "eye_open_l": (0.0, 1.4), "eye_open_r": (0.0, 1.4), "gaze_x": (-1.0, 1.0), "gaze_y": (-1.0, 1.0),
    "brow_height": (-1.0, 1.0), "brow_anger": (-1.0, 1.0), "mouth_smile": (-1.0, 1.0),
    "r_shoulder": (-2.0, 3.2), "l_shoulder": (-2.0, 3.2), "r_elbow": (-3.6, 3.0), "l_elbow": (-3.6, 3.0),
}
POSE_RANGES: tuple[tuple[float, float], ...] = tuple(_RANGES.get(n, (0.0, 1.0)) for n in POSE_PARAMS)

REST_POSE = np.zeros(P, dtype=np.float32)
for _name, _value in {"eye_open_l": 1.0, "eye_open_r": 1.0, "r_shoulder": 0.16, "l_shoulder": 0.16,
                      "r_elbow": 0.10, "l_elbow": 0.10, "mouth_smile": 0.25}.items():
    REST_POSE[POSE_INDEX[_name]] = _value

# Skeleton geometry in design pixels (frame 256x144); the renderer draws on the same numbers.
NECK = (128.0, 80.0)
SHOULDER_HALF = 19.0
ARM_UPPER = 22.0
ARM_FORE = 20.0
HEAD_CENTRE = (128.0, 50.0)
HIP = (128.0, 175.0)
NOSE = (128.0, 57.0)  # nose tip at rest, used by the touch_nose signature
CHEST = (128.0, 95.0)


# ---------------------------------------------------------------------------------------------
# Skeleton (forward kinematics, torch, any leading shape)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skeleton:
    """Joint positions in design pixels, each (..., 2) as (x, y) with y down."""

    neck: Tensor
    head: Tensor          # head centre
    r_shoulder: Tensor
    r_elbow: Tensor
    r_hand: Tensor
    l_shoulder: Tensor
    l_elbow: Tensor
    l_hand: Tensor
    sway_cos: Tensor      # (...,) rotation of the upper body about the hip
    sway_sin: Tensor


def _col(poses: Tensor, name: str) -> Tensor:
    return poses[..., POSE_INDEX[name]]


def _rot(px: Tensor, py: Tensor, c: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    return c * px - s * py, s * px + c * py


def skeleton(poses: Tensor) -> Skeleton:
    """Forward kinematics of ``poses`` (..., P): where neck, head, shoulders, elbows and hands are."""
    assert poses.shape[-1] == P, f"poses last dim {poses.shape[-1]} != {P}"
    bow, sway, breath = _col(poses, "body_bow"), _col(poses, "body_sway"), _col(poses, "breath")
    c, s = torch.cos(sway), torch.sin(sway)

    def body_point(x: float | Tensor, y: float | Tensor) -> Tensor:
        # rotate about the hip by the sway angle
        zero = torch.zeros_like(sway)
        rx, ry = _rot(x - HIP[0] + zero, y - HIP[1] + zero, c, s)
        return torch.stack([rx + HIP[0], ry + HIP[1]], -1)

    lift = -0.8 * breath + 14.0 * bow
    neck = body_point(NECK[0], NECK[1] + lift)
    head = body_point(HEAD_CENTRE[0] + 3.0 * _col(poses, "head_yaw"), HEAD_CENTRE[1] - 0.6 * breath + 24.0 * bow)
    out = {}
    for side, sign in (("r", -1.0), ("l", 1.0)):
        sh = body_point(NECK[0] + sign * SHOULDER_HALF, NECK[1] + 2.0 + lift)
        a1 = _col(poses, f"{side}_shoulder")
        a2 = a1 + _col(poses, f"{side}_elbow")
        # direction at angle a: (sign * sin a, cos a); rotate with the body sway
        d1 = torch.stack(_rot(sign * torch.sin(a1), torch.cos(a1), c, s), -1)
        d2 = torch.stack(_rot(sign * torch.sin(a2), torch.cos(a2), c, s), -1)
        el = sh + ARM_UPPER * d1
        out[side] = (sh, el, el + ARM_FORE * d2)
    return Skeleton(neck, head, *out["r"], *out["l"], c, s)


# ---------------------------------------------------------------------------------------------
# Action trajectories (numpy, per segment): t seconds since the action began -> {param: delta}
# ---------------------------------------------------------------------------------------------

Traj = Callable[[np.ndarray, float, np.random.Generator], dict[str, np.ndarray]]


def _smooth(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _envelope(t: np.ndarray, dur: float, rise: float = 0.35, fall: float = 0.4) -> np.ndarray:
    """0 -> 1 over ``rise`` s, hold, 1 -> 0 over the last ``fall`` s of ``dur``."""
    return _smooth(t / rise) * (1.0 - _smooth((t - (dur - fall)) / fall))


def _arm(side: str, shoulder: float, elbow: float, env: np.ndarray) -> dict[str, np.ndarray]:
    """Deltas that bring one arm from the rest pose to (shoulder, elbow) as ``env`` goes 0 -> 1."""
    return {f"{side}_shoulder": env * (shoulder - REST_POSE[POSE_INDEX[f"{side}_shoulder"]]),
            f"{side}_elbow": env * (elbow - REST_POSE[POSE_INDEX[f"{side}_elbow"]])}


def _idle(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ph = rng.uniform(0, 2 * math.pi, 3)
    return {"gaze_x": 0.25 * np.sin(2 * math.pi * t / 6.1 + ph[0]),
            "head_roll": 0.05 * np.sin(2 * math.pi * t / 8.3 + ph[1]),
            "gaze_y": 0.15 * np.sin(2 * math.pi * t / 7.7 + ph[2])}


def _wave(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.4, 0.45)
    d = _arm("r", 2.05, 0.75, env)
    osc = _smooth((t - 0.3) / 0.3) * np.sin(2 * math.pi * 2.2 * (t - 0.3))
    d["r_elbow"] = d["r_elbow"] + env * 0.42 * osc
    return d | {"r_open": env, "head_roll": -0.12 * env, "mouth_smile": 0.5 * env, "mouth_open": 0.25 * env}


def _heart(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.5, 0.45)
    hand = _smooth((t - 0.25) / 0.35) * (1.0 - _smooth((t - (dur - 0.5)) / 0.3))
    return (_arm("r", 0.2, -2.68, env) | _arm("l", 0.2, -2.68, env)
            | {"r_heart": hand, "l_heart": hand, "mouth_smile": 0.6 * env, "blush": 0.6 * env,
               "head_roll": 0.1 * env, "eye_smile": 0.4 * env})


def _like(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.4, 0.4)
    hand = _smooth((t - 0.15) / 0.3) * (1.0 - _smooth((t - (dur - 0.35)) / 0.3))
    return _arm("r", 0.55, 2.5, env) | {"r_fist": hand, "r_thumb": hand, "mouth_smile": 0.7 * env,
                                         "eye_open_l": -0.5 * env, "eye_smile": env}


def _touch_nose(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.5, 0.45)
    hand = _smooth((t - 0.2) / 0.35) * (1.0 - _smooth((t - (dur - 0.45)) / 0.3))
    return _arm("r", -1.25, -2.0, env) | {"r_point": hand, "r_fist": hand, "mouth_smile": 0.3 * env,
                                           "head_roll": 0.08 * env, "eye_open_l": -0.45 * env,
                                           "gaze_x": -0.3 * env}


def _blink_bump(t: np.ndarray, start: float) -> np.ndarray:
    """A deliberate blink: close over 0.12 s, hold 0.06 s, open over 0.16 s."""
    x = t - start
    return _smooth(x / 0.12) * (1.0 - _smooth((x - 0.18) / 0.16))


def _blink(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c = np.maximum(_blink_bump(t, 0.04), _blink_bump(t, 0.42))
    return {"eye_open_l": -c, "eye_open_r": -c, "brow_height": 0.15 * _envelope(t, dur, 0.2, 0.2)}


def _racket(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.45, 0.45)
    vis = _smooth(t / 0.3) * (1.0 - _smooth((t - (dur - 0.3)) / 0.3))
    d = _arm("r", 2.3, 0.45, env)
    d["r_elbow"] = d["r_elbow"] + env * 0.15 * np.sin(2 * math.pi * 0.8 * t)
    return d | {"racket": vis, "r_fist": vis, "mouth_smile": 0.6 * env, "mouth_open": 0.35 * env,
                "brow_height": 0.3 * env}


def _angry(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.25, 0.4)
    return {"brow_anger": 1.0 * env, "brow_height": -0.4 * env, "mouth_smile": -0.9 * env,
            "mouth_round": 0.3 * env, "blush": 0.5 * env, "head_pitch": 0.08 * env, "head_roll": -0.1 * env,
            "eye_open_l": -0.2 * env, "eye_open_r": -0.2 * env} | (_arm("r", 0.3, -0.5, env)
                                                                  | _arm("l", 0.3, -0.5, env))


def _smile(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.3, 0.4)
    return {"mouth_smile": 0.75 * env, "mouth_open": 0.45 * env, "mouth_wide": 0.5 * env,
            "eye_open_l": -0.95 * env, "eye_open_r": -0.95 * env, "eye_smile": env, "blush": 0.6 * env,
            "head_roll": 0.12 * env, "brow_height": 0.2 * env}


def _nod(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.15, 0.25)
    pitch = 0.32 * 0.5 * (1.0 - np.cos(2 * math.pi * 1.25 * t))
    return {"head_pitch": env * pitch, "mouth_smile": 0.3 * env, "eye_smile": 0.3 * env}


def _shake(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.2, 0.3)
    return {"head_yaw": env * 0.42 * np.sin(2 * math.pi * 1.5 * t), "mouth_smile": -0.3 * env,
            "brow_anger": -0.3 * env}


def _surprise(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.35, 0.45)
    return (_arm("r", 0.5, 2.45, env) | _arm("l", 0.5, 2.45, env)
            | {"eye_open_l": 0.35 * env, "eye_open_r": 0.35 * env, "brow_height": 0.9 * env,
               "mouth_open": 0.75 * env, "mouth_round": env, "mouth_smile": -0.25 * env,
               "head_pitch": -0.12 * env, "r_open": env, "l_open": env, "gaze_y": -0.2 * env})


def _bow(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    env = _envelope(t, dur, 0.6, 0.7)
    return (_arm("r", -0.3, -0.7, env) | _arm("l", -0.3, -0.7, env)
            | {"body_bow": env, "head_pitch": 0.45 * env, "eye_open_l": -0.7 * env,
               "eye_open_r": -0.7 * env, "mouth_smile": 0.4 * env})


def _talk(t: np.ndarray, dur: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    # Babble (used when no envelope is given): syllables at ~4 Hz with random loudness, smoothed.
    n = len(t)
    dt = float(t[1] - t[0]) if n > 1 else 0.04
    syll = np.repeat(rng.uniform(0.0, 1.0, n // max(1, round(0.12 / dt)) + 2), max(1, round(0.12 / dt)))[:n]
    syll = syll * (rng.uniform(0, 1, n) > 0.15)
    mouth = np.convolve(syll, np.ones(3) / 3.0, mode="same") * _smooth(t / 0.15)
    ph = rng.uniform(0, 2 * math.pi, 2)
    return {"mouth_open": mouth, "head_pitch": 0.03 * np.sin(2 * math.pi * t / 1.3 + ph[0]),
            "head_roll": 0.06 * np.sin(2 * math.pi * t / 2.9 + ph[1]), "brow_height": 0.15 * mouth,
            **_arm("l", 0.45, -1.1, _smooth(t / 0.5) * (0.5 + 0.5 * np.sin(2 * math.pi * t / 3.1 + ph[1])))}


TRAJECTORIES: dict[str, Traj] = {
    "idle": _idle, "wave": _wave, "heart": _heart, "like": _like, "touch_nose": _touch_nose, "blink": _blink,
    "racket": _racket, "angry": _angry, "smile": _smile, "nod": _nod, "shake_head": _shake,
    "surprise": _surprise, "bow": _bow, "talk": _talk,
}
assert set(TRAJECTORIES) == set(ACTION_INDEX), "every action in backend.actions needs a trajectory"

EMOTION_FACES: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"mouth_smile": 0.55, "blush": 0.85, "eye_smile": 0.3, "brow_height": 0.2},
    "angry": {"brow_anger": 0.75, "brow_height": -0.25, "mouth_smile": -0.6, "blush": 0.2},
    "surprised": {"eye_open_l": 0.25, "eye_open_r": 0.25, "brow_height": 0.6, "mouth_open": 0.2,
                  "mouth_round": 0.5},
    "sad": {"brow_height": 0.35, "brow_anger": -0.7, "mouth_smile": -0.65, "eye_open_l": -0.25,
            "eye_open_r": -0.25, "head_pitch": 0.1, "gaze_y": 0.4},
}
assert set(EMOTION_FACES) == set(EMOTIONS), "every emotion in backend.actions needs a face"


# ---------------------------------------------------------------------------------------------
# simulate
# ---------------------------------------------------------------------------------------------

_INERTIA_S = 0.15     # time constant of the critically damped blend across a switch ...
_INERTIA_RATE = 12.0  # ... lengthened for big gaps so no parameter blends faster than ~RATE/e per second


def _decay(t: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Critically damped decay 1 -> 0 of each parameter's ``offset`` (P,) at times ``t`` (n,) -> (n, P)."""
    tau = np.maximum(_INERTIA_S, np.abs(offset) / _INERTIA_RATE)
    x = np.maximum(t, 0.0)[:, None] / tau[None, :]
    return (1.0 + x) * np.exp(-x)


def _layer(name: str, emotion: str, t: np.ndarray, dur: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros((len(t), P), dtype=np.float64)
    for key, val in TRAJECTORIES[name](t, dur, rng).items():
        out[:, POSE_INDEX[key]] += val
    for key, v in EMOTION_FACES[emotion].items():
        out[:, POSE_INDEX[key]] += v
    return out


def _blink_track(n: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Eye closure 0..1 of the random idle blinks (every 1.5-6 s)."""
    t = np.arange(n) / fps
    closure = np.zeros(n)
    at = rng.uniform(0.3, 3.0)
    while at < t[-1] + 1.0 if n else False:
        closure = np.maximum(closure, _blink_bump(t, at))
        at += rng.uniform(1.5, 6.0)
    return closure


def segments(script: Sequence[tuple[int, str, str]], n_frames: int, fps: float = 25.0) -> list[tuple[int, str, str]]:
    """What ``simulate`` plays: sorted (start frame, action, emotion) with idle filled in before the first entry
    and after each non-looping action that ends before the next entry (labels for training clips)."""
    for i, item in enumerate(script):
        if not (isinstance(item, tuple | list) and len(item) == 3):
            raise ValueError(f"script[{i}] = {item!r}: expected (start_frame, action, emotion)")
        action(item[1])
        emotion_index(item[2])
        if not isinstance(item[0], int | np.integer) or item[0] < 0:
            raise ValueError(f"script[{i}] start frame {item[0]!r}: expected an integer >= 0")
    entries = sorted(((int(s), a, e) for s, a, e in script), key=lambda x: x[0])
    if not entries or entries[0][0] > 0:
        entries.insert(0, (0, "idle", entries[0][2] if entries else "neutral"))
    segs: list[tuple[int, str, str]] = []
    for i, (start, name, emo) in enumerate(entries):
        if start >= n_frames:
            break
        if segs and segs[-1][0] == start:
            segs.pop()  # two entries on one frame: the later wins
        segs.append((start, name, emo))
        nxt = entries[i + 1][0] if i + 1 < len(entries) else n_frames
        act = action(name)
        end = start + max(1, round(act.duration_s * fps))
        if not act.loop and end < min(nxt, n_frames):
            segs.append((end, "idle", emo))
    return segs


def simulate(script: Sequence[tuple[int, str, str]], n_frames: int, *, fps: float = 25.0, seed: int,
             mouth: np.ndarray | None = None) -> tuple[Tensor, Tensor]:
    """Pose trajectory (T, P) float32 and action progress (T,) for ``script`` of (start frame, action, emotion).

    Deterministic for ``seed``. A later entry interrupts the current action mid-way with a smooth blend;
    a non-looping action that ends before the next entry is followed by idle. ``mouth`` (per-frame
    openness 0..1, e.g. from ``backend.voice.lipsync.mouth_envelope``) drives the mouth in every action
    (speech can overlap a gesture); without it, ``talk`` babbles. ``progress`` is frames since the current
    action began / its duration in frames, clipped to [0, 1]; looping actions wrap every duration.
    """
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rng = np.random.default_rng(seed)
    segs = segments(script, n_frames, fps)
    layer = np.zeros((n_frames, P))
    progress = np.zeros(n_frames)
    prev: tuple[int, int, str, str, np.ndarray] | None = None  # (index, start, action, emotion, offset)
    for k, (start, name, emo) in enumerate(segs):
        end = segs[k + 1][0] if k + 1 < len(segs) else n_frames
        act = action(name)
        dur_frames = max(1, round(act.duration_s * fps))
        t = np.arange(end - start + 1) / fps
        raw = _layer(name, emo, t, act.duration_s, np.random.default_rng([seed, k, ACTION_INDEX[name]]))
        offset = np.zeros(P)
        if prev is not None:
            # where the previous segment would have been at this frame (its trajectory continued one step)
            pk, p_start, p_name, p_emo, p_off = prev
            p_t = np.arange(start - p_start + 1) / fps
            p_raw = _layer(p_name, p_emo, p_t, action(p_name).duration_s,
                           np.random.default_rng([seed, pk, ACTION_INDEX[p_name]]))[-1]
            offset = p_raw + p_off * _decay(p_t[-1:], p_off)[0] - raw[0]
        layer[start:end] = raw[:-1] + offset[None, :] * _decay(t[:-1], offset)
        frames = np.arange(end - start)
        progress[start:end] = (frames % dur_frames) / dur_frames if act.loop else np.minimum(frames / dur_frames, 1.0)
        prev = (k, start, name, emo, offset)

    t_all = np.arange(n_frames) / fps
    ph = rng.uniform(0, 2 * math.pi, 4)
    base = np.tile(REST_POSE.astype(np.float64), (n_frames, 1))
    base[:, POSE_INDEX["breath"]] = np.sin(2 * math.pi * t_all / 3.6 + ph[0])
    base[:, POSE_INDEX["body_sway"]] = 0.035 * np.sin(2 * math.pi * t_all / 7.0 + ph[1])
    base[:, POSE_INDEX["head_yaw"]] = 0.05 * np.sin(2 * math.pi * t_all / 5.3 + ph[2])
    base[:, POSE_INDEX["head_pitch"]] = 0.03 * np.sin(2 * math.pi * t_all / 4.1 + ph[3])
    pose = base + layer
    closure = _blink_track(n_frames, fps, rng)
    for eye in ("eye_open_l", "eye_open_r"):
        pose[:, POSE_INDEX[eye]] *= 1.0 - closure
    if mouth is not None:
        env = np.zeros(n_frames)
        m = np.clip(np.asarray(mouth, dtype=np.float64).reshape(-1)[:n_frames], 0.0, 1.0)
        env[: len(m)] = m
        i = POSE_INDEX["mouth_open"]
        talking = np.array([name == "talk" for name in _segment_names(segs, n_frames)])
        pose[:, i] = np.where(talking, env, np.maximum(pose[:, i], env))
    lo = np.array([r[0] for r in POSE_RANGES])
    hi = np.array([r[1] for r in POSE_RANGES])
    pose = np.clip(pose, lo, hi)
    return torch.from_numpy(pose.astype(np.float32)), torch.from_numpy(progress.astype(np.float32))


_segments = segments  # the earlier private name, still imported by backend.training.data


def _segment_names(segs: list[tuple[int, str, str]], n_frames: int) -> list[str]:
    names = []
    for k, (start, name, _emo) in enumerate(segs):
        end = segs[k + 1][0] if k + 1 < len(segs) else n_frames
        names.extend([name] * (end - start))
    return names


def random_script(n_frames: int, gen: torch.Generator, switch_every: tuple[int, int] = (24, 100),
                  align: int = 4, full_play: float = 0.0, emotion_only: float = 0.0,
                  fps: float = 25.0) -> list[tuple[int, str, str]]:
    """A random (start frame, action, emotion) script for training clips.

    Switches fall every ``switch_every`` frames (uniform, inclusive) on multiples of ``align`` (the
    autoencoder's frames per latent), so some clips interrupt an action mid-way; with probability
    ``full_play`` an action that does not loop plays its whole duration instead (as a viewer's command does),
    so its held middle (a deep bow) is seen as often as its start. With probability ``emotion_only`` a switch after
    a looping action (idle, talk) keeps the action and changes only the emotion, as a viewer's "look angry" does.
    Emotions are neutral about 40 % of the time.
    """
    lo, hi = switch_every
    if not (0 < lo <= hi) or align < 1 or not 0.0 <= full_play <= 1.0 or not 0.0 <= emotion_only <= 1.0:
        raise ValueError(f"switch_every={switch_every!r} align={align} full_play={full_play} "
                         f"emotion_only={emotion_only}: need 0 < a <= b, align >= 1 and shares in [0, 1]")

    def randint(a: int, b: int) -> int:
        return int(torch.randint(a, b + 1, (1,), generator=gen).item())

    def pick_emotion() -> str:
        return "neutral" if torch.rand((), generator=gen).item() < 0.4 else EMOTIONS[randint(0, len(EMOTIONS) - 1)]

    script: list[tuple[int, str, str]] = []
    start = 0
    while start < n_frames:
        act, emo = ACTIONS[randint(0, len(ACTIONS) - 1)], pick_emotion()
        if emotion_only > 0 and script and action(script[-1][1]).loop \
                and torch.rand((), generator=gen).item() < emotion_only:
            act = action(script[-1][1])
            others = [e for e in EMOTIONS if e != script[-1][2]]
            emo = others[randint(0, len(others) - 1)]
        script.append((start, act.name, emo))
        step = max(align, (randint(lo, hi) // align) * align)
        if full_play > 0 and not act.loop and torch.rand((), generator=gen).item() < full_play:
            step = max(step, -(-round(act.duration_s * fps) // align) * align)
        start += step
    return script


# ---------------------------------------------------------------------------------------------
# action_scores: how strongly each action's signature shows in a pose sequence
# ---------------------------------------------------------------------------------------------


def _window_std(x: Tensor, win: int) -> Tensor:
    """Std over a centred window of ``win`` frames (edge-padded), (T,) -> (T,)."""
    if x.shape[0] < 2:
        return torch.zeros_like(x)
    pad = win // 2
    xp = torch.nn.functional.pad(x[None, None], (pad, win - 1 - pad), mode="replicate")[0, 0]
    w = xp.unfold(0, win, 1)
    return w.std(dim=-1, unbiased=False)


def _window_mean(x: Tensor, win: int) -> Tensor:
    pad = win // 2
    xp = torch.nn.functional.pad(x[None, None], (pad, win - 1 - pad), mode="replicate")[0, 0]
    return xp.unfold(0, win, 1).mean(dim=-1)


def _window_max(x: Tensor, win: int) -> Tensor:
    pad = win // 2
    xp = torch.nn.functional.pad(x[None, None], (pad, win - 1 - pad), mode="replicate")[0, 0]
    return xp.unfold(0, win, 1).amax(dim=-1)


def _near(a: Tensor, b: tuple[float, float] | Tensor, radius: float) -> Tensor:
    b_t = torch.as_tensor(b, dtype=a.dtype, device=a.device)
    d = torch.linalg.vector_norm(a - b_t, dim=-1)
    return torch.clamp(1.0 - d / radius, 0.0, 1.0)


def action_scores(poses: Tensor, fps: float = 25.0) -> dict[str, Tensor]:
    """Per frame, how strongly each action's visual signature shows in ``poses`` (T, P): {action: (T,)} in [0, 1].

    Signatures are what a viewer would see (hand raised above the shoulder and oscillating for wave,
    both hands heart-shaped at the chest centre for heart ...), so evaluation can run them on poses read
    back from generated frames by the probe.
    """
    assert poses.ndim == 2 and poses.shape[1] == P, f"poses {tuple(poses.shape)}: expected (T, {P})"
    poses = poses.float()
    g = {n: poses[:, i] for n, i in POSE_INDEX.items()}
    sk = skeleton(poses)
    win = max(3, round(0.6 * fps))
    clip01 = lambda x: torch.clamp(x, 0.0, 1.0)  # noqa: E731
    r_above = clip01((sk.r_shoulder[:, 1] - sk.r_hand[:, 1] - 5.0) / 15.0)  # hand above the shoulder
    eyes = (g["eye_open_l"] + g["eye_open_r"]) / 2
    closed = clip01(1.0 - eyes)
    chest = (CHEST[0], CHEST[1] - 4.0)
    s: dict[str, Tensor] = {}
    s["wave"] = r_above * clip01(_window_std(g["r_elbow"], win) / 0.15) * clip01(1.0 - g["racket"])
    s["heart"] = (torch.minimum(g["r_heart"], g["l_heart"]) * _near(sk.r_hand, chest, 22.0).sqrt()
                  * _near(sk.l_hand, chest, 22.0).sqrt())
    s["like"] = g["r_thumb"] * clip01(1.0 - g["racket"])
    s["touch_nose"] = g["r_point"] * _near(sk.r_hand, (NOSE[0] - 3.0, NOSE[1] + 5.0), 30.0).sqrt()
    # A blink is a transient closure: measured against the eyes' open level of the last 0.8 s (wide surprised
    # eyes blink too; a sad face's or a generated frame's eyes that never open fully to 1 blink as well) and
    # above the least closure of the last 1.2 s, it must cover enough of the window (one idle blink stays
    # below 0.25) AND vary (eyes kept half shut by a sad face and a one-eyed touch_nose are not blinking, even
    # when an idle blink comes on top).
    bwin = round(0.8 * fps)
    closed_rel = clip01(1.0 - eyes / torch.clamp(_window_max(eyes, bwin), min=0.3))
    transient = closed_rel + _window_max(-closed_rel, round(1.2 * fps))  # closure above the 1.2 s minimum
    double = (clip01((_window_mean(transient, bwin) - 0.25) / 0.12)
              * clip01(_window_std(closed_rel, bwin) / 0.2))
    s["blink"] = double * clip01(1.0 - g["eye_smile"]) * clip01(1.0 - g["body_bow"] * 2)
    s["racket"] = g["racket"]
    s["angry"] = clip01(g["brow_anger"]) * clip01(-g["mouth_smile"] + 0.2)
    s["smile"] = clip01(g["mouth_smile"] / 0.7) * closed * g["eye_smile"] * clip01(1.0 - g["r_thumb"])
    s["nod"] = clip01(_window_std(g["head_pitch"], win) / 0.08) * clip01(1.0 - g["body_bow"] * 2)
    s["shake_head"] = clip01(_window_std(g["head_yaw"], win) / 0.1)
    wide_or_hands = torch.maximum(clip01((eyes - 1.0) / 0.25), clip01((g["r_open"] + g["l_open"]) / 1.5))
    # the round mouth past what the surprised emotion alone makes (0.5): the action opens it to 1
    s["surprise"] = clip01((g["mouth_round"] - 0.55) / 0.4) * clip01(g["brow_height"] / 0.6) * wide_or_hands
    s["bow"] = clip01(g["body_bow"] / 0.6)
    s["talk"] = clip01(_window_std(g["mouth_open"], win) / 0.15) * clip01(1.0 - g["mouth_round"])
    others = torch.stack(list(s.values())).amax(0)
    s["idle"] = 0.5 * clip01(1.0 - 2.0 * others)
    return {a.name: s[a.name] for a in ACTIONS}
