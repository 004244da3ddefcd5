"""Training clips from the procedural world: random idols acting random scripts with mid-clip switches.

A clip is rendered RGBA video plus what the generator is conditioned on at serve time, per latent frame:
the action and emotion in force (the engine switches them only at chunk boundaries, so labels are
latent-aligned), the action progress, and the mouth openness of each video frame. The same
:func:`backend.model.generator.control_vector` turns mouth and progress into the DiT's controls here and
in the generator, so training and serving agree.

Pose trajectories are simulated on the CPU (numpy); rendering runs on the training device.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from backend.actions import ACTION_INDEX, EMOTION_INDEX, EMOTIONS
from backend.world.character import identity_tensor, sample_identity
from backend.world.pose import REST_POSE, random_script, segments, simulate, skeleton
from backend.world.render import design_frame, render, straight_alpha

__all__ = ["ClipSpec", "Clips", "face_boxes", "make_specs", "region_weights", "render_clips", "rest_reference", "straight_alpha",
           "twin_script"]

# Where the loss weighs up (see region_weights): the face carries the emotions (brows, eyes and mouth are a few
# pixels at the native size) and the hands carry most actions (heart, like, touch_nose), yet both cover a few
# latent cells of the 32x18 grid, so a plain mean lets the body and hair drown them out.
FACE_WEIGHT = 4.0  # extra weight at the head centre (a Gaussian of FACE_SIGMA design pixels)
FACE_SIGMA = 14.0
HAND_WEIGHT = 2.0  # extra weight at each hand
HAND_SIGMA = 9.0
FULL_PLAY = 0.35  # share of a clip's non-looping actions that play whole (their held middle: a deep bow)
EMOTION_ONLY = 0.3  # share of switches after idle/talk that change only the emotion (the label alone must carry it)
TWIN_NEUTRAL = 0.5  # in an emotion twin, the share of a clip's emotional segments that turn neutral (else: another one)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip and its conditioning (CPU, picklable)."""

    identity: Tensor  # (IDENTITY_DIM,)
    poses: Tensor  # (T, P)
    actions: Tensor  # (T,) long, per video frame
    emotions: Tensor  # (T,) long
    progress: Tensor  # (T,) float
    mouth: Tensor  # (T,) float in [0, 1]


@dataclass
class Clips:
    """A batch of rendered clips on the training device."""

    video: Tensor  # (B, T, 4, H, W) float [0, 1], premultiplied RGB + matte
    reference: Tensor  # (B, tf, 4, H, W) the idol in the rest pose, repeated tf frames
    actions: Tensor  # (B, F) long, per latent frame
    emotions: Tensor  # (B, F) long
    progress: Tensor  # (B, F) float
    mouth: Tensor  # (B, T) float, per video frame


def _babble(n: int, rng: np.random.Generator) -> np.ndarray:
    """A speech-like mouth envelope: syllables of 4-8 frames with pauses."""
    env = np.zeros(n)
    i = 0
    while i < n:
        if rng.random() < 0.15:
            i += int(rng.integers(4, 12))  # pause
            continue
        length = int(rng.integers(3, 8))
        peak = rng.uniform(0.35, 1.0)
        env[i:i + length] = peak * np.sin(np.linspace(0, np.pi, length + 2)[1:-1])[: max(0, min(length, n - i))]
        i += length
    return env


def twin_script(script: list[tuple[int, str, str]], rng: np.random.Generator) -> list[tuple[int, str, str]]:
    """The emotion twin of a (start, action, emotion) ``script``: the same switches and actions, each segment under
    another emotion (a neutral one under a random mood; a mood under neutral with probability ``TWIN_NEUTRAL``,
    else under another mood). Simulated with the clip's seed, the twin makes the very same motion (the world's
    trajectories draw on (seed, segment, action) alone): the two clips differ in the face the emotions set."""
    moods = [e for e in EMOTIONS if e != "neutral"]
    out = []
    for start, act, emo in script:
        if emo == "neutral":
            new = moods[int(rng.integers(len(moods)))]
        elif rng.random() < TWIN_NEUTRAL:
            new = "neutral"
        else:
            others = [m for m in moods if m != emo]
            new = others[int(rng.integers(len(others)))]
        out.append((start, act, new))
    return out


def _one_spec(args: tuple[int, int, int, bool]) -> ClipSpec:
    seed, n_frames, align, twin = args
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    script = random_script(n_frames, gen, switch_every=(8, 48), align=align, full_play=FULL_PLAY,
                           emotion_only=EMOTION_ONLY)
    if twin:
        script = twin_script(script, np.random.default_rng([seed, 1]))
    segs = segments(script, n_frames, 25.0)
    action_of = np.zeros(n_frames, dtype=np.int64)
    emotion_of = np.zeros(n_frames, dtype=np.int64)
    for k, (start, name, emo) in enumerate(segs):
        end = segs[k + 1][0] if k + 1 < len(segs) else n_frames
        action_of[start:end] = ACTION_INDEX[name]
        emotion_of[start:end] = EMOTION_INDEX[emo]
    talking = action_of == ACTION_INDEX["talk"]
    mouth = _babble(n_frames, rng) * talking
    poses, progress = simulate(script, n_frames, fps=25.0, seed=seed, mouth=mouth)
    return ClipSpec(identity=identity_tensor([sample_identity(gen)])[0], poses=poses,
                    actions=torch.from_numpy(action_of), emotions=torch.from_numpy(emotion_of),
                    progress=progress, mouth=torch.from_numpy(mouth.astype(np.float32)))


