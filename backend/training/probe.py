"""A small CNN probe that reads the pose and the identity back from RGBA frames of the procedural world.

Evaluation runs it on GENERATED frames: probe -> poses -> ``backend.world.pose.action_scores`` (did
the commanded action become visible within 1 s?), identity drift over a long stream (the identity
vector against the character's), and flicker (frame-to-frame pose jitter).

Usage::

    probe = train_probe(steps=3000, device="cuda", emotion=True)  # renders its own training frames
    probe.save("backend/weights/probe.safetensors")
    probe = Probe.load("backend/weights/probe.safetensors")
    poses, ident = probe.predict(frames)                   # frames (N, 4, H, W) float [0, 1]
    ident["hair_style"]  # ['twin_tails', ...]; ident["vector"] (N, IDENTITY_DIM) comparable to identity_tensor
    ident["emotion"]     # (N, len(EMOTIONS)) probabilities, when the probe has an emotion head

The emotion head (``Probe(emotion=True)``) reads a crop of the head region at the probe's full
resolution (the face is ~45 px wide at 256x144; the pose trunk sees it at 1/8 of that) and is trained
on the emotion of the simulated segment each frame belongs to (frames still blending from the previous
emotion are left out of the loss), plus a regression of the face parameters the emotions move.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from backend.actions import EMOTIONS
from backend.model.autoencoder import VideoAutoencoder
from backend.world.character import (
    EYE_SHAPES,
    HAIR_STYLES,
    IDENTITY_DIM,
    OUTFITS,
    PALETTE_KEYS,
    Identity,
    identity_tensor,
    sample_identity,
)
from backend.world.pose import (
    EMOTION_FACES,
    POSE_INDEX,
    POSE_PARAMS,
    POSE_RANGES,
    random_script,
    segments,
    simulate,
)
from backend.world.render import premultiplied, render, straight_alpha

__all__ = ["FACE_BOX", "FACE_PARAMS", "PROBE_PATH", "PROBE_SIZE", "Probe", "ProbeError", "render_batch", "train_probe"]

log = logging.getLogger(__name__)

PROBE_SIZE = (256, 144)  # (width, height) the probe reads; other frames are resized to it
PROBE_PATH = Path(__file__).resolve().parents[1] / "weights" / "probe.safetensors"  # the shipped probe
_N_POSE = len(POSE_PARAMS)
_N_PAL = 3 * len(PALETTE_KEYS)
_GRID = (9, 16)  # (rows, cols) of the feature grid the MLP reads
_GRID_CHANNELS = 32
_FORMAT = "liveidol-probe-2"
_HEADS = (("pose", _N_POSE), ("hair_style", len(HAIR_STYLES)), ("eye_shape", len(EYE_SHAPES)),
          ("outfit", len(OUTFITS)), ("palette", _N_PAL))
# The face parameters the emotions move (backend.world.pose.EMOTION_FACES): the emotion head's auxiliary target.
FACE_PARAMS: tuple[str, ...] = tuple(sorted({k for face in EMOTION_FACES.values() for k in face}))
# Where the head can be, as fractions (x0, y0, x1, y1) of the frame: centre (128, 50) of the 256x144 design frame,
# a 36 px half-size, down to y = 74 in a full bow, a little sway and yaw either side.
FACE_BOX = (84 / 256, 8 / 144, 172 / 256, 116 / 144)
_FACE_GRID = (4, 4)
EMOTION_SETTLE_S = 0.4  # frames this soon after an emotion changes are still blending: no emotion label


def face_box_crop(x: Tensor) -> Tensor:
    """``FACE_BOX`` of frames (..., H, W) of any size (the emotion head's crop, and the face reader's before resizing)."""
    h, w = x.shape[-2:]
    x0, y0, x1, y1 = FACE_BOX
    return x[..., round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)]


def timed_progress(minutes: float) -> Iterator[float]:
    """The share of ``minutes`` of wall clock gone at each step of a training that stops on the clock (the emotion
    head's and the face reader's), until they are up."""
    t0 = time.monotonic()
    deadline = t0 + minutes * 60
    while (now := time.monotonic()) < deadline:
        yield (now - t0) / (deadline - t0)


def warm_cosine_lr(lr: float, progress: float) -> float:
    """The probe and reader trainings' learning rate at ``progress`` in [0, 1] of their run: a warm-up over the
    first 5%, then a cosine decay to 0."""
    return lr * min(1.0, 20.0 * progress + 0.01) * 0.5 * (1.0 + math.cos(math.pi * progress))


def read_safetensors(path: str | Path, device: torch.device | str, error: type[Exception],
                     what: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """The metadata and tensors of the safetensors file ``path`` (a probe, a face reader); an unreadable or
    corrupt file raises ``error`` naming the file and ``what`` it should be."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return meta, load_file(str(path), device=str(device))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from exc


