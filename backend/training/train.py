"""`liveidol train STAGE`: train the embedded default model in resumable steps of at most --minutes.

Stages, in order (each picks up where the last call stopped; state lives in the run directory):

1. ``autoencoder`` — the video autoencoder on rendered idol clips (RGBA, straight alpha).
2. ``dit`` — the causal DiT with diffusion forcing under teacher forcing: each training sequence is
   ``[reference, clean clip, noisy clip]``; every chunk of the noisy copy gets its own noise level and
   sees, through the attention mask, exactly what the streaming KV cache shows it at serve time: the
   sink (reference), the clean frames of the window before it, and its own chunk. Clips include
   mid-clip command switches, so the model learns to follow a new command at a chunk boundary.
3. ``selfforcing`` — robustness to its own drift: the first chunks' context is the model's own
   few-step rollout (no gradient) instead of the clean ground truth, and the model learns to bring the
   next chunks back to the commanded trajectory (the Self-Forcing idea, with a regression target
   from the world instead of a distillation critic).
3b. ``distill`` — few-step distillation (backend/training/distill.py): the same weights learn to land at 1
   and 2 sampling steps where the guided 4-step sampler lands (and to skip the guidance pass).
4. ``probe`` — the evaluation probe that reads pose and identity back from frames.
5. ``export`` — the EMA weights as one small safetensors file: backend/weights/liveidol-small.safetensors.

Speed (H100, batch 32, 16-latent clips): the masked attention runs as block-sparse flex attention, the
large noise tensors are drawn on the device, and each DiT block is compiled (``--no-compile`` to skip):
~130 ms a teacher-forced step, against ~310 ms eager with SDPA and noise drawn on the CPU.

Temporal positions: the reference keeps RoPE position 0 for good while a stream runs for days, so
the clip's positions are offset by a random amount (log-uniform up to 10^7 latent frames) and the
model learns to read identity from the sink whatever the distance.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from backend.actions import ACTION_INDEX, ACTIONS, EMOTION_INDEX, EMOTIONS
from backend.config import Config, ModelConfig
from backend.model.attention import FlexAttention
from backend.model.autoencoder import DETAIL_DECODERS, DETAIL_PREFIXES, VideoAutoencoder
from backend.model.checkpoint import (
    BUILTIN_PATH,
    Weights,
    autoencoder_fingerprint,
    check_config,
    init_dit_,
    load_dit,
    load_into,
    load_weights,
    recorded,
    save_checkpoint,
)
from backend.model.dit import EXTRA_PREFIXES, CausalDiT, block_count, deepen_state
from backend.model.generator import ACTION_FPS, EMOTION_RAMP_S
from backend.model.sampler import FlowMatchSchedule
from backend.training.critic import (
    CRITIC_ONE_STEP_SHARE,
    CRITIC_RAMP,
    CRITIC_SIGMA,
    CRITIC_WEIGHT,
    LAMBDA_EVERY,
    LatentCritic,
    adaptive_weight,
    critic_checkpoint,
    critic_noised,
    hinge_critic_loss,
    token_weights,
)
from backend.training.data import ClipSpec, face_boxes, make_specs, region_weights, render_clips
from backend.training.train_autoencoder import cosine_to_tenth
from backend.world.render import straight_alpha

__all__ = ["block_causal_mask", "controls_from_labels", "emotion_progress_from_labels", "progress_from_labels",
           "run_stage"]

log = logging.getLogger(__name__)

CLIP_LATENTS = 16  # latent frames per training clip
MAX_OFFSET = 10**7  # largest random temporal offset of a clip behind its reference
ACTION_START_LATENTS = 6  # latent frames (about 1 s) after a command switch that the loss weighs up
# extra weight on the first second after the emotion changes mid-clip: there the face must change from the label
# alone while the context still shows the old face (the DiT learnt emotions slowest of all the conditions)
EMOTION_SWITCH_WEIGHT = 3.0
# clips that show these actions are drawn this many times as often as others: the bow moves the whole figure and is
# the action the DiT draws worst (blotches at every step count), yet only about a fifth of the clips show it
HARD_ACTIONS = {"bow": 2.0}
# clips that hold these emotions are drawn up the same way (a clip's weight is the largest that applies): the emotions
# the DiT learnt worst (happy read right 6-25%, surprised 25-44% on the held-out plan, session 9)
HARD_EMOTIONS = {"happy": 2.0, "surprised": 1.5}
# The DiT stages train on emotion twins (the same clip under other emotions, the same noise): besides each clip's
# loss, the difference of the twins' errors is weighed this much more, so what tells the emotions apart (a smile's
# curve, a brow: a few pixels inside a latent cell) counts beside what both twins share. 0 = no twins.
TWIN_WEIGHT = 2.0
# selfforcing: the share of steps whose context is a real few-step rollout of the model (the rest: ONE_PASS_SHARE its
# one-pass predictions, then ground truth), and the most latent frames such a rollout runs before the loss's frames
ROLLOUT_SHARE = 0.3
ROLLOUT_LATENTS = 6
ONE_PASS_SHARE = 0.4
# --context-lag N: this share of the steps whose context is the world's hold that context still for up to N latent
# frames after each command switch (the pose before it), while the target moves on: the chunks right after a command
# must start the commanded motion from the command alone, as on a stream whose own frames have not moved yet
HOLD_SHARE = 0.5
DIT_PEAK_LR = 4e-4  # the DiT stages' planned schedule: this peak, a cosine to 10% of it over DIT_PLANNED_STEPS
DIT_PLANNED_STEPS = 40_000
HIRES_LATENT_NOISE = 0.15  # largest latent jitter (in latent std) the detail decoder trains on
HIRES_GAN_START = 1000  # detail decoder step from which a patch discriminator sharpens it (after plain losses)
REPATCH_FRESH = ("patch_embedding.", "head.head.")  # what reads and writes the latents: fresh in import --repatch
DISTILL_KEYS = ("distill_step", "guidance_distilled", "emotion_guidance_distilled", "distilled")  # training metadata of `train distill`
HIRES_ADV_WEIGHT = 0.1  # weight of its adversarial loss (ramped in over 200 steps) beside the reconstruction
HIRES_FACE_HALF = 26.0  # half side of the face crop the detail decoder is also scored on (design pixels)
HIRES_FACE_WEIGHT = 1.0  # weight of that crop's reconstruction terms beside the whole frame's
HIRES_TOTAL_STEPS = (13000, 200)  # a detail decoder's schedule (its last step): on CUDA, on a CPU (a smoke run)


# ---------------------------------------------------------------------------------------------
# Pieces shared with tests: masks, labels -> controls
# ---------------------------------------------------------------------------------------------


def block_causal_mask(n: int, chunk: int, window: int, sink: bool, device: torch.device | str = "cpu") -> Tensor:
    """Frame-level mask (1 + 2n, 1 + 2n) over ``[reference, clean_1..n, noisy_1..n]``; True = may attend.

    A frame of chunk c (latents s..e) sees what the streaming cache holds while chunk c is generated:
    the sink (if kept), clean frames in [e - window + 1, s - 1], and its own chunk (clean frames see the
    clean chunk, noisy frames the noisy chunk). The reference sees only itself.
    """
    total = 1 + 2 * n
    m = torch.zeros(total, total, dtype=torch.bool, device=device)
    m[0, 0] = True
    for j in range(1, n + 1):
        c = (j - 1) // chunk
        s, e = c * chunk + 1, min((c + 1) * chunk, n)
        lo = max(1, e - window + 1)
        for q in (j, n + j):  # the clean copy and the noisy copy of latent j
            m[q, 0] = sink
            m[q, lo:s] = True  # clean history inside the window
        m[j, s:e + 1] = True  # clean frame: its clean chunk
        m[n + j, n + s:n + e + 1] = True  # noisy frame: its noisy chunk
    return m


def progress_from_labels(actions: Tensor, temporal_factor: int) -> Tensor:
    """Per latent frame action progress (B, F) computed as the generator does (backend.model.generator.action_progress):
    latent frames since the current action's run began, over its duration, clipped (one-shot) or wrapped (loop)."""
    b, f = actions.shape
    out = torch.zeros(b, f)
    acts = actions.cpu()
    for i in range(b):
        start = 0
        for j in range(f):
            if j > 0 and acts[i, j] != acts[i, j - 1]:
                start = j
            a = ACTIONS[int(acts[i, j])]
            duration = a.duration_s * ACTION_FPS / temporal_factor
            k = j - start
            out[i, j] = (k % duration) / duration if a.loop else min(k / duration, 1.0)
    return out.to(actions.device)


def frames_since_switch(labels: Tensor) -> Tensor:
    """(B, F) latent frames since the label last changed (the clip start counts as a change); ``labels`` (B, F)
    are action indices, or one index per (action, emotion) pair."""
    b, f = labels.shape
    out = torch.zeros(b, f, dtype=torch.long, device=labels.device)
    for j in range(1, f):
        out[:, j] = torch.where(labels[:, j] == labels[:, j - 1], out[:, j - 1] + 1, 0)
    return out


def frames_since_change(labels: Tensor) -> Tensor:
    """(B, F) latent frames since the label last changed inside the clip; frames before its first change get
    ``F`` (the clip start is no change: nothing came before it)."""
    since = frames_since_switch(labels)
    return torch.where(_changed_yet(labels), since, torch.full_like(since, labels.shape[1]))


def _changed_yet(labels: Tensor) -> Tensor:
    """(B, F) bool: the label has changed at or before each latent frame inside the clip."""
    changed = torch.zeros_like(labels, dtype=torch.bool)
    changed[:, 1:] = (labels[:, 1:] != labels[:, :-1]).cumsum(1) > 0
    return changed


def emotion_progress_from_labels(emotions: Tensor, temporal_factor: int) -> Tensor:
    """Per latent frame emotion progress (B, F) as the generator computes it (backend.model.generator.
    emotion_progress): latent frames since the emotion changed inside the clip over ``EMOTION_RAMP_S``, clipped;
    1 before the clip's first change (the world shows a clip's first emotion fully from its first frame)."""
    ramp = EMOTION_RAMP_S * ACTION_FPS / temporal_factor
    since = frames_since_switch(emotions).float()
    return torch.where(_changed_yet(emotions), (since / ramp).clamp(0, 1), torch.ones_like(since))