def make_specs(n: int, n_frames: int, *, seed: int, align: int = 4, workers: int = 0,
               twins: bool = False) -> list[ClipSpec]:
    """``n`` random clip specs of ``n_frames`` frames, deterministic for ``seed``; ``workers`` > 1 uses processes.
    ``twins``: ``2 * n`` specs, clip ``n + i`` the emotion twin of clip ``i`` (:func:`twin_script`: the same idol
    and motion under other emotions)."""
    jobs = [(seed * 1_000_003 + i, n_frames, align, twin) for twin in ((False, True) if twins else (False,))
            for i in range(n)]
    if workers > 1:  # spawn: the parent may already hold a CUDA context
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(pool.map(_one_spec, jobs, chunksize=16))
    return [_one_spec(j) for j in jobs]


def region_weights(poses: Tensor, size: tuple[int, int], spatial_factor: int, temporal_factor: int,
                   framing: str = "half") -> Tensor:
    """(B, F, h, w) loss weights per latent cell for clips of ``poses`` (B, T, P) rendered at ``size`` (w, h) in
    ``framing``:
    1 everywhere, plus ``FACE_WEIGHT`` and ``HAND_WEIGHT`` Gaussians centred where the head and the hands are
    (the world's own kinematics), the largest over each latent frame's ``temporal_factor`` video frames."""
    b, t, _ = poses.shape
    if t % temporal_factor:
        raise ValueError(f"clip of {t} frames is not a multiple of {temporal_factor}")
    sk = skeleton(poses.float())
    w_px, h_px = size
    scale, ox, oy = design_frame(size, framing)  # render's mapping
    cells = spatial_factor / scale  # one latent cell in design pixels
    xs = (torch.arange(w_px // spatial_factor, device=poses.device) + 0.5) * cells - ox
    ys = (torch.arange(h_px // spatial_factor, device=poses.device) + 0.5) * cells + oy

    def bump(point: Tensor, sigma: float) -> Tensor:  # (B, T, 2) -> (B, T, h, w)
        dx = xs.view(1, 1, 1, -1) - point[..., 0, None, None]
        dy = ys.view(1, 1, -1, 1) - point[..., 1, None, None]
        return torch.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))

    # a framing that draws the idol smaller shrinks the bumps with her (they are in design pixels already)
    per_frame = (1.0 + FACE_WEIGHT * bump(sk.head, FACE_SIGMA)
                 + HAND_WEIGHT * torch.maximum(bump(sk.r_hand, HAND_SIGMA), bump(sk.l_hand, HAND_SIGMA)))
    return per_frame.view(b, t // temporal_factor, temporal_factor, *per_frame.shape[2:]).amax(2)


def face_boxes(poses: Tensor, size: tuple[int, int], half: float, framing: str = "half"
               ) -> list[tuple[int, int, int, int]]:
    """Per clip of ``poses`` (B, T, P) rendered at ``size`` (w, h) in ``framing``: the (x0, y0, x1, y1) pixel box of
    side ``2 * half`` design pixels centred on the head's mean position over the clip, shifted inside the frame."""
    w_px, h_px = size
    scale, ox, oy = design_frame(size, framing)
    head = skeleton(poses.float()).head.mean(1)  # (B, 2) design pixels
    side = min(round(2 * half * scale), w_px, h_px)
    boxes = []
    for x, y in head.tolist():
        x0 = min(max(round((x + ox) * scale) - side // 2, 0), w_px - side)
        y0 = min(max(round((y - oy) * scale) - side // 2, 0), h_px - side)
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def rest_reference(identity: Tensor, size: tuple[int, int], frames: int, framing: str = "half") -> Tensor:
    """(B, frames, 4, H, W): each idol of ``identity`` (B, I) in the rest pose (the identity reference)."""
    poses = torch.from_numpy(REST_POSE).to(identity.device)[None, None].expand(identity.shape[0], 1, -1)
    return render(identity, poses.contiguous(), size, framing).expand(-1, frames, -1, -1, -1)


def render_clips(specs: list[ClipSpec], size: tuple[int, int], temporal_factor: int, device: torch.device,
                 *, labels: bool = True, framing: str = "half") -> Clips:
    """Render ``specs`` on ``device`` in ``framing``; labels are taken at each latent frame's first video frame.

    ``labels=False`` renders only the video (the labels of a cropped spec would not line up).
    """
    identity = torch.stack([s.identity for s in specs]).to(device)
    poses = torch.stack([s.poses for s in specs]).to(device)
    video = render(identity, poses, size, framing)
    n_frames = poses.shape[1]
    assert n_frames % temporal_factor == 0, f"clip of {n_frames} frames is not a multiple of {temporal_factor}"
    if not labels:
        empty = torch.zeros(0, device=device)
        return Clips(video=video, reference=empty, actions=empty, emotions=empty, progress=empty, mouth=empty)
    first = slice(0, n_frames, temporal_factor)
    return Clips(
        video=video,
        reference=rest_reference(identity, size, temporal_factor, framing),
        actions=torch.stack([s.actions[first] for s in specs]).to(device),
        emotions=torch.stack([s.emotions[first] for s in specs]).to(device),
        progress=torch.stack([s.progress[first] for s in specs]).to(device),
        mouth=torch.stack([s.mouth for s in specs]).to(device),
    )