class ProbeError(ValueError):
    """A probe file is missing, corrupt or of another layout; the message names the file."""


class Probe(nn.Module):
    """Strided convs (GroupNorm + SiLU) down to a 9x16 grid -> MLP -> pose (normalised 0..1) + identity heads.

    Four stride-2 stages keep 1/8-resolution detail (eyes, brows, mouth are a few pixels at 256x144)
    through a full-resolution 3x3 stage before the last stride; ``width`` scales every stage.
    """

    pose_lo: Tensor  # (P,) buffers, registered in __init__
    pose_span: Tensor

    def __init__(self, width: int = 24, size: tuple[int, int] = PROBE_SIZE, emotion: bool = False,
                 face_width: int | None = None) -> None:
        super().__init__()
        self.width, self.size, self.emotion = width, size, emotion
        self.face_width = fw = face_width or width
        w = width

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout // 4) or 1, cout), nn.SiLU()]

        self.features = nn.Sequential(
            *stage(4, w, 2), *stage(w, 2 * w, 2), *stage(2 * w, 4 * w, 2), *stage(4 * w, 4 * w, 1),
            *stage(4 * w, 4 * w, 2), nn.Conv2d(4 * w, _GRID_CHANNELS, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(_GRID)
        self.mlp = nn.Sequential(nn.Linear(_GRID_CHANNELS * _GRID[0] * _GRID[1], 8 * w), nn.SiLU())
        self.head = nn.Linear(8 * w, sum(n for _, n in _HEADS))
        if emotion:  # the head region at full resolution -> emotion logits + the face parameters
            self.face = nn.Sequential(
                *stage(4, fw, 1), *stage(fw, 2 * fw, 2), *stage(2 * fw, 4 * fw, 2), *stage(4 * fw, 4 * fw, 1),
                *stage(4 * fw, 4 * fw, 2), nn.Conv2d(4 * fw, 16, 1), nn.AdaptiveAvgPool2d(_FACE_GRID), nn.Flatten(1),
                nn.Linear(16 * _FACE_GRID[0] * _FACE_GRID[1], 8 * fw), nn.SiLU(),
            )
            self.face_head = nn.Linear(8 * fw, len(EMOTIONS) + len(FACE_PARAMS))
        lo = torch.tensor([r[0] for r in POSE_RANGES])
        self.register_buffer("pose_lo", lo, persistent=False)
        self.register_buffer("pose_span", torch.tensor([r[1] for r in POSE_RANGES]) - lo, persistent=False)

    def _prepare(self, frames: Tensor) -> Tensor:
        if frames.ndim != 4 or frames.shape[1] != 4:
            raise ValueError(f"frames {tuple(frames.shape)}: expected (N, 4, H, W) RGBA in [0, 1]")
        w, h = self.size
        x = frames.to(self.head.weight.dtype)
        if x.shape[-2:] != (h, w):
            x = F.interpolate(x, size=(h, w), mode="area")
        return x * 2.0 - 1.0

    def _face_crop(self, x: Tensor) -> Tensor:
        return face_box_crop(x)

    def forward(self, frames: Tensor) -> dict[str, Tensor]:
        """Raw head outputs: pose (N, P) normalised to 0..1 of POSE_RANGES, class logits, palette (N, 18);
        with the emotion head also emotion logits (N, len(EMOTIONS)) and face (N, len(FACE_PARAMS)) normalised."""
        x = self._prepare(frames)
        z = self.head(self.mlp(self.pool(self.features(x)).flatten(1)))
        out, i = {}, 0
        for name, k in _HEADS:
            out[name] = z[:, i:i + k]
            i += k
        if self.emotion:
            f = self.face_head(self.face(self._face_crop(x)))
            out["emotion"], out["face"] = f[:, :len(EMOTIONS)], f[:, len(EMOTIONS):]
        return out

    @torch.no_grad()
    def embed(self, frames: Tensor, batch: int = 256) -> Tensor:
        """Penultimate features (N, 8 * width) of ``frames`` (N, 4, H, W) premultiplied in [0, 1], any size
        (resized to the probe's): what a Frechet distance between frame sets compares."""
        was = self.training
        self.eval()
        dev = self.head.weight.device
        out = [self.mlp(self.pool(self.features(self._prepare(frames[i:i + batch].to(dev)))).flatten(1)).float()
               for i in range(0, frames.shape[0], batch)]
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.head.in_features, device=dev)

    @torch.no_grad()
    def predict(self, frames: Tensor, batch: int = 256) -> tuple[Tensor, dict[str, object]]:
        """Poses (N, P) in POSE_PARAMS units and the identity read from ``frames`` (N, 4, H, W).

        Identity: ``hair_style`` / ``eye_shape`` / ``outfit`` (lists of names), ``palette`` (N, 18) RGB,
        and ``vector`` (N, IDENTITY_DIM): palette + class probabilities, laid out like ``identity_tensor``;
        with the emotion head also ``emotion`` (N, len(EMOTIONS)) probabilities in ``EMOTIONS`` order.
        """
        was = self.training
        self.eval()
        outs = [self(frames[i:i + batch].to(self.head.weight.device)) for i in range(0, frames.shape[0], batch)]
        self.train(was)
        o = {k: torch.cat([x[k] for x in outs]) for k in outs[0]} if outs else {}
        poses = self.pose_lo + o["pose"].clamp(0.0, 1.0) * self.pose_span
        probs = {k: o[k].softmax(-1) for k in ("hair_style", "eye_shape", "outfit")}
        palette = o["palette"].clamp(0.0, 1.0)
        vector = torch.cat([palette, probs["hair_style"], probs["eye_shape"], probs["outfit"]], -1)
        assert vector.shape[-1] == IDENTITY_DIM
        ident: dict[str, object] = {
            "hair_style": [HAIR_STYLES[i] for i in probs["hair_style"].argmax(-1).tolist()],
            "eye_shape": [EYE_SHAPES[i] for i in probs["eye_shape"].argmax(-1).tolist()],
            "outfit": [OUTFITS[i] for i in probs["outfit"].argmax(-1).tolist()],
            "palette": palette,
            "vector": vector,
        }
        if "emotion" in o:
            ident["emotion"] = o["emotion"].float().softmax(-1)
        return poses, ident

    def save(self, path: str | Path) -> None:
        meta = {"format": _FORMAT, "width": str(self.width), "size": json.dumps(list(self.size)),
                "pose_params": json.dumps(list(POSE_PARAMS))}
        if self.emotion:
            meta |= {"emotion": json.dumps(list(EMOTIONS)), "face_box": json.dumps(FACE_BOX),
                     "face_width": str(self.face_width)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata=meta)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Probe:
        meta, state = read_safetensors(path, device, ProbeError, "probe")
        if meta.get("format") != _FORMAT:
            hint = "; retrain it: liveidol train probe" if str(meta.get("format", "")).startswith("liveidol-probe") else ""
            raise ProbeError(f"{path}: not a LiveIdol probe of format {_FORMAT} (format={meta.get('format')!r}){hint}")
        if json.loads(meta["pose_params"]) != list(POSE_PARAMS):
            raise ProbeError(f"{path}: trained for other pose parameters; retrain the probe")
        if "emotion" in meta and (json.loads(meta["emotion"]) != list(EMOTIONS)
                                  or tuple(json.loads(meta.get("face_box", "null")) or ()) != FACE_BOX):
            raise ProbeError(f"{path}: its emotion head was trained for other emotions or another face box; "
                             "retrain it: liveidol train probe")
        probe = cls(width=int(meta["width"]), size=tuple(json.loads(meta["size"])),  # type: ignore[arg-type]
                    emotion="emotion" in meta, face_width=int(meta.get("face_width", meta["width"])))
        try:
            probe.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise ProbeError(f"{path}: {exc}") from exc
        return probe.to(device).eval()


def render_batch(n: int, gen: torch.Generator, device: torch.device | str, size: tuple[int, int],
                 pose_pool: Tensor, *, run: int = 1,
                 autoencoder: VideoAutoencoder | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` frames: ``n // run`` random identities, each in ``run`` consecutive poses of ``pose_pool``
    (clips, T, P), all jittered by one small offset per identity.

    With ``autoencoder`` the frames go through its encode and decode (``run`` must be a multiple of
    its temporal factor), so the probe also learns to read the autoencoder's softer frames, which is
    what the generator shows. Returns frames (n, 4, H, W) premultiplied, poses (n, P), identities (n, I).
    """
    frames, poses, ident, _ = _render_labelled(n, gen, device, size, pose_pool, None, run=run, autoencoder=autoencoder)
    return frames, poses, ident


def _render_labelled(n: int, gen: torch.Generator, device: torch.device | str, size: tuple[int, int],
                     pose_pool: Tensor, labels: Tensor | None, *, run: int = 1,
                     autoencoder: VideoAutoencoder | None = None, fixed: list[Identity] | None = None,
                     fixed_share: float = 0.0, hires: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """:func:`render_batch`, also picking the per-frame emotion ``labels`` (clips, T) of the chosen poses; with
    ``fixed``, about ``fixed_share`` of the idols are drawn from those identities instead of at random; ``hires``
    decodes the round trip with the autoencoder's detail decoder (frames at its ``hires_size``)."""
    if n % run:
        raise ValueError(f"render_batch: n = {n} is not a multiple of run = {run}")
    k = n // run
    clips, length, _ = pose_pool.shape
    who = [fixed[int(torch.randint(len(fixed), (), generator=gen))]
           if fixed and float(torch.rand((), generator=gen)) < fixed_share else sample_identity(gen) for _ in range(k)]
    ident = identity_tensor(who)
    clip = torch.randint(clips, (k,), generator=gen)
    first = torch.randint(length - run + 1, (k,), generator=gen)
    at = (clip[:, None], first[:, None] + torch.arange(run))
    poses = pose_pool[at]  # (k, run, P)
    span = torch.tensor([r[1] - r[0] for r in POSE_RANGES])
    lo = torch.tensor([r[0] for r in POSE_RANGES])
    poses = poses + 0.03 * span * torch.randn(k, 1, _N_POSE, generator=gen)
    poses = torch.minimum(torch.maximum(poses, lo), lo + span)
    ident, poses = ident.to(device), poses.to(device)
    video = render(ident, poses, size=size)  # (k, run, 4, H, W) premultiplied
    if autoencoder is not None:
        with torch.no_grad():
            video = autoencoder.decode(autoencoder.encode(straight_alpha(video)), which="hires" if hires else "native")
            video = premultiplied(video.float())
    emo = labels[at].flatten().to(device) if labels is not None else None
    return (video.flatten(0, 1), poses.flatten(0, 1),
            ident[:, None].expand(-1, run, -1).flatten(0, 1), emo)


def _pose_pool(gen: torch.Generator, clips: int = 24, frames: int = 250) -> Tensor:
    """(clips, frames, P): simulated random scripts, the poses the probe learns to read."""
    return _labelled_pool(gen, clips, frames)[0]


def _labelled_pool(gen: torch.Generator, clips: int = 24, frames: int = 250,
                   fps: float = 25.0) -> tuple[Tensor, Tensor]:
    """:func:`_pose_pool` and (clips, frames) int64 emotion labels: the index in ``EMOTIONS`` of the emotion of
    each frame's segment, -1 for the first ``EMOTION_SETTLE_S`` after the emotion changed (still blending)."""
    seeds = torch.randint(0, 2**31 - 1, (clips,), generator=gen).tolist()
    settle = round(EMOTION_SETTLE_S * fps)
    poses, labels = [], []
    for s in seeds:
        script = random_script(frames, gen, switch_every=(20, 60))
        poses.append(simulate(script, frames, seed=s, fps=fps)[0])
        lab = torch.full((frames,), -1, dtype=torch.int64)
        segs = segments(script, frames, fps)
        for i, (start, _name, emo) in enumerate(segs):
            end = segs[i + 1][0] if i + 1 < len(segs) else frames
            changed = i > 0 and segs[i - 1][2] != emo
            lab[start + (settle if changed else 0):end] = EMOTIONS.index(emo)
        labels.append(lab)
    return torch.stack(poses), torch.stack(labels)


def train_probe(steps: int, device: torch.device | str = "cpu", *, batch: int = 64, lr: float = 2e-3,
                seed: int = 0, width: int = 24, size: tuple[int, int] = PROBE_SIZE, pool: int = 0,
                noise: float = 0.03, deadline: float | None = None,
                autoencoder: VideoAutoencoder | None = None, autoencoder_share: float = 0.5,
                emotion: bool = False, clips: int | None = None, init: Probe | None = None,
                init_lr_scale: float = 0.1) -> Probe:
    """Train a probe on world renders of random identities in simulated poses.

    ``pool`` > 0 pre-renders that many frames once and trains on them (fast on CPU); 0 renders a fresh
    batch every step (use on a GPU). ``noise`` adds pixel noise so the probe tolerates generated frames;
    with ``autoencoder``, ``autoencoder_share`` of every batch is passed through it (see
    :func:`render_batch`). The learning rate warms up, then follows a cosine to 0 over ``steps`` or
    until ``deadline`` (a ``time.monotonic()`` value), whichever comes first, where training stops.
    ``emotion`` adds the emotion head (cross-entropy on the segment's emotion, classes weighted by their
    inverse frequency in the pose pool, plus the face parameters); ``clips``: simulated clips of 250 frames
    in the pose pool (default 24, 160 with the emotion head: it needs many action x emotion pairs).
    ``init``: start from this probe's weights (of the same width and size; e.g. the shipped probe, to add
    the emotion head to it): the parameters it has learn at ``init_lr_scale`` x ``lr`` (a gentle fine-tune
    that keeps its pose read-out), new ones at ``lr``.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = Probe(width=width, size=size, emotion=emotion).to(device)
    inherited: set[str] = set()
    if init is not None:
        if (init.width, tuple(init.size)) != (width, tuple(size)):
            raise ValueError(f"train_probe: init probe is width {init.width} size {init.size}, not {width} {size}")
        own = probe.state_dict()
        taken = {k: v for k, v in init.state_dict().items() if k in own and own[k].shape == v.shape}
        probe.load_state_dict(taken, strict=False)
        inherited = set(taken)
    if autoencoder is not None:
        autoencoder = autoencoder.to(device).eval().requires_grad_(False)
    run = autoencoder.cfg.temporal_factor if autoencoder is not None else 1
    n_ae = 0 if autoencoder is None else run * round(batch * autoencoder_share / run)
    poses_pool, labels = _labelled_pool(gen, clips or (160 if emotion else 24))
    known = labels[labels >= 0]
    freq = torch.bincount(known, minlength=len(EMOTIONS)).float().clamp(min=1.0)
    class_weight = (freq.sum() / freq / len(EMOTIONS)).to(device)
    face_idx = [POSE_INDEX[k] for k in FACE_PARAMS]

    def draw(n: int) -> tuple[Tensor, ...]:
        parts = [_render_labelled(n - n_ae, gen, device, size, poses_pool, labels)] if n > n_ae else []
        if n_ae:
            parts.append(_render_labelled(n_ae, gen, device, size, poses_pool, labels, run=run,
                                          autoencoder=autoencoder))
        return tuple(torch.cat([p[j] for p in parts]) for j in range(4))  # type: ignore[misc]

    if pool > 0:
        chunks = [draw(batch) for _ in range(-(-pool // batch))]
        data = tuple(torch.cat([c[j] for c in chunks])[:pool] for j in range(4))
    named = list(probe.named_parameters())
    groups = [{"params": [p for n, p in named if n in inherited], "scale": init_lr_scale},
              {"params": [p for n, p in named if n not in inherited], "scale": 1.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=1e-4)
    lo, span = probe.pose_lo, probe.pose_span
    t0 = time.monotonic()
    for step in range(steps):
        now = time.monotonic()
        progress = step / steps
        if deadline is not None:
            if now > deadline:
                log.warning("probe training stopped at the deadline step=%d of steps=%d", step, steps)
                break
            progress = max(progress, (now - t0) / max(1e-9, deadline - t0))
        for g in opt.param_groups:
            g["lr"] = g["scale"] * warm_cosine_lr(lr, progress)
        if pool > 0:
            idx = torch.randint(data[0].shape[0], (batch,), generator=gen).to(device)
            frames, poses, ident, emo = (d[idx] for d in data)
        else:
            frames, poses, ident, emo = draw(batch)
        if noise > 0:
            frames = (frames + noise * torch.randn(frames.shape, generator=gen).to(device)).clamp(0, 1)
        out = probe(frames)
        loss = F.mse_loss(out["pose"], (poses - lo) / span) * 10.0 + F.mse_loss(out["palette"], ident[:, :_N_PAL]) * 3.0
        off = _N_PAL
        for name, k in _HEADS[1:4]:
            loss = loss + F.cross_entropy(out[name], ident[:, off:off + k].argmax(-1)) * 0.3
            off += k
        if emotion:
            if (emo >= 0).any():
                loss = loss + F.cross_entropy(out["emotion"], emo, weight=class_weight, ignore_index=-1)
            loss = loss + F.mse_loss(out["face"], ((poses - lo) / span)[:, face_idx]) * 10.0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            known_b = emo >= 0
            acc = (float((out["emotion"].argmax(-1)[known_b] == emo[known_b]).float().mean())
                   if emotion and known_b.any() else float("nan"))
            log.info("probe step=%d loss=%.4f emotion_acc=%.3f progress=%.2f elapsed_s=%.1f", step, loss.item(), acc,
                     progress, time.monotonic() - t0)
    return probe.eval()


def train_emotion_head(base: Probe, minutes: float, *, frames: int = 6144, batch: int = 64, lr: float = 2e-3,
                       seed: int = 0, autoencoder: VideoAutoencoder | None = None, autoencoder_share: float = 0.5,
                       fixed: list[Identity] | None = None, fixed_share: float = 0.5, clips: int = 400,
                       face_width: int = 8) -> Probe:
    """Add an emotion head to ``base`` (a probe without one) on the CPU: ``base``'s trunk and heads are kept
    exactly (its pose read-out does not change); only the face branch trains, on ``frames`` head crops rendered
    once (``autoencoder_share`` of them through ``autoencoder``; about ``fixed_share`` of the idols drawn from
    ``fixed``, e.g. the shipped characters, the rest random), for ``minutes`` with a cosine learning rate."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = Probe(width=base.width, size=base.size, emotion=True, face_width=face_width)
    probe.load_state_dict(base.state_dict(), strict=False)
    poses_pool, labels = _labelled_pool(gen, clips)
    freq = torch.bincount(labels[labels >= 0], minlength=len(EMOTIONS)).float().clamp(min=1.0)
    class_weight = freq.sum() / freq / len(EMOTIONS)
    face_idx = [POSE_INDEX[k] for k in FACE_PARAMS]
    run = autoencoder.cfg.temporal_factor if autoencoder is not None else 1
    if autoencoder is not None:
        autoencoder = autoencoder.eval().requires_grad_(False)
    crops, faces, emos = [], [], []
    t0 = time.monotonic()
    with torch.no_grad():
        for i in range(0, frames, 64):
            through = autoencoder is not None and (i // 64) % max(1, round(1 / max(autoencoder_share, 1e-3))) == 0
            x, p, _, e = _render_labelled(64, gen, "cpu", probe.size, poses_pool, labels, run=run if through else 1,
                                          autoencoder=autoencoder if through else None, fixed=fixed,
                                          fixed_share=fixed_share)
            assert e is not None
            keep = e >= 0
            crops.append(probe._face_crop(probe._prepare(x[keep])).half())
            faces.append(((p - probe.pose_lo) / probe.pose_span)[keep][:, face_idx])
            emos.append(e[keep])
    data = torch.cat(crops), torch.cat(faces), torch.cat(emos)
    log.info("emotion head pool frames=%d labelled=%d seconds=%.1f", frames, data[0].shape[0], time.monotonic() - t0)
    params = list(probe.face.parameters()) + list(probe.face_head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    probe.train()
    step = 0
    for progress in timed_progress(minutes):
        for g in opt.param_groups:
            g["lr"] = warm_cosine_lr(lr, progress)
        idx = torch.randint(data[0].shape[0], (batch,), generator=gen)
        x = data[0][idx].float()
        x = x + 0.06 * torch.randn(x.shape, generator=gen)  # the noise of train_probe (0.03 in [0, 1])
        out = probe.face_head(probe.face(x))
        logits, face = out[:, :len(EMOTIONS)], out[:, len(EMOTIONS):]
        loss = F.cross_entropy(logits, data[2][idx], weight=class_weight) + F.mse_loss(face, data[1][idx]) * 10.0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            acc = float((logits.argmax(-1) == data[2][idx]).float().mean())
            log.info("emotion head step=%d loss=%.4f acc=%.3f progress=%.2f", step, loss.item(), acc, progress)
        step += 1
    return probe.eval()


def _shipped_autoencoder() -> VideoAutoencoder:
    """The configured checkpoint's autoencoder (the shipped one by default), float32 on the CPU."""
    from backend.config import load_config
    from backend.training.train import _checkpoint_autoencoder

    _, ae = _checkpoint_autoencoder(load_config(None, {"model.device": "cpu"}), "the autoencoder comes from "
                                    "model.checkpoint: none could be loaded")
    return ae.float()


def _shipped_identities() -> list[Identity]:
    from backend.world.character import load_character

    return [load_character(n).identity for n in ("aiko", "rin", "hana")]


def main(argv: list[str] | None = None) -> None:
    """``python -m backend.training.probe --steps 20000 --device cuda --out backend/weights/probe.safetensors``;
    ``--emotion-head MINUTES --base P`` adds an emotion head to the probe file P on the CPU (its pose read-out kept);
    ``--face-reader MINUTES --out backend/weights/face_reader.safetensors`` trains the face reader on the CPU."""
    import argparse

    ap = argparse.ArgumentParser(description="Train the evaluation probe on procedural world renders.")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--pool", type=int, default=0, help="pre-render this many frames (CPU); 0 = fresh every step")
    ap.add_argument("--size", type=int, nargs=2, default=list(PROBE_SIZE), metavar=("W", "H"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--emotion", action="store_true", help="add the emotion head (what liveidol eval reads emotions with)")
    ap.add_argument("--emotion-head", type=float, metavar="MINUTES",
                    help="only train an emotion head onto --base for this long (CPU: train_emotion_head)")
    ap.add_argument("--base", help="the probe file to add the emotion head to (--face-reader: a reader to continue)")
    ap.add_argument("--frames", type=int, default=3072, help="--emotion-head: head crops rendered for training")
    ap.add_argument("--face-reader", type=float, metavar="MINUTES",
                    help="train the face reader liveidol eval reads emotions with, for this long (CPU: "
                         "backend.training.face_reader.train_face_reader; --frames crops, default 12000)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.face_reader is not None:
        from backend.training.face_reader import FaceReader, train_face_reader

        reader = train_face_reader(args.face_reader, frames=args.frames if args.frames != 3072 else 12000,
                                   seed=args.seed, lr=args.lr, autoencoder=_shipped_autoencoder(),
                                   fixed=_shipped_identities(), init=FaceReader.load(args.base) if args.base else None)
        reader.save(args.out)
        log.info("face reader saved path=%s", args.out)
        return
    if args.emotion_head is not None:
        if not args.base:
            ap.error("--emotion-head needs --base PROBE_FILE")
        probe = train_emotion_head(Probe.load(args.base), args.emotion_head, frames=args.frames, seed=args.seed,
                                   autoencoder=_shipped_autoencoder(), autoencoder_share=0.25,
                                   fixed=_shipped_identities())
    else:
        probe = train_probe(args.steps, args.device, batch=args.batch, lr=args.lr, pool=args.pool,
                            size=(args.size[0], args.size[1]), seed=args.seed, emotion=args.emotion)
    probe.save(args.out)
    log.info("probe saved path=%s", args.out)


if __name__ == "__main__":
    main()