def controls_from_labels(mouth: Tensor, progress: Tensor, cfg: ModelConfig, emotion: Tensor | None = None) -> Tensor:
    """(B, F, num_controls): the batched twin of backend.model.generator.control_vector (a test keeps them equal);
    ``emotion`` (B, F) is the emotion progress (None: 1, an emotion held all along)."""
    tf, n = cfg.autoencoder.temporal_factor, cfg.dit.num_controls
    b, f = progress.shape
    out = torch.zeros(b, f, n, device=progress.device)
    if n:
        out[..., :tf] = mouth.reshape(b, f, tf).clamp(0, 1)
        out[..., tf] = progress.clamp(0, 1)
    if n > tf + 1:
        out[..., tf + 1] = 1.0 if emotion is None else emotion.to(out.device).clamp(0, 1)
    return out


# ---------------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------------


class Run:
    """A run directory: autoencoder.pt, dit_model/dit_ema.safetensors (fp16) + dit_state.json, log.jsonl.

    Every file stays under 16 MB (the optimiser state is not kept: a resumed call re-warms the learning
    rate briefly), so a run directory can travel between machines.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def load(self, name: str) -> dict[str, Any] | None:
        p = self.path / name
        return torch.load(p, map_location="cpu", weights_only=False) if p.exists() else None

    def save(self, name: str, state: dict[str, Any]) -> None:
        tmp = self.path / (name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path / name)

    def load_weights(self, name: str) -> dict[str, Tensor] | None:
        from safetensors.torch import load_file

        p = self.path / name
        return {k: v.float() for k, v in load_file(p).items()} if p.exists() else None

    def save_weights(self, name: str, state: dict[str, Tensor]) -> None:
        from safetensors.torch import save_file

        tmp = self.path / (name + ".tmp")
        save_file({k: v.detach().to(torch.float16).contiguous().cpu() for k, v in state.items()}, str(tmp))
        os.replace(tmp, self.path / name)

    def meta(self) -> dict[str, Any]:
        p = self.path / "dit_state.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def log(self, **record: Any) -> None:
        with open(self.path / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")


def _device(cfg: Config) -> torch.device:
    if cfg.model.device == "cpu" or (cfg.model.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def _workers() -> int:
    return max(1, min(16, (os.cpu_count() or 2) - 1))


# ---------------------------------------------------------------------------------------------
# Stage 1: autoencoder
# ---------------------------------------------------------------------------------------------


def _spec_pool(n: int, frames: int, seed: int, tf: int, twins: bool = False) -> list[ClipSpec]:
    t0 = time.monotonic()
    specs = make_specs(n, frames, seed=seed, align=tf, workers=_workers(), twins=twins)
    log.info("clip pool clips=%d frames=%d twins=%s seconds=%.1f", n, frames, twins, time.monotonic() - t0)
    return specs


def _sub_clips(specs: list[ClipSpec], batch: int, gen: torch.Generator, tf: int) -> list[ClipSpec]:
    """``batch`` random clips of the pool, each cut to 2 latent frames (``2 * tf`` video frames) at one random
    start (video only: the labels are not cut along)."""
    idx = torch.randint(len(specs), (batch,), generator=gen).tolist()
    start = int(torch.randint(0, specs[0].poses.shape[0] - 2 * tf + 1, (1,), generator=gen).item())
    return [ClipSpec(s.identity, s.poses[start:start + 2 * tf], s.actions, s.emotions, s.progress, s.mouth)
            for s in (specs[i] for i in idx)]


def _pick_framing(framings: tuple[str, ...], gen: torch.Generator) -> str:
    """One of ``framings`` for a batch of clips, drawn on ``gen`` (nothing drawn when there is one: a run of one
    framing sees the clips it saw before framings existed)."""
    if len(framings) == 1:
        return framings[0]
    return framings[int(torch.randint(len(framings), (1,), generator=gen).item())]


def train_autoencoder_stage(cfg: Config, run: Run, deadline: float, device: torch.device) -> None:
    from backend.training.train_autoencoder import fit_latent_stats, train_autoencoder

    ae_cfg = cfg.model.autoencoder
    tf, size = ae_cfg.temporal_factor, (ae_cfg.native_width, ae_cfg.native_height)
    prev = run.load("autoencoder.pt")
    if prev is not None and "model" not in prev:
        raise SystemExit(f"{run.path}/autoencoder.pt was imported from {prev.get('imported_from')}: it has no "
                         "training state to resume; train the autoencoder in a new run directory")
    pool_seed = 1000 + (prev["step"] if prev else 0)
    specs = _spec_pool(512 if device.type == "cuda" else 16, 16 * tf, pool_seed, tf)

    def clips(batch: int, gen: torch.Generator) -> Tensor:
        framing = _pick_framing(cfg.model.framings, gen)
        return straight_alpha(render_clips(_sub_clips(specs, batch, gen, tf), size, tf, device, labels=False,
                                           framing=framing).video)

    ae = VideoAutoencoder(ae_cfg)
    total = 6000 if device.type == "cuda" else 40
    state = train_autoencoder(ae, clips, steps=total, batch=24 if device.type == "cuda" else 2, device=device,
                              state=prev, deadline=deadline, log_every=100, schedule_steps=total,
                              latent_noise=0.05)
    ae.to(device)
    fit_latent_stats(ae, clips, n_batches=16 if device.type == "cuda" else 2)
    state["latent_mean"], state["latent_std"] = ae.latent_mean.cpu(), ae.latent_std.cpu()
    state["ae_state"] = {k: v.cpu() for k, v in ae.state_dict().items()}
    state.pop("optimizer", None)  # keeps the file small; a resumed call starts a fresh optimiser
    run.save("autoencoder.pt", state)
    last = state["losses"][-1] if state["losses"] else {}
    run.log(stage="autoencoder", step=state["step"], **{k: v for k, v in last.items() if k != "step"})
    log.info("autoencoder step=%d loss=%s stopped=%s", state["step"], last.get("total"), state.get("stopped"))


def _checkpoint_autoencoder(cfg: Config, hint: str, source: str | None = None,
                            autoencoder: str | None = None) -> tuple[Weights, VideoAutoencoder]:
    """``model.checkpoint``'s weights (or ``source``'s) and its autoencoder (CPU, float32); ``hint`` says what to do
    when the checkpoint has no autoencoder. A DiT-only export (``export --dit-only``) names the autoencoder it was
    trained with by its fingerprint: that autoencoder is taken from ``autoencoder`` (a checkpoint path; default the
    shipped weights) when the fingerprints agree, and the returned weights carry it."""
    name = "model.checkpoint" if source is None else "checkpoint"
    source = cfg.model.checkpoint if source is None else source
    weights = load_weights(source)
    if weights is None:
        raise SystemExit(f"{name} = {source!r} has no autoencoder weights: {hint}")
    ae_state = weights.autoencoder
    if ae_state is None:
        need = ((weights.config or {}).get("training") or {}).get("autoencoder_sha256")
        if need is None:
            raise SystemExit(f"{name} = {source!r} has no autoencoder weights: {hint}")
        ae_source = autoencoder or str(BUILTIN_PATH)
        other = load_weights(ae_source)
        ae_state = other.autoencoder if other is not None else None
        have = autoencoder_fingerprint(ae_state) if ae_state is not None else None
        if ae_state is None or have != need:
            raise SystemExit(f"{source}: a DiT-only export, trained with autoencoder {need[:12]}; {ae_source} holds "
                             f"{'no autoencoder' if have is None else 'autoencoder ' + have[:12]}: give the checkpoint "
                             "it was trained with (--autoencoder PATH)")
        weights = dataclasses.replace(weights, autoencoder=ae_state)
        log.info("%s: DiT only; its autoencoder (%s) from %s", source, need[:12], ae_source)
    ae = VideoAutoencoder(cfg.model.autoencoder)
    load_into(ae, ae_state, source=weights.source, what="autoencoder", optional_prefixes=DETAIL_PREFIXES)
    return weights, ae


def _load_autoencoder(cfg: Config, run: Run, device: torch.device) -> VideoAutoencoder:
    state = run.load("autoencoder.pt")
    if state is None:
        raise SystemExit(f"{run.path}/autoencoder.pt missing: run `liveidol train autoencoder --run {run.path}` first")
    ae = VideoAutoencoder(cfg.model.autoencoder)
    load_into(ae, state["ae_state"], source=str(run.path / "autoencoder.pt"), what="autoencoder",
              optional_prefixes=DETAIL_PREFIXES)
    for which in DETAIL_DECODERS:  # the detail decoders this run trained (or imported): hires.pt, mid.pt
        detail, module = run.load(f"{which}.pt"), getattr(ae, which)
        if detail is not None and module is not None:
            module.load_state_dict(detail["model"])
    return ae.to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Stage 1b: the detail decoders (the same latents drawn at the output size, or at half of it for the CPU)
# ---------------------------------------------------------------------------------------------


class PatchDiscriminator(torch.nn.Module):
    """A small PatchGAN critic over premultiplied RGBA frames (N, 4, H, W) in [-1, 1] -> (N, 1, H/8, W/8) scores.
    Training only: it teaches the detail decoder to draw crisp edges instead of the blurred average that plain
    L1/L2 losses settle on."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        cin = 4
        for i, c in enumerate((width, 2 * width, 4 * width)):
            layers += [torch.nn.Conv2d(cin, c, 4, stride=2, padding=1),
                       torch.nn.GroupNorm(8, c) if i else torch.nn.Identity(), torch.nn.LeakyReLU(0.2)]
            cin = c
        layers.append(torch.nn.Conv2d(cin, 1, 3, padding=1))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, video: Tensor) -> Tensor:
        """(B, T, 4, H, W) straight-alpha RGBA in [0, 1] -> patch scores (B*T, 1, H/8, W/8)."""
        x = video.flatten(0, 1)
        x = torch.cat([x[:, :3] * x[:, 3:4], x[:, 3:4]], dim=1) * 2.0 - 1.0
        return self.net(x)


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _seed_decoder(ae: VideoAutoencoder, which: str, sources: tuple[str, ...]) -> int:
    """Copy into the decoder ``which`` each layer of the ``sources`` decoders (the first that fits) that lines up
    with one of its own, same type and shapes, counted from the latent side (the trunk at the latent grid) or
    from the pixel side (the last up-sampling steps, which draw the sub-pixels): it starts from what they know.
    Returns the number of tensors copied."""
    target = ae.decoder_named(which).net
    copied = 0
    for i, layer in enumerate(target):
        shapes = _shapes(layer)
        if not shapes:  # SiLU, PixelShuffle
            continue
        candidates = [src[j] for src in (ae.decoder_named(s).net for s in sources)
                      for j in (i, i - len(target) + len(src))  # the same place from the latents, from the pixels
                      if 0 <= j < len(src)]
        match = next((m for m in candidates if type(m) is type(layer) and _shapes(m) == shapes), None)
        if match is not None:
            layer.load_state_dict(match.state_dict())
            copied += len(shapes)
    return copied


def train_hires_stage(cfg: Config, run: Run, deadline: float, device: torch.device, *, critic: bool = False,
                      which: str = "hires") -> None:
    """Train a detail decoder (``which``: 'hires', or 'mid', the CPU's half-size one; saved as WHICH.pt) against
    the world rendered at its size; the encoder (whose latents the DiT learnt) and the other decoders stay frozen.
    A new one starts from the native decoder's layers (and, for 'mid', the run's trained hires decoder's) where
    they fit. The latents are jittered by up to ``HIRES_LATENT_NOISE`` of their spread, so the decoder draws the
    generator's imperfect latents cleanly too. ``critic`` adds a patch discriminator from ``HIRES_GAN_START`` on
    (sharper edges; measured on the H200 after 1,289 such steps: crisper eyes but dithered outlines and dark
    specks along the silhouette, so the shipped decoder was trained without). The face crop (``HIRES_FACE_HALF``
    design pixels) scales with the frame."""
    from backend.training.train_autoencoder import DEFAULT_WEIGHTS, _lr_at, reconstruction_losses

    if which not in DETAIL_DECODERS:
        raise SystemExit(f"train hires --decoder {which!r}: expected one of {', '.join(DETAIL_DECODERS)}")
    ae_cfg = cfg.model.autoencoder
    ae = _load_autoencoder(cfg, run, device)
    decoder = getattr(ae, which)
    if decoder is None:
        raise SystemExit(f"model.autoencoder.{which}_factors is empty: there is no {which} decoder to train")
    tf, native, big = ae_cfg.temporal_factor, (ae_cfg.native_width, ae_cfg.native_height), ae.frame_size(which)
    prev = run.load(f"{which}.pt")  # its weights are in the decoder already (_load_autoencoder)
    if prev is not None:
        step = int(prev["step"])
    else:
        sources = ("hires", "native") if which != "hires" and run.load("hires.pt") is not None else ("native",)
        log.info("%s decoder seeded from the %s decoder tensors=%d", which, " and ".join(sources),
                 _seed_decoder(ae, which, sources))
        step = 0
    decoder.train().requires_grad_(True)
    opt = torch.optim.AdamW(decoder.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    if prev is not None and prev.get("optimizer") is not None:
        opt.load_state_dict(prev["optimizer"])
    disc: PatchDiscriminator | None = None
    critic_state: dict[str, Any] = {k: prev[k] for k in ("disc", "disc_optimizer") if k in prev} if prev else {}
    if critic:
        disc = PatchDiscriminator().to(device)
        d_opt = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.9))
        if critic_state:
            disc.load_state_dict(critic_state["disc"])
            d_opt.load_state_dict(critic_state["disc_optimizer"])
    cuda = device.type == "cuda"
    specs = _spec_pool(512 if cuda else 8, 16 * tf, 5000 + step, tf)
    batch, total = (6 if cuda else 1), HIRES_TOTAL_STEPS[0 if cuda else 1]
    std = ae.latent_std.view(1, 1, -1, 1, 1)
    t_start, losses, done = time.monotonic(), [], 0
    step_times: list[float] = []
    while step < total:
        if not time_for_a_step(step_times, deadline):
            break
        t0 = time.monotonic()
        gen = torch.Generator().manual_seed(cfg.model.seed * 1_000_003 + step)
        sub = _sub_clips(specs, batch, gen, tf)
        framing = _pick_framing(cfg.model.framings, gen)
        with torch.no_grad():
            small = straight_alpha(render_clips(sub, native, tf, device, labels=False, framing=framing).video)
            target = straight_alpha(render_clips(sub, big, tf, device, labels=False, framing=framing).video)
            z = ae.encode_raw(small)
            jitter = torch.rand(batch, 1, 1, 1, 1, generator=gen).to(device) * HIRES_LATENT_NOISE
            z = z + jitter * std * torch.randn_like(z)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, total, 1e-3, 100)
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            recon = ae.decode_raw(z, which=which)
        terms = reconstruction_losses(recon, target)
        # the face again on its own (eyes, brows and mouth carry the emotions; the frame-wide mean drowns them)
        poses = torch.stack([s.poses for s in sub])
        crops = [reconstruction_losses(recon[i:i + 1, :, :, y0:y1, x0:x1], target[i:i + 1, :, :, y0:y1, x0:x1])
                 for i, (x0, y0, x1, y1) in enumerate(face_boxes(poses, big, HIRES_FACE_HALF, framing))]
        loss = recon.new_zeros((), dtype=torch.float32)
        for k, v in terms.items():
            face = sum(c[k] for c in crops) / len(crops)
            loss = loss + DEFAULT_WEIGHTS[k] * (v + HIRES_FACE_WEIGHT * face)
        adv_weight = HIRES_ADV_WEIGHT * min(1.0, max(0.0, (step - HIRES_GAN_START) / 200)) if disc else 0.0
        if disc is not None and adv_weight > 0:
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                fake_score = disc(recon)
            loss = loss + adv_weight * -fake_score.float().mean()  # hinge loss, generator side
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        opt.step()
        if disc is not None and step >= HIRES_GAN_START - 100:  # the critic starts a little before it is heard
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                real, fake = disc(target).float(), disc(recon.detach()).float()
            d_loss = torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean()
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
        step += 1
        done += 1
        losses.append(loss.item())
        step_times.append(time.monotonic() - t0)
        if step % 100 == 0:
            mean = sum(losses[-100:]) / len(losses[-100:])
            log.info("%s step=%d loss=%.4f step_ms=%.0f", which, step, mean, 1000 * sum(step_times[-100:]) / 100)
            run.log(stage=which, step=step, loss=mean)
    decoder.eval().requires_grad_(False)
    if disc is not None:
        critic_state = {"disc": disc.state_dict(), "disc_optimizer": d_opt.state_dict()}
    run.save(f"{which}.pt", {"step": step, "model": {k: v.cpu() for k, v in decoder.state_dict().items()},
                             "optimizer": opt.state_dict(), **critic_state})
    log.info("%s saved step=%d steps_this_call=%d seconds=%.0f last_loss=%.4f size=%dx%d", which, step, done,
             time.monotonic() - t_start, sum(losses[-100:]) / max(1, len(losses[-100:])), *big)


# ---------------------------------------------------------------------------------------------
# Stage 2/3: the causal DiT
# ---------------------------------------------------------------------------------------------


class LatentPool:
    """Rendered and encoded clips kept on the device: latents, reference latents, labels. With ``twins`` the pool
    holds ``2 * n`` clips, clip ``n + i`` the emotion twin of clip ``i`` (the same idol and motion under other
    emotions, :func:`backend.training.data.twin_script`), and :meth:`batch` draws pairs. The clips are rendered in
    ``model.framings`` by turns, 32 at a time (a clip and its twin in the same framing)."""

    def __init__(self, cfg: Config, ae: VideoAutoencoder, n: int, seed: int, device: torch.device,
                 twins: bool = False) -> None:
        ae_cfg = cfg.model.autoencoder
        tf, size = ae_cfg.temporal_factor, (ae_cfg.native_width, ae_cfg.native_height)
        specs = _spec_pool(n, CLIP_LATENTS * tf, seed, tf, twins)
        self.pairs = n if twins else 0  # clips with a twin (the first half of the pool)
        lat, ref, acts, emos, mouth, regions = [], [], [], [], [], []
        t0 = time.monotonic()
        framings = cfg.model.framings
        # by turns in blocks of 32; n is a multiple of 32 (or smaller) so the twin half repeats the first's turns
        with torch.no_grad():
            for i in range(0, len(specs), 32):
                framing = framings[(i % n if twins else i) // 32 % len(framings)]
                clips = render_clips(specs[i:i + 32], size, tf, device, framing=framing)
                lat.append(ae.encode(straight_alpha(clips.video)).to(torch.bfloat16))
                ref.append(ae.encode(straight_alpha(clips.reference)).to(torch.bfloat16))
                acts.append(clips.actions)
                emos.append(clips.emotions)
                mouth.append(clips.mouth)
                poses = torch.stack([s.poses for s in specs[i:i + 32]]).to(device)
                regions.append(region_weights(poses, size, ae_cfg.spatial_factor, tf, framing).to(torch.bfloat16))
        self.latents = torch.cat(lat)  # (N, F, C, h, w)
        self.regions = torch.cat(regions)  # (N, F, h, w) the loss's weight per latent cell (face and hands up)
        self.reference = torch.cat(ref)  # (N, 1, C, h, w)
        self.actions = torch.cat(acts)
        self.emotions = torch.cat(emos)
        self.mouth = torch.cat(mouth)  # (N, F*tf)
        self.progress = progress_from_labels(self.actions, tf)
        # latent frames since the command changed: a new emotion alone (a viewer's "look angry") is a command too
        self.since = frames_since_switch(self.actions * len(EMOTIONS) + self.emotions)
        self.since_emotion = frames_since_change(self.emotions)  # mid-clip emotion changes only
        self.emotion_progress = emotion_progress_from_labels(self.emotions, tf)  # the DiT's emotion control
        self.draw_weight = torch.ones(len(self.actions))  # how often each clip is drawn (HARD_ACTIONS/EMOTIONS up)
        hard = [(self.actions, ACTION_INDEX[name], w) for name, w in HARD_ACTIONS.items()]
        hard += [(self.emotions, EMOTION_INDEX[name], w) for name, w in HARD_EMOTIONS.items()]
        for labels, index, w in hard:
            shows = (labels == index).any(1).cpu()
            self.draw_weight = torch.where(shows, torch.clamp(self.draw_weight, min=w), self.draw_weight)
        if self.pairs:  # a pair is drawn as often as the harder of its two clips
            self.draw_weight = torch.maximum(self.draw_weight[:n], self.draw_weight[n:])
        log.info("latent pool clips=%d render+encode_s=%.1f latent_std=%.3f", len(specs), time.monotonic() - t0,
                 float(self.latents.float().std()))

    def __len__(self) -> int:
        return self.latents.shape[0]

    def batch(self, size: int, gen: torch.Generator) -> dict[str, Tensor]:
        """``size`` clips drawn by ``draw_weight``; from a pool of twins ``size // 2`` pairs: rows ``i`` and
        ``i + size // 2`` are twins."""
        if self.pairs:
            if size % 2:
                raise ValueError(f"a pool of emotion twins draws pairs: batch size {size} is odd")
            half = torch.multinomial(self.draw_weight, size // 2, replacement=True, generator=gen)
            idx = torch.cat([half, half + self.pairs])
        else:
            idx = torch.multinomial(self.draw_weight, size, replacement=True, generator=gen)
        idx = idx.to(self.latents.device)
        return {k: getattr(self, k)[idx]
                for k in ("latents", "reference", "actions", "emotions", "mouth", "progress", "emotion_progress", "since",
                          "since_emotion", "regions")}


def _inference_timesteps(cfg: ModelConfig, sched: FlowMatchSchedule) -> Tensor:
    ts: set[float] = set()
    for steps in range(1, len(cfg.timesteps) + 1):
        ts.update(sched.warp_list(cfg.timesteps[:steps]))
    return torch.tensor(sorted(ts))


def time_for_a_step(step_times: list[float], deadline: float) -> bool:
    """Whether a stage's loop takes another step before ``deadline`` (``time.monotonic()``): while the last 20 steps'
    slowest, twice over, still fits. The first step is no forecast (compilation and warm-up made a short stage stop
    after it: session 19 lost a device call to that), so until a second one has run only the deadline counts."""
    recent = step_times[1:][-20:]
    return time.monotonic() + (2 * max(recent) if recent else 0.0) <= deadline


def _sample_t(n_chunks: int, b: int, cfg: ModelConfig, sched: FlowMatchSchedule, gen: torch.Generator) -> Tensor:
    """(B, n_chunks) timesteps: 60% the sampler's own timesteps, 40% the shifted continuum."""
    inf = _inference_timesteps(cfg, sched)
    pick = inf[torch.randint(len(inf), (b, n_chunks), generator=gen)]
    u = torch.rand(b, n_chunks, generator=gen)
    cont = 1000 * sched.shift * u / (1 + (sched.shift - 1) * u)
    use_inf = torch.rand(b, n_chunks, generator=gen) < 0.6
    return torch.where(use_inf, pick, cont)


def one_step_draws(t: Tensor, share: float, gen: torch.Generator) -> Tensor:
    """``t`` with a ``share`` of its entries set to 1000, pure noise: the state the 1-step sampler predicts from,
    where the prediction must commit to a pose (a command's first chunk above all). 0 leaves ``t`` as it is and
    draws nothing from ``gen``."""
    if share <= 0.0:
        return t
    return torch.where(torch.rand(t.shape, generator=gen) < share, 1000.0, t)


def _randn(shape: torch.Size | tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Standard normal noise drawn on ``gen``'s device (training's large noise tensors come from a generator on
    the training device: drawing them on the CPU and copying cost tens of ms a step)."""
    return torch.randn(shape, generator=gen, device=gen.device)


def _noised_context(context: Tensor, sigma: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Context latents re-noised to ``sigma`` (B,) as the generator's cache pass does; returns (latents, t (B,))."""
    eps = _randn(context.shape, gen).to(context.device, context.dtype)
    s = sigma.view(-1, 1, 1, 1, 1).to(context.dtype)
    return (1 - s) * context + s * eps, 1000 * sigma


def _context_sigma(b: int, cfg: ModelConfig, gen: torch.Generator, device: torch.device) -> Tensor:
    """Per sample: half exactly the serve-time ``context_noise``, half uniform in [0, 2 * context_noise]."""
    exact = torch.full((b,), cfg.context_noise)
    spread = torch.rand(b, generator=gen) * 2 * cfg.context_noise
    return torch.where(torch.rand(b, generator=gen) < 0.5, exact, spread).to(device)


def _sequence_inputs(dit: CausalDiT, cfg: ModelConfig, batch: dict[str, Tensor], context_latents: Tensor,
                     noisy: Tensor, t_noisy: Tensor, offset: int, t_context: Tensor) -> dict[str, Tensor]:
    """Build forward_train's inputs for ``[reference, context, noisy]`` frames (context at ``t_context`` (B,))."""
    b, n = noisy.shape[:2]
    device = noisy.device
    x = torch.cat([batch["reference"].to(noisy.dtype), context_latents.to(noisy.dtype), noisy], dim=1)  # (B, 1+2n, C, h, w)
    t = torch.cat([torch.zeros(b, 1, device=device), t_context.view(b, 1).expand(b, n), t_noisy], dim=1)
    idle = torch.zeros(b, 1, dtype=torch.long, device=device)
    acts = torch.cat([idle, batch["actions"], batch["actions"]], 1)
    emos = torch.cat([idle, batch["emotions"], batch["emotions"]], 1)
    ctx = dit.build_context(acts.flatten(), emos.flatten()).unflatten(0, (b, 1 + 2 * n))  # (B, F, L, D)
    ctrl = controls_from_labels(batch["mouth"], batch["progress"], cfg, batch["emotion_progress"])
    ctrl = torch.cat([torch.zeros_like(ctrl[:, :1]), ctrl, ctrl], 1)
    pos = torch.arange(n, device=device) + 1 + offset
    frame_pos = torch.cat([torch.zeros(1, dtype=torch.long, device=device), pos, pos])
    return {"x": x.permute(0, 2, 1, 3, 4), "t": t, "context": ctx, "controls": ctrl, "frame_pos": frame_pos}


def _random_offset(gen: torch.Generator) -> int:
    if torch.rand((), generator=gen).item() < 0.3:
        return 0
    return int(10 ** (torch.rand((), generator=gen).item() * math.log10(MAX_OFFSET)))


@torch.no_grad()
def _rollout(dit: CausalDiT, cfg: ModelConfig, batch: dict[str, Tensor], n_latents: int, chunk: int, window: int,
             sched: FlowMatchSchedule, gen: torch.Generator, offset: int, steps: int,
             flex: FlexAttention | None = None) -> Tensor:
    """The model's own few-step rollout of the first ``n_latents`` frames, as the generator samples them
    (its context re-noised to ``context_noise`` like the cache pass); later frames stay ground truth."""
    lat = batch["latents"].float()
    b, n = lat.shape[:2]
    out = lat.clone()
    ts = sched.warp_list(cfg.timesteps[:steps])
    mask = block_causal_mask(n, chunk, window, cfg.sink_frames > 0, lat.device)
    sigma_ctx = torch.full((b,), cfg.context_noise, device=lat.device)
    for c0 in range(0, n_latents, chunk):
        c1 = min(c0 + chunk, n_latents)
        x = _randn(out[:, c0:c1].shape, gen).to(lat.device)
        for i, tv in enumerate(ts):
            noisy = out.clone()
            noisy[:, c0:c1] = x
            t_noisy = torch.zeros(b, n, device=lat.device)
            t_noisy[:, c0:c1] = tv
            ctx, t_ctx = _noised_context(out, sigma_ctx, gen)
            inp = _sequence_inputs(dit, cfg, batch, ctx, noisy, t_noisy, offset, t_ctx)
            flow = dit.forward_train(**inp, attn_mask=mask, flex=flex).permute(0, 2, 1, 3, 4)[:, 1 + n + c0:1 + n + c1]
            sigma = sched.sigma_nearest(torch.full((1,), tv)).item()
            x0 = x - sigma * flow.float()
            if i + 1 < len(ts):
                eps = _randn(x0.shape, gen).to(x0.device)
                x = (1 - ts[i + 1] / 1000) * x0 + ts[i + 1] / 1000 * eps
            else:
                out[:, c0:c1] = x0
    return out


@torch.no_grad()
def _self_predicted(dit: CausalDiT, cfg: ModelConfig, batch: dict[str, Tensor], chunk: int, sched: FlowMatchSchedule,
                    gen: torch.Generator, offset: int, flex: FlexAttention | None = None) -> Tensor:
    """One no-grad pass: every chunk's x0 predicted by the model from a sampler timestep (ground-truth context).
    Used as the context of the training pass, it shows the model its own typical errors cheaply."""
    lat = batch["latents"].float()
    b, n = lat.shape[:2]
    ts = torch.tensor(sched.warp_list(cfg.timesteps), device=gen.device)
    t_chunk = ts[torch.randint(len(ts), (b, math.ceil(n / chunk)), generator=gen, device=gen.device)]
    t_noisy = t_chunk.repeat_interleave(chunk, dim=1)[:, :n].to(lat.device)
    sig = (t_noisy / 1000).view(b, n, 1, 1, 1)
    noisy = (1 - sig) * lat + sig * _randn(lat.shape, gen).to(lat.device)
    ctx, t_ctx = _noised_context(lat, torch.full((b,), cfg.context_noise, device=lat.device), gen)
    mask = block_causal_mask(n, chunk, cfg.window_frames, cfg.sink_frames > 0, lat.device)
    flow = dit.forward_train(**_sequence_inputs(dit, cfg, batch, ctx, noisy, t_noisy, offset, t_ctx),
                             attn_mask=mask, flex=flex).permute(0, 2, 1, 3, 4)[:, 1 + n:].float()
    return noisy - sig * flow


def loss_weights(since: Tensor, since_emotion: Tensor) -> Tensor:
    """(B, F) the DiT loss's weight per latent frame: 3 in the first second after any command switch (the model
    must act on the condition alone), plus ``EMOTION_SWITCH_WEIGHT`` in the first second after a mid-clip
    emotion change, else 1."""
    weight = 1.0 + 2.0 * (since < ACTION_START_LATENTS).float()
    return weight + EMOTION_SWITCH_WEIGHT * (since_emotion < ACTION_START_LATENTS).float()


def dit_loss(residual: Tensor, regions: Tensor, weight: Tensor, first_frame: int = 0, twin_weight: float = 0.0) -> Tensor:
    """The DiT stages' loss from ``residual`` = prediction - target (B, F, C, h, w): per latent frame the squared
    error weighed per cell by ``regions`` (B, F, h, w) (face and hands up) and normalised by them, then averaged
    over the frames from ``first_frame`` on by ``weight`` (B, F). With ``twin_weight`` > 0 rows ``i`` and
    ``i + B // 2`` are emotion twins (:class:`LatentPool`), and the same loss of the difference of their residuals
    (cells and frames weighed by the larger of the two) is added that many times."""

    def weighed(res: Tensor, cells: Tensor, w: Tensor) -> Tensor:
        c = cells.unsqueeze(2)  # (B, F, 1, h, w)
        err = res.square().mul(c).sum(dim=(2, 3, 4)) / (c.sum(dim=(2, 3, 4)) * res.shape[2]) * w
        return err[:, first_frame:].sum() / w[:, first_frame:].sum()

    loss = weighed(residual, regions, weight)
    if twin_weight > 0:
        h = residual.shape[0] // 2
        loss = loss + twin_weight * weighed(residual[:h] - residual[h:], torch.maximum(regions[:h], regions[h:]),
                                            torch.maximum(weight[:h], weight[h:]))
    return loss


def optimizer_step(opt: torch.optim.Optimizer, model: torch.nn.Module, ema: torch.nn.Module, loss: Tensor, *,
                   lr: float, step: int, ema_decay: float) -> None:
    """One step of the DiT stages: ``lr`` set, gradients clipped to norm 1, then the EMA moves toward the model
    (its decay ramps up from 0.1 over the first steps of a run to ``ema_decay``)."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        decay = min(ema_decay, (1 + step) / (10 + step))
        # one multi-tensor lerp: a kernel per parameter was a hundred launches a step for a small DiT
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


def training_kernels(kernel: str, compile: bool | None, device: torch.device,
                     *dits: CausalDiT) -> tuple[FlexAttention | None, bool]:
    """The DiT stages' attention kernel and compilation: ``kernel`` 'auto' = block-sparse flex attention on
    CUDA (skips the ~70% of tiles the training mask hides; same result), SDPA with the dense mask on CPU;
    ``compile`` None = on CUDA: each block of ``dits`` compiled (fused norms, modulation, RoPE; flex traced
    into the block's graph), else flex compiled alone. Returns (the flex kernel or None, compiled)."""
    cuda = device.type == "cuda"
    if kernel not in ("auto", "flex", "sdpa"):
        raise ValueError(f"kernel = {kernel!r}: expected 'auto', 'flex' or 'sdpa'")
    if kernel == "flex" and not cuda:
        raise SystemExit("--kernel flex trains on CUDA only (flex attention has no backward on CPU): use auto or sdpa")
    if compile is None:
        compile = cuda
    if compile:
        from torch._dynamo import config as dynamo_config

        dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)  # blocks x masks x grad modes
        for dit in dits:
            for block in dit.blocks:
                block.compile()
    use_flex = kernel == "flex" or (kernel == "auto" and cuda)
    return (FlexAttention(compile=cuda and not compile) if use_flex else None), compile


def _save_dit(run: Run, model: torch.nn.Module, ema: torch.nn.Module, state: dict[str, Any]) -> None:
    """A run's DiT as the DiT stages resume it: the model, its EMA and the step counts (``dit_state.json``)."""
    run.save_weights("dit_model.safetensors", model.state_dict())
    run.save_weights("dit_ema.safetensors", ema.state_dict())
    (run.path / "dit_state.json").write_text(json.dumps(state))


def _context_kind(u: float, rollout_share: float) -> str:
    """Which context a selfforcing step trains on, from a uniform draw ``u``: 'rollout' (``rollout_share``),
    'one_pass' (``ONE_PASS_SHARE``, or what the rollouts leave) or 'truth'."""
    if u < rollout_share:
        return "rollout"
    return "one_pass" if u < rollout_share + min(ONE_PASS_SHARE, 1.0 - rollout_share) else "truth"


def held_context(context: Tensor, since: Tensor, most: int, gen: torch.Generator, twins: bool = False) -> Tensor:
    """``context`` (B, F, ...) with the first ``lag`` frames after each command switch inside the clip replaced by
    the frame before the switch (``lag`` drawn per clip from 1..``most``, one for both rows of an emotion twin pair
    with ``twins``: rows ``i`` and ``i + B // 2``); ``since`` (B, F) latent frames since the last switch
    (:func:`frames_since_switch`; the clip's start is no switch: nothing before it to hold)."""
    b, f = since.shape
    lag = torch.randint(1, most + 1, (b // 2 if twins else b, 1), generator=gen)
    lag = (lag.repeat(2, 1) if twins else lag).to(since.device)
    j = torch.arange(f, device=since.device).expand(b, f)
    start = j - since  # where the frame's command began
    held = (since < lag) & (start >= 1)
    src = torch.where(held, start - 1, j)
    return torch.gather(context, 1, src.view(b, f, *([1] * (context.dim() - 2))).expand_as(context))


def dit_learning_rate(step: int, resumed_at: int, done: float, *, anneal: bool = False,
                      peak: float | None = None) -> float:
    """The DiT stages' learning rate at ``step`` of a call that resumed at ``resumed_at`` and has run ``done`` (0..1)
    of its minutes: a 200-step warm-up, then the planned cosine over ``DIT_PLANNED_STEPS`` from ``DIT_PEAK_LR`` to
    10% of it (``anneal``: times a cosine to 10% by the call's end, a polish before export). ``peak``: a warm
    restart instead, the warm-up to ``peak`` then a cosine to 10% of it by the call's end, whatever the step: late
    in the plan the planned rate is a seventh of its peak and an EMA of 0.999 holds a few hundred steps' change to
    half, so a new skill (starting a motion from the command) needs the rate back up to be learnt in one call."""
    warm = min(1.0, (step - resumed_at + 1) / 200)
    by_call = cosine_to_tenth(done)
    if peak is not None:
        return peak * warm * by_call
    return DIT_PEAK_LR * warm * cosine_to_tenth(step / DIT_PLANNED_STEPS) * (by_call if anneal else 1.0)


def _rollout_length(chunk: int, n: int, most: int, gen: torch.Generator) -> int:
    """Latent frames a selfforcing rollout runs: whole chunks, at least one, at most ``most`` and leaving at least
    one chunk of the clip's ``n`` for the loss."""
    chunks = max(1, min(most, n - chunk) // chunk)
    return chunk * int(torch.randint(1, max(2, chunks + 1), (1,), generator=gen).item())


class _Judge:
    """The latent critic of a DiT stage (``--critic``; :mod:`backend.training.critic`): its frozen backbone, its
    heads and their optimiser, and one step's draws (the critic sigma and noise, the sequence the candidates sit in,
    the token weights), shared by the generator's term and the critic's own step."""

    def __init__(self, cfg: ModelConfig, backbone: CausalDiT, critic: LatentCritic, opt: torch.optim.Optimizer,
                 weight: float) -> None:
        self.cfg, self.backbone, self.critic, self.opt, self.weight = cfg, backbone, critic, opt, weight
        self.lam, self.adv = 1.0, 0.0
        self.fake_feats: list[Tensor] = []
        self.stats: list[tuple[float, ...]] = []
        # one step's draws (:meth:`draw`)
        self.sigma = self.eps = self.weights = torch.empty(0)
        self.labels: tuple[Tensor, Tensor] = (torch.empty(0), torch.empty(0))
        self.seq: tuple[Any, ...] = ()

    @classmethod
    def start(cls, cfg: ModelConfig, run: Run, ema: CausalDiT, device: torch.device, weight: float) -> _Judge:
        backbone = copy.deepcopy(ema).requires_grad_(False).eval()
        critic = LatentCritic(cfg.dit).to(device)
        opt = torch.optim.Adam(critic.parameters(), lr=2e-4, betas=(0.5, 0.9))
        saved = run.load("critic.pt")
        if saved is not None:
            try:
                critic.load_state_dict(saved["model"])
                opt.load_state_dict(saved["optimizer"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise SystemExit(f"{run.path / 'critic.pt'}: not this model's critic ({exc}); move it away to start "
                                 "a fresh one") from None
        log.info("latent critic: %s heads over a frozen copy of the DiT at sigma %.1f-%.1f, weight %.2f%s",
                 len(critic.out), *CRITIC_SIGMA, weight, " (resumed)" if saved is not None else "")
        return cls(cfg, backbone, critic, opt, weight)

    def draw(self, batch: dict[str, Tensor], context: Tensor, t_context: Tensor, offset: int, mask: Tensor,
             flex: FlexAttention | None, frame_weight: Tensor, first_frame: int, gen: torch.Generator,
             noise_gen: torch.Generator) -> None:
        lat = batch["latents"]
        lo, hi = CRITIC_SIGMA
        self.sigma = (lo + (hi - lo) * torch.rand(lat.shape[0], generator=gen)).to(lat.device)
        self.eps = _randn(lat.shape, noise_gen).to(lat.device)
        self.seq = (batch, context, t_context, offset, mask, flex)
        patch = self.cfg.dit.patch_size[1:]
        self.weights = token_weights(batch["regions"], frame_weight, (patch[0], patch[1]), first_frame)
        self.labels = (batch["actions"], batch["emotions"])

    def features(self, clean: Tensor) -> list[Tensor]:
        """The backbone's per-block features of the candidate frames (B, n, T, C) for clean latents (B, n, ...)."""
        batch, context, t_context, offset, mask, flex = self.seq
        b, n, _, h, w = clean.shape
        t_d = (1000 * self.sigma).view(b, 1).expand(b, n)
        cuda = clean.device.type == "cuda"
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            inp = _sequence_inputs(self.backbone, self.cfg, batch, context, critic_noised(clean, self.sigma, self.eps),
                                   t_d, offset, t_context)
            feats = self.backbone.block_features(**inp, attn_mask=mask, flex=flex)
        tokens = self.backbone.frame_tokens(h, w)
        return [f[:, (1 + n) * tokens:].unflatten(1, (n, tokens)) for f in feats]

    def generator_term(self, rec: Tensor, x0_pred: Tensor, dit: CausalDiT, call_step: int) -> Tensor:
        """The adversarial term added to the stage's loss ``rec`` for the predicted clean latents ``x0_pred``."""
        self.fake_feats = self.features(x0_pred)
        adv = -(self.critic(self.fake_feats, *self.labels) * self.weights).sum()
        if call_step % LAMBDA_EVERY == 0:
            self.lam = adaptive_weight(rec, adv, dit.head.head.weight)
        self.adv = adv.item()
        return self.weight * min(1.0, (call_step + 1) / CRITIC_RAMP) * self.lam * adv

    def critic_step(self, clean: Tensor) -> None:
        """One hinge step of the heads: the world's clean latents against this step's prediction."""
        with torch.no_grad():
            real_feats = self.features(clean)
        real = self.critic(real_feats, *self.labels)
        fake = self.critic([f.detach() for f in self.fake_feats], *self.labels)
        loss = hinge_critic_loss(real, fake, self.weights)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.fake_feats = []
        w = self.weights
        self.stats.append((loss.item(), (real.detach() * w).sum().item(), (fake.detach() * w).sum().item(),
                           self.adv, self.lam))
        del self.stats[:-100]

    def record(self) -> dict[str, float]:
        """The last 100 steps' means: critic loss, real and fake logits, the adversarial term, its weight."""
        keys = ("critic_loss", "critic_real", "critic_fake", "adv", "adv_lambda")
        n = max(1, len(self.stats))
        return {k: round(sum(row[i] for row in self.stats) / n, 4) for i, k in enumerate(keys)}

    def report(self) -> str:
        return " " + " ".join(f"{k}={v:.3f}" for k, v in self.record().items())


def train_dit_stage(cfg: Config, run: Run, deadline: float, device: torch.device, *, selfforcing: bool,
                    anneal: bool = False, kernel: str = "auto", compile: bool | None = None,
                    rollout_share: float = ROLLOUT_SHARE, rollout_latents: int = ROLLOUT_LATENTS,
                    context_lag: int = 0, peak_lr: float | None = None, critic: bool = False,
                    critic_weight: float = CRITIC_WEIGHT, one_step_share: float | None = None) -> None:
    """Train the DiT until ``deadline``, resuming the run. ``anneal`` decays the learning rate from the
    planned schedule's value to 10% of it by the deadline (a final polish before export). ``selfforcing``: a
    ``rollout_share`` of the steps see the model's own rollout of up to ``rollout_latents`` frames as context
    (:func:`_context_kind`, :func:`_rollout_length`). ``context_lag`` > 0: ``HOLD_SHARE`` of the steps on the
    world's context hold it still for up to that many latents after each command switch (:func:`held_context`).
    ``peak_lr``: a warm restart instead of the planned schedule (:func:`dit_learning_rate`). ``critic``: a latent
    critic judges the predicted clean latents against the world's (:mod:`backend.training.critic`; its heads resume
    from the run's ``critic.pt``), its term weighed ``critic_weight`` beside the squared error. ``one_step_share``:
    that share of the chunks start from pure noise on top of the stage's timesteps (:func:`one_step_draws`; None:
    ``CRITIC_ONE_STEP_SHARE`` with the critic, else none)."""
    if one_step_share is None:
        one_step_share = CRITIC_ONE_STEP_SHARE if critic else 0.0
    if not 0.0 <= one_step_share <= 1.0:
        raise SystemExit(f"--one-step-share must be in [0, 1] (got {one_step_share})")
    if peak_lr is not None and not 0.0 < peak_lr <= 1e-2:
        raise SystemExit(f"--lr must be in (0, 0.01] (got {peak_lr})")
    if context_lag < 0:
        raise SystemExit(f"--context-lag must be >= 0 (got {context_lag})")
    if not 0.0 < critic_weight <= 100.0:
        raise SystemExit(f"--critic-weight must be in (0, 100] (got {critic_weight})")
    if not 0.0 <= rollout_share <= 1.0 or rollout_latents < 1:
        raise SystemExit(f"selfforcing: --rollout-share must be in [0, 1] (got {rollout_share}) and --rollout-latents "
                         f">= 1 (got {rollout_latents})")
    mcfg = cfg.model
    ae = _load_autoencoder(cfg, run, device)
    meta = run.meta()
    weights, ema_weights = run.load_weights("dit_model.safetensors"), run.load_weights("dit_ema.safetensors")
    dit = CausalDiT(mcfg.dit)
    step, sf_step = int(meta.get("step", 0)), int(meta.get("sf_step", 0))
    resumed_at = step
    gen = torch.Generator().manual_seed(mcfg.seed + step)
    noise_gen = torch.Generator(device).manual_seed(mcfg.seed + step)  # the big noise tensors, on the device
    if weights is None:
        init_dit_(dit, generator=torch.Generator().manual_seed(mcfg.seed))
    else:  # modules added since the run began (EXTRA_PREFIXES) start at their zero init
        load_into(dit, weights, source=str(run.path / "dit_model.safetensors"), what="dit",
                  optional_prefixes=EXTRA_PREFIXES)
    dit.to(device)
    ema = copy.deepcopy(dit).requires_grad_(False)
    if ema_weights is not None:
        load_into(ema, ema_weights, source=str(run.path / "dit_ema.safetensors"), what="dit",
                  optional_prefixes=EXTRA_PREFIXES)
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(dit.parameters(), lr=4e-4, betas=(0.9, 0.99), weight_decay=0.01, fused=cuda or None)
    judge = _Judge.start(mcfg, run, ema, device, critic_weight) if critic else None
    flex, compile = training_kernels(kernel, compile, device, dit, *([judge.backbone] if judge else []))
    log.info("dit training attention kernel=%s compiled=%s", "flex" if flex else "sdpa", compile)
    if context_lag:
        log.info("context held still after a switch: up to %d latents in %.0f%% of the world-context steps",
                 context_lag, 100 * HOLD_SHARE)
    if selfforcing:
        log.info("selfforcing rollout_share=%.2f rollout_latents=%d one_pass_share=%.2f", rollout_share,
                 rollout_latents, min(ONE_PASS_SHARE, 1.0 - rollout_share))
    twins = TWIN_WEIGHT > 0
    pool = LatentPool(cfg, ae, (1024 if twins else 2048) if cuda else 8, seed=7 + step, device=device, twins=twins)
    sched = FlowMatchSchedule(shift=mcfg.shift)
    batch_size = 32 if cuda else 2
    if peak_lr is not None:
        log.info("learning rate: a warm restart at %.2e, down to 10%% of it by the end of this call", peak_lr)
    losses: list[float] = []
    t_start = time.monotonic()
    step_times: list[float] = []
    while True:
        if not time_for_a_step(step_times, deadline):
            break
        t0 = time.monotonic()
        batch = pool.batch(batch_size, gen)
        lat = batch["latents"]
        b, n = lat.shape[:2]
        chunk = int(torch.randint(1, mcfg.chunk_frames + 1, (1,), generator=gen).item())
        offset = _random_offset(gen)
        context = lat.float()
        first_loss_frame = 0
        kind = _context_kind(torch.rand((), generator=gen).item(), rollout_share) if selfforcing else "truth"
        if kind == "rollout":  # a real few-step rollout of the first chunks: drift as it happens at serve time
            dit.eval()
            k = _rollout_length(chunk, n, rollout_latents, gen)
            steps = int(torch.randint(1, 3, (1,), generator=gen).item())
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                context = _rollout(dit, mcfg, batch, k, chunk, mcfg.window_frames, sched, noise_gen, offset, steps,
                                   flex)
            first_loss_frame = k
            dit.train()
            sf_step += 1
        elif kind == "one_pass":  # the model's own one-pass predictions as context, for a random share of frames
            dit.eval()
            with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
                pred = _self_predicted(dit, mcfg, batch, chunk, sched, noise_gen, offset, flex)
            dit.train()
            use = (torch.rand(b, n, generator=gen) < torch.rand(b, 1, generator=gen)).to(device)
            context = torch.where(use.view(b, n, 1, 1, 1), pred, context)
            sf_step += 1
        if kind == "truth" and context_lag and torch.rand((), generator=gen).item() < HOLD_SHARE:
            context = held_context(context, batch["since"], context_lag, gen, twins=twins)
        context, t_context = _noised_context(context, _context_sigma(b, mcfg, gen, device), noise_gen)
        n_chunks = math.ceil(n / chunk)
        draws = b // 2 if twins else b  # twins share their timesteps and noise
        t_draw = _sample_t(n_chunks, draws, mcfg, sched, gen)
        t_draw = one_step_draws(t_draw, one_step_share, gen)
        t_chunk = t_draw.to(device).repeat(b // draws, 1)
        t_noisy = t_chunk.repeat_interleave(chunk, dim=1)[:, :n]
        sigma = (t_noisy / 1000).view(b, n, 1, 1, 1)
        eps = _randn((draws, *lat.shape[1:]), noise_gen).to(device).repeat(b // draws, 1, 1, 1, 1)
        x0 = lat.float()
        noisy = ((1 - sigma) * x0 + sigma * eps)
        target = eps - x0
        mask = block_causal_mask(n, chunk, mcfg.window_frames, mcfg.sink_frames > 0, device)
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            inp = _sequence_inputs(dit, mcfg, batch, context, noisy, t_noisy, offset, t_context)
            flow = dit.forward_train(**inp, attn_mask=mask, flex=flex)
        pred = flow.permute(0, 2, 1, 3, 4)[:, 1 + n:].float()
        # the first second after a command is where the model must act on the condition alone: weigh it up
        weight = loss_weights(batch["since"], batch["since_emotion"])  # (B, F)
        loss = dit_loss(pred - target, batch["regions"].float(), weight, first_loss_frame, TWIN_WEIGHT)
        if judge is not None:
            judge.draw(batch, context, t_context, offset, mask, flex, weight, first_loss_frame, gen, noise_gen)
            loss = loss + judge.generator_term(loss, noisy - sigma * pred, dit, step - resumed_at)
        done = min(1.0, (time.monotonic() - t_start) / max(1.0, deadline - t_start))
        lr = dit_learning_rate(step, resumed_at, done, anneal=anneal, peak=peak_lr)
        optimizer_step(opt, dit, ema, loss, lr=lr, step=step, ema_decay=0.999)
        if judge is not None:
            judge.critic_step(x0)
        step += 1
        losses.append(loss.item())
        step_times.append(time.monotonic() - t0)
        if step % 100 == 0:
            mean = sum(losses[-100:]) / len(losses[-100:])
            log.info("dit step=%d loss=%.4f lr=%.2e step_ms=%.0f selfforcing=%s%s", step, mean, lr,
                     1000 * sum(step_times[-100:]) / len(step_times[-100:]), selfforcing,
                     judge.report() if judge else "")
            run.log(stage="selfforcing" if selfforcing else "dit", step=step, loss=mean, lr=lr,
                    **(judge.record() if judge else {}))
    _save_dit(run, dit, ema, {"step": step, "sf_step": sf_step})
    if judge is not None:
        run.save("critic.pt", critic_checkpoint(judge.critic, judge.opt, step))
    log.info("dit saved step=%d selfforcing_steps=%d seconds=%.0f last_loss=%.4f", step, sf_step,
             time.monotonic() - t_start, sum(losses[-100:]) / max(1, len(losses[-100:])))


# ---------------------------------------------------------------------------------------------
# Stage 4/5: probe, export
# ---------------------------------------------------------------------------------------------


def train_probe_stage(cfg: Config, run: Run, deadline: float, device: torch.device) -> None:
    """Train the evaluation probe until ``deadline`` (a fresh probe each time: it trains in minutes).

    Half of each batch goes through the autoencoder (the run's, else the configured checkpoint's), so
    the probe reads the softer decoded frames the generator shows as well as clean renders. The probe has
    the emotion head ``liveidol eval`` reads emotions with.
    """
    from backend.training.probe import PROBE_PATH, Probe, ProbeError, train_probe

    minutes = max(0.5, (deadline - time.monotonic()) / 60)
    if (run.path / "autoencoder.pt").is_file():
        ae = _load_autoencoder(cfg, run, device)
    else:
        _, ae = _checkpoint_autoencoder(cfg, f"{run.path}/autoencoder.pt is missing too: train the autoencoder "
                                             "stage first")
    cuda = device.type == "cuda"
    try:  # continue from the shipped probe (its pose read-out fine-tuned gently, the emotion head added)
        init: Probe | None = Probe.load(PROBE_PATH) if PROBE_PATH.is_file() else None
    except ProbeError as exc:
        log.warning("probe: not continuing from %s: %s", PROBE_PATH, exc)
        init = None
    probe = train_probe(steps=10**9 if cuda else 200, device=device, batch=128 if cuda else 32,
                        deadline=deadline - 15.0, autoencoder=ae.float(), emotion=True, clips=480 if cuda else None,
                        init=init)
    probe.save(PROBE_PATH)
    run.log(stage="probe", minutes=minutes, path=str(PROBE_PATH))


def export_stage(cfg: Config, run: Run, path: Path = BUILTIN_PATH, dit_only: bool = False) -> None:
    """Write the run's DiT EMA (the distilled student's, in a distilled run) and its autoencoder as a checkpoint in
    float16. ``dit_only``: the DiT alone, with the autoencoder's fingerprint in the training record (a teacher kept
    beside the shipped weights at the size of its DiT; ``import`` takes the autoencoder back from the checkpoint
    holding it)."""
    ae = _load_autoencoder(cfg, run, torch.device("cpu"))
    details = {which: run.load(f"{which}.pt") for which in DETAIL_DECODERS}
    for which, state in details.items():
        if state is None:
            setattr(ae, which, None)  # never trained in this run: the export carries no such detail decoder
    from backend.training.distill import export_metadata

    prev = run.meta()
    distilled = export_metadata(run.path)  # a distilled student (train distill) is what the run ships
    ema = run.load_weights("distill_ema.safetensors" if distilled else "dit_ema.safetensors")
    if ema is None:
        raise SystemExit(f"{run.path}/dit_ema.safetensors missing: train the dit stage first")
    if distilled and distilled["distilled"]["teacher_dit_step"] != int(prev.get("step", 0)):
        raise SystemExit(f"{run.path}: the distilled student was made from dit step "
                         f"{distilled['distilled']['teacher_dit_step']} but the DiT was trained on since (step "
                         f"{prev.get('step')}): distil again in a new run (`liveidol train import`)")
    dit = CausalDiT(cfg.model.dit)
    dit.load_state_dict(ema)
    kept = {k: prev[k] for k in DISTILL_KEYS if k in prev}  # an imported distilled checkpoint's own record
    fingerprint = {"autoencoder_sha256": autoencoder_fingerprint(ae.state_dict())} if dit_only else {}
    save_checkpoint(path, dit, None if dit_only else ae, cfg.model, dtype=torch.float16,
                    training={"dit_step": int(prev.get("step", 0)), "sf_step": int(prev.get("sf_step", 0)),
                              "framings": list(cfg.model.framings),
                              **{f"{w}_step": int(s["step"]) if s is not None else 0 for w, s in details.items()},
                              **kept, **(distilled or {}), **fingerprint})
    size = path.stat().st_size
    log.info("exported %s bytes=%d dit_step=%d distill_step=%s", path, size, prev["step"],
             (distilled or kept).get("distill_step", 0))
    run.log(stage="export", bytes=size, dit_step=prev["step"])


def import_stage(cfg: Config, run: Run, teacher: str | None = None, grow: bool = False,
                 autoencoder: str | None = None, repredict: bool = False) -> None:
    """Seed an empty run from ``model.checkpoint`` (default: the shipped weights), so ``dit`` and
    ``selfforcing`` continue from it: the autoencoder (frozen for the DiT stages), the DiT as model and
    EMA, and the step counts the export recorded.

    With ``grow``, ``model.dit.num_layers`` may exceed the checkpoint's: the DiT is deepened to it
    (:func:`backend.model.dit.deepen_state`: new blocks that pass their input through, so the deeper model starts
    computing what the checkpoint does); every later stage of the run takes the same ``model.dit.num_layers``.

    With ``repredict``, ``model.dit.prediction`` differs from what the checkpoint's DiT predicts (a checkpoint from
    before the record: flow): the head's linear starts at zero (x0 = 0, the latents' mean) and every other tensor and
    the step counts go on; every later stage of the run takes the same ``model.dit.prediction``.

    With ``teacher`` (a checkpoint file), ``model.checkpoint`` must be a distilled export and the run continues
    its distillation: the teacher's DiT is the run's DiT (``dit_*``), the distilled DiT the student
    (``distill_*``, its EMA as both), its ``distill_step`` the count it goes on from; the teacher must be the one
    it was distilled from (the same DiT step).

    A DiT-only checkpoint or teacher (``export --dit-only``) takes its autoencoder from ``autoencoder`` (default:
    the shipped weights), which must hold the one it was trained with (the same fingerprint)."""
    taken = [n for n in ("autoencoder.pt", "dit_model.safetensors", "dit_ema.safetensors") if (run.path / n).exists()]
    if taken:
        raise SystemExit(f"{run.path}: already holds {', '.join(taken)}; import only into a new run directory")
    weights, ae = _checkpoint_autoencoder(cfg, "import needs a LiveIdol checkpoint (the shipped one, or a file "
                                               "written by `liveidol train export`)", autoencoder=autoencoder)
    trained = (weights.config or {}).get("training", {})
    was = recorded(weights, "dit", "prediction")  # what its head draws (before the record: flow)
    if repredict:
        now = cfg.model.dit.prediction
        if teacher is not None or grow:
            raise SystemExit("import --repredict gives an undistilled DiT a new head: not with --teacher or --grow")
        if was == now:
            raise SystemExit(f"import --repredict: {weights.source}'s DiT predicts {was} already, as "
                             "model.dit.prediction says: import it without --repredict")
        if "distill_step" in trained:
            raise SystemExit(f"import --repredict: {weights.source} is distilled; give it the DiT it was distilled "
                             "from and distil again afterwards")
        check_config(weights, dataclasses.replace(cfg.model, dit=dataclasses.replace(cfg.model.dit, prediction=was)))
        log.info("import --repredict: the DiT's head predicts %s instead of %s (starting at zero)", now, was)
    elif grow:
        if teacher is not None:
            raise SystemExit("import --grow deepens a DiT to train on; a distillation goes on with the DiT it began "
                             "with (--teacher): not both")
        had = block_count(weights.dit)
        want = cfg.model.dit.num_layers
        if want < had:
            raise SystemExit(f"import --grow: {weights.source} has {had} DiT blocks, model.dit.num_layers = {want}: "
                             "growing cannot drop blocks")
        check_config(weights, dataclasses.replace(cfg.model, dit=dataclasses.replace(cfg.model.dit, num_layers=had)))
        weights = dataclasses.replace(weights, dit=deepen_state(weights.dit, want))
        log.info("import --grow: the DiT deepened from %d to %d blocks (the new ones pass their input through)",
                 had, want)
    else:
        if teacher is None and was != cfg.model.dit.prediction:
            raise SystemExit(f"import: {weights.source}'s DiT predicts {was}, model.dit.prediction says "
                             f"{cfg.model.dit.prediction}: --set model.dit.prediction={was} to train it on as it is, "
                             "or --repredict to give it a new head for the other")
        check_config(weights, cfg.model)
    student: CausalDiT | None = None
    resumed: dict[str, Any] = {}
    if teacher is not None:
        from backend.training.distill import resume_state

        resumed = resume_state(trained, f"import --checkpoint {weights.source}")
        student = CausalDiT(cfg.model.dit)
        load_dit(student, weights)
        tw, ae = _checkpoint_autoencoder(cfg, "the teacher must be a LiveIdol checkpoint with its autoencoder",
                                         source=teacher, autoencoder=autoencoder)
        if tw.dit is None:
            raise SystemExit(f"import --teacher {teacher}: no DiT weights there")
        check_config(tw, cfg.model)
        t_trained = (tw.config or {}).get("training", {})
        if "distill_step" in t_trained:
            raise SystemExit(f"import --teacher {teacher}: that checkpoint is distilled itself; the teacher is the "
                             "undistilled DiT the student was made from")
        if int(t_trained.get("dit_step", -1)) != resumed["teacher_step"]:
            raise SystemExit(f"import --teacher {teacher}: its DiT is at step {t_trained.get('dit_step')}, the student "
                             f"{weights.source} was distilled from the DiT at step {resumed['teacher_step']}: "
                             "give that teacher, or distil the new one in a fresh run")
        weights, trained = tw, t_trained
    dit = CausalDiT(cfg.model.dit)
    load_dit(dit, weights)
    if repredict:
        with torch.no_grad():
            dit.head.head.weight.zero_()
            dit.head.head.bias.zero_()
    run.save("autoencoder.pt", {"ae_state": {k: v.float() for k, v in ae.state_dict().items()},
                                "imported_from": weights.source})
    for which in DETAIL_DECODERS:  # the trained detail decoders the checkpoint carries go on as WHICH.pt
        module = getattr(ae, which)
        if module is not None and any(k.startswith(f"{which}.") for k in weights.autoencoder or {}):
            run.save(f"{which}.pt", {"step": int(trained.get(f"{which}_step", 0)),
                                     "model": {k: v.float() for k, v in module.state_dict().items()}})
    state = {"step": int(trained.get("dit_step", 0)), "sf_step": int(trained.get("sf_step", 0)),
             **{k: trained[k] for k in DISTILL_KEYS if k in trained}}  # a distilled checkpoint stays one
    _save_dit(run, dit, dit, state)
    if student is not None:
        run.save_weights("distill_model.safetensors", student.state_dict())
        run.save_weights("distill_ema.safetensors", student.state_dict())
        (run.path / "distill_state.json").write_text(json.dumps(resumed))
    run.log(stage="import", source=weights.source, teacher=teacher, layers=cfg.model.dit.num_layers,
            prediction=cfg.model.dit.prediction, repredict=repredict, **state)
    log.info("imported %s into %s dit_step=%d%s", weights.source, run.path, state["step"],
             f" (the student {cfg.model.checkpoint} to distil on)" if student is not None else "")


def import_blocks_stage(cfg: Config, run: Run) -> None:
    """Seed the DiT of a run that trained its own autoencoder (``train autoencoder``) on another latent grid from
    ``model.checkpoint``'s DiT: every tensor whose name and shape the run's DiT shares is copied (the blocks, the
    time, text and command embeddings), the patch embedding and the head, which read and write the latents, start
    fresh. With ``model.dit.patch_size`` grown as the grid is refined (spatial factor 8 -> 4, patch 2 -> 4) the
    token grid stays the same, so the blocks keep what they learnt of motion, commands and emotions and only the
    way into and out of the latents is learnt again. The run's DiT starts at step 0 (its learning-rate warm-up)."""
    if run.load("autoencoder.pt") is None:
        raise SystemExit(f"{run.path}/autoencoder.pt missing: import --repatch gives the DiT of a run that trains "
                         f"its own autoencoder; run `liveidol train autoencoder --run {run.path}` first")
    taken = [n for n in ("dit_model.safetensors", "dit_ema.safetensors") if (run.path / n).exists()]
    if taken:
        raise SystemExit(f"{run.path}: already holds {', '.join(taken)}; import --repatch only into a run with no DiT")
    weights = load_weights(cfg.model.checkpoint)
    if weights is None or weights.dit is None:
        raise SystemExit(f"model.checkpoint = {cfg.model.checkpoint!r}: no DiT weights to take the blocks from")
    dit = CausalDiT(cfg.model.dit)
    init_dit_(dit, generator=torch.Generator().manual_seed(cfg.model.seed))
    own = dit.state_dict()
    fresh = sorted(k for k in own if k not in weights.dit or weights.dit[k].shape != own[k].shape)
    unexpected = [k for k in fresh if not k.startswith(REPATCH_FRESH)]
    if unexpected:
        raise SystemExit(f"import --repatch: {weights.source}'s DiT does not fit model.dit beyond the patch embedding "
                         f"and head ({', '.join(unexpected[:4])}{', ...' if len(unexpected) > 4 else ''}): give the "
                         "run the checkpoint's dim, heads, layers and text sizes")
    dropped = [k for k in weights.dit if k not in own]
    if dropped:
        raise SystemExit(f"import --repatch: {weights.source}'s DiT has tensors model.dit lacks ({dropped[0]}, ...): "
                         "give the run the checkpoint's model.dit.num_layers")
    dit.load_state_dict({**own, **{k: v.float() for k, v in weights.dit.items() if k not in fresh}})
    _save_dit(run, dit, dit, {"step": 0, "sf_step": 0})
    trained = (weights.config or {}).get("training", {})
    run.log(stage="import", source=weights.source, repatch=True, fresh=fresh, blocks_dit_step=trained.get("dit_step"))
    log.info("import --repatch: %s's DiT (step %s) into %s; fresh: %s", weights.source, trained.get("dit_step"),
             run.path, ", ".join(fresh))


def run_stage(cfg: Config, stage: str, run_dir: Path, *, minutes: float, export_path: Path = BUILTIN_PATH,
              anneal: bool = False, kernel: str = "auto", compile: bool | None = None, critic: bool = False,
              decoder: str = "hires", teacher: str | None = None, grow: bool = False, autoencoder: str | None = None,
              dit_only: bool = False, repatch: bool = False, repredict: bool = False,
              teacher_steps: int | None = None, rollout_share: float | None = None,
              rollout_latents: int | None = None, context_lag: int = 0, peak_lr: float | None = None,
              critic_weight: float | None = None, one_step_share: float | None = None) -> int:
    """Run one stage for at most ``minutes`` and save; calling again continues. ``kernel``: the DiT
    stages' masked attention ('auto' = flex on CUDA, SDPA on CPU; 'flex'; 'sdpa'); ``compile``: torch.compile
    the DiT blocks for those stages (None: on CUDA only); ``decoder``: the detail decoder the hires stage trains;
    ``teacher``, ``grow``, ``autoencoder``, ``repredict``: import only (see :func:`import_stage`); ``repatch``: import the blocks
    only (:func:`import_blocks_stage`); ``dit_only``: export only; ``teacher_steps``: distill only (the teacher's
    sampler steps the student learns the end point of); ``rollout_share``, ``rollout_latents``: selfforcing only
    (None: ``ROLLOUT_SHARE``, ``ROLLOUT_LATENTS``); ``context_lag``, ``peak_lr``: dit and selfforcing only;
    ``critic_weight``: dit and selfforcing with ``critic`` (None: ``CRITIC_WEIGHT``); ``one_step_share``: dit and
    selfforcing (None: the stage's own, :func:`train_dit_stage`)."""
    if teacher_steps is not None and stage != "distill":
        raise SystemExit(f"--teacher-steps is for the distill stage, not {stage}")
    if (rollout_share is not None or rollout_latents is not None) and stage != "selfforcing":
        raise SystemExit(f"--rollout-share and --rollout-latents are for the selfforcing stage, not {stage}")
    if context_lag and stage not in ("dit", "selfforcing"):
        raise SystemExit(f"--context-lag is for the dit and selfforcing stages, not {stage}")
    if peak_lr is not None and stage not in ("dit", "selfforcing"):
        raise SystemExit(f"--lr is for the dit and selfforcing stages, not {stage}")
    if critic and stage not in ("hires", "dit", "selfforcing"):
        raise SystemExit(f"--critic is for the hires, dit and selfforcing stages, not {stage}")
    if one_step_share is not None and stage not in ("dit", "selfforcing"):
        raise SystemExit(f"--one-step-share is for the dit and selfforcing stages, not {stage}")
    if critic_weight is not None and not (critic and stage in ("dit", "selfforcing")):
        raise SystemExit("--critic-weight is for the dit and selfforcing stages with --critic")
    if teacher is not None and stage != "import":
        raise SystemExit(f"--teacher is for the import stage (to go on distilling a distilled checkpoint), not {stage}")
    if grow and stage != "import":
        raise SystemExit(f"--grow is for the import stage (to deepen the DiT a run starts from), not {stage}")
    if autoencoder is not None and stage != "import":
        raise SystemExit(f"--autoencoder is for the import stage (where a DiT-only checkpoint takes its autoencoder "
                         f"from), not {stage}")
    if repatch and (stage != "import" or teacher is not None or grow or autoencoder is not None):
        raise SystemExit("--repatch is for the import stage alone (the run keeps its own autoencoder): not with "
                         f"{stage if stage != 'import' else '--teacher, --grow or --autoencoder'}")
    if repredict and (stage != "import" or repatch):
        raise SystemExit("--repredict is for the import stage (a checkpoint's DiT given a head for another "
                         f"model.dit.prediction), not {stage if stage != 'import' else 'with --repatch'}")
    if dit_only and stage != "export":
        raise SystemExit(f"--dit-only is for the export stage, not {stage}")
    deadline = time.monotonic() + minutes * 60
    device = _device(cfg)
    run = Run(run_dir)
    torch.backends.cuda.matmul.allow_tf32 = True
    log.info("train stage=%s run=%s device=%s minutes=%.1f", stage, run_dir, device, minutes)
    if stage == "autoencoder":
        train_autoencoder_stage(cfg, run, deadline, device)
    elif stage == "hires":
        train_hires_stage(cfg, run, deadline, device, critic=critic, which=decoder)
    elif stage in ("dit", "selfforcing"):
        train_dit_stage(cfg, run, deadline, device, selfforcing=stage == "selfforcing", anneal=anneal, kernel=kernel,
                        compile=compile, rollout_share=ROLLOUT_SHARE if rollout_share is None else rollout_share,
                        rollout_latents=ROLLOUT_LATENTS if rollout_latents is None else rollout_latents,
                        context_lag=context_lag, peak_lr=peak_lr, critic=critic,
                        critic_weight=CRITIC_WEIGHT if critic_weight is None else critic_weight,
                        one_step_share=one_step_share)
    elif stage == "distill":
        from backend.training.distill import train_distill_stage

        train_distill_stage(cfg, run, deadline, device, kernel=kernel, compile=compile, teacher_steps=teacher_steps)
    elif stage == "probe":
        train_probe_stage(cfg, run, deadline, device)
    elif stage == "export":
        export_stage(cfg, run, export_path, dit_only)
    elif stage == "import" and repatch:
        import_blocks_stage(cfg, run)
    elif stage == "import":
        import_stage(cfg, run, teacher, grow, autoencoder, repredict)
    return 0
