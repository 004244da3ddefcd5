"""Training of the video autoencoder: reconstruction losses, a resumable loop, latent statistics.

Usage::

    ae = VideoAutoencoder(cfg.model.autoencoder)
    state = train_autoencoder(ae, clips, steps=20_000, device="cuda", deadline=time.monotonic() + 540)
    torch.save(state, "runs/ae_state.pt")                 # ... later, or in the next session:
    state = train_autoencoder(ae, clips, steps=20_000, device="cuda", state=torch.load("runs/ae_state.pt"))
    fit_latent_stats(ae, clips, n_batches=16)             # sets ae.latent_mean / ae.latent_std

``clips(batch, generator)`` returns a (batch, T, 4, H, W) float RGBA clip in [0, 1] (straight alpha),
T a multiple of the temporal factor: the procedural world in production, :func:`disc_clips` in tests.
The ``generator`` is a CPU ``torch.Generator`` seeded from (seed, step), so a resumed run sees the
same clips an uninterrupted run would.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from backend.model.autoencoder import VideoAutoencoder

__all__ = [
    "DEFAULT_WEIGHTS",
    "ClipSource",
    "LossWeights",
    "disc_clips",
    "evaluate_autoencoder",
    "fit_latent_stats",
    "reconstruction_losses",
    "train_autoencoder",
]

log = logging.getLogger(__name__)

ClipSource = Callable[[int, torch.Generator], Tensor]

# (name, weight) of each loss term; the total is the weighted sum.
LossWeights = dict[str, float]
DEFAULT_WEIGHTS: LossWeights = {"rgb_l1": 1.0, "rgb_l2": 1.0, "alpha": 1.0, "alpha_bce": 0.5, "edge": 0.5,
                                 "latent": 1e-3}


def _grad_xy(x: Tensor) -> tuple[Tensor, Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def _bce(p: Tensor, t: Tensor, eps: float = 1e-6) -> Tensor:
    """Binary cross-entropy on probabilities, written out (F.binary_cross_entropy refuses CUDA autocast)."""
    p = p.clamp(eps, 1.0 - eps)
    return -(t * p.log() + (1.0 - t) * (1.0 - p).log()).mean()


def reconstruction_losses(recon: Tensor, target: Tensor, latents: Tensor | None = None) -> dict[str, Tensor]:
    """Loss terms between (B, T, 4, H, W) RGBA clips (straight alpha), each a scalar tensor.

    - rgb_l1 / rgb_l2: colour error weighted by the target alpha (colour under alpha 0 is free);
    - alpha: L1 on alpha; alpha_bce: binary cross-entropy on alpha (its gradient does not vanish
      where the sigmoid saturates, so mattes are learnt early);
    - edge: L1 between spatial gradients of the premultiplied clips (keeps cartoon lines sharp);
    - latent: mean square of the raw latents (a tiny regulariser keeping their scale bounded).
    """
    if recon.shape != target.shape:
        raise ValueError(f"reconstruction_losses: recon shape {tuple(recon.shape)} != target {tuple(target.shape)}")
    recon, target = recon.float(), target.float()
    a_t = target[:, :, 3:4]
    denom = a_t.mean().clamp(min=1e-3) * 3.0  # mean over covered colour samples
    diff = recon[:, :, :3] - target[:, :, :3]
    losses = {
        "rgb_l1": (diff.abs() * a_t).mean() * 3.0 / denom,
        "rgb_l2": (diff.square() * a_t).mean() * 3.0 / denom,
        "alpha": (recon[:, :, 3:4] - a_t).abs().mean(),
        "alpha_bce": _bce(recon[:, :, 3:4], a_t),
    }
    pre_r = torch.cat([recon[:, :, :3] * recon[:, :, 3:4], recon[:, :, 3:4]], dim=2)
    pre_t = torch.cat([target[:, :, :3] * a_t, a_t], dim=2)
    (rx, ry), (tx, ty) = _grad_xy(pre_r), _grad_xy(pre_t)
    losses["edge"] = 0.5 * ((rx - tx).abs().mean() + (ry - ty).abs().mean())
    losses["latent"] = latents.float().square().mean() if latents is not None else recon.new_zeros(())
    return losses


def cosine_to_tenth(progress: float) -> float:
    """The training schedules' decay: a cosine from 1 at ``progress`` 0 to 0.1 at 1 (clamped to [0, 1])."""
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to lr/10 at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * cosine_to_tenth((step - warmup) / max(1, total - warmup))


def _autocast_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype | None:
    if dtype is not None:
        return None if dtype == torch.float32 else dtype
    return torch.bfloat16 if device.type == "cuda" else None


def train_autoencoder(
    ae: VideoAutoencoder,
    clips: ClipSource,
    steps: int,
    *,
    lr: float = 1e-3,
    batch: int = 8,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    log_every: int = 100,
    state: dict[str, Any] | None = None,
    deadline: float | None = None,
    seed: int = 0,
    weights: LossWeights | None = None,
    warmup: int = 100,
    schedule_steps: int | None = None,
    latent_noise: float = 0.0,
) -> dict[str, Any]:
    """Train ``ae`` on ``clips`` until ``steps`` total optimiser steps (counting those in ``state``).

    Returns the resumable state: ``{"step", "model", "optimizer", "losses", "seed", "lr", "batch",
    "schedule_steps", "stopped"}`` (plain tensors and numbers: ``torch.save`` it); ``losses`` is a list of ``{"step": int, <term>: float, "total": float}``, one entry
    averaged over each ``log_every`` steps (and one for a partial tail).  Pass it back as ``state``
    to continue: the model and optimiser are restored from it (a state without ``"optimizer"`` starts
    fresh AdamW moments) and the step count continues.

    The learning rate warms up linearly over ``warmup`` steps, then decays (cosine) to lr/10 at
    ``schedule_steps`` (default: the one in ``state``, else ``steps``): pass the final total there when
    training in several calls with growing ``steps``, so the schedule is that of one uninterrupted run.
    A loss that turns non-finite raises ``FloatingPointError`` at the next log (fail loudly).

    ``dtype``: autocast dtype; None is bfloat16 on CUDA and float32 (no autocast) elsewhere.
    ``deadline``: a ``time.monotonic()`` value; training stops cleanly before a step that would
    start after it (``state["stopped"] == "deadline"``).  ``latent_noise``: std of Gaussian noise added
    to the raw latents before decoding (robustness to the generator's imperfect latents).
    """
    if steps < 0 or batch < 1 or log_every < 1:
        raise ValueError(f"train_autoencoder: steps={steps} batch={batch} log_every={log_every}: "
                         "expected steps >= 0, batch >= 1, log_every >= 1")
    device = torch.device(device)
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"train_autoencoder(weights): unknown loss terms {sorted(unknown)}; "
                         f"known: {sorted(DEFAULT_WEIGHTS)}")
    ae.to(device).train()
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    if state is not None:
        ae.load_state_dict(state["model"])
        if state.get("optimizer") is not None:
            opt.load_state_dict(state["optimizer"])
        else:
            log.info("resuming without optimizer state: fresh AdamW moments step=%d", int(state["step"]))
        seed = state["seed"]
        step = int(state["step"])
        losses: list[dict[str, float]] = list(state["losses"])
        if schedule_steps is None:
            schedule_steps = state.get("schedule_steps")
        log.info("resuming autoencoder training step=%d of steps=%d", step, steps)
    else:
        step, losses = 0, []
    amp = _autocast_dtype(device, dtype)
    acc: dict[str, Tensor] = {}
    n_acc = 0
    stopped = "steps"

    def flush() -> None:
        nonlocal acc, n_acc
        if n_acc == 0:
            return
        row = {"step": step, **{k: float(v) / n_acc for k, v in acc.items()}}
        if not math.isfinite(row["total"]):
            raise FloatingPointError(f"autoencoder training diverged: loss {row['total']} over the "
                                     f"{n_acc} steps before step={step} (lower lr?)")
        losses.append(row)
        log.info("ae step=%d total=%.4f rgb_l1=%.4f alpha=%.4f edge=%.4f latent=%.3f lr=%.2e", step,
                 row["total"], row["rgb_l1"], row["alpha"], row["edge"], row["latent"], opt.param_groups[0]["lr"])
        acc, n_acc = {}, 0

    t0 = time.monotonic()
    start_step = step
    while step < steps:
        if deadline is not None and time.monotonic() >= deadline:
            stopped = "deadline"
            log.info("ae training stopped at deadline step=%d", step)
            break
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        video = clips(batch, gen)
        if not isinstance(video, Tensor) or video.ndim != 5 or video.shape[0] != batch:
            got = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
            raise ValueError(f"train_autoencoder: clips({batch}, generator) returned {got}; "
                             f"expected a ({batch}, T, 4, H, W) float tensor")
        video = video.to(device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, schedule_steps or steps, lr, warmup)
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            z = ae.encode_raw(video)
            z_in = z + latent_noise * torch.randn_like(z) if latent_noise > 0 else z
            recon = ae.decode_raw(z_in)
        terms = reconstruction_losses(recon, video, z)
        total = sum(weights[k] * v for k, v in terms.items())
        opt.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[union-attr]
        torch.nn.utils.clip_grad_norm_(ae.parameters(), 1.0)
        opt.step()
        step += 1
        for k, v in {**terms, "total": total}.items():
            acc[k] = acc.get(k, 0.0) + v.detach()  # type: ignore[union-attr]
        n_acc += 1
        if step % log_every == 0:
            flush()
    flush()
    done = step - start_step
    if done:
        dt = time.monotonic() - t0
        log.info("ae trained steps=%d in %.1fs (%.2f steps/s) step=%d", done, dt, done / max(dt, 1e-9), step)
    ae.eval()
    model_state = {k: v.detach().clone() for k, v in ae.state_dict().items()}  # a snapshot, not live tensors
    return {"step": step, "model": model_state, "optimizer": copy.deepcopy(opt.state_dict()), "losses": losses,
            "seed": seed, "lr": lr, "batch": batch, "schedule_steps": schedule_steps, "stopped": stopped}


@torch.no_grad()
def fit_latent_stats(ae: VideoAutoencoder, clips: ClipSource, n_batches: int, *, batch: int = 8,
                     seed: int = 12345) -> tuple[Tensor, Tensor]:
    """Set ``ae.latent_mean`` / ``ae.latent_std`` (per channel) from ``n_batches`` batches of ``clips``.

    Afterwards ``ae.encode`` returns latents of about zero mean and unit variance per channel.
    Returns (mean, std).  Runs on the model's device.
    """
    if n_batches < 1:
        raise ValueError(f"fit_latent_stats: n_batches={n_batches}: expected >= 1")
    was_training = ae.training
    ae.eval()
    device = ae.latent_mean.device
    s1 = torch.zeros_like(ae.latent_mean, dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    count = 0
    for i in range(n_batches):
        gen = torch.Generator().manual_seed(seed + i)
        z = ae.encode_raw(clips(batch, gen).to(device)).double()  # (B, F, C, h, w)
        zc = z.transpose(0, 2).reshape(z.shape[2], -1)  # (C, B*F*h*w)
        s1 += zc.sum(1)
        s2 += zc.square().sum(1)
        count += zc.shape[1]
    mean = s1 / count
    std = (s2 / count - mean.square()).clamp(min=1e-12).sqrt().clamp(min=1e-4)
    ae.latent_mean.copy_(mean.to(ae.latent_mean.dtype))
    ae.latent_std.copy_(std.to(ae.latent_std.dtype))
    ae.train(was_training)
    log.info("ae latent stats fitted batches=%d mean_abs=%.3f std_min=%.3f std_max=%.3f", n_batches,
             mean.abs().mean().item(), std.min().item(), std.max().item())
    return ae.latent_mean.clone(), ae.latent_std.clone()


@torch.no_grad()
def evaluate_autoencoder(ae: VideoAutoencoder, clips: ClipSource, n_batches: int = 4, *, batch: int = 8,
                         seed: int = 777) -> dict[str, float]:
    """Reconstruction quality on ``n_batches`` held-out batches (seeds apart from training's).

    Returns ``{"psnr_rgb": dB over covered pixels (alpha-weighted), "psnr_premult": dB of the
    premultiplied RGBA, "alpha_l1", "stream_max_diff": max |streamed - whole-clip decode|}``.
    """
    if n_batches < 1:
        raise ValueError(f"evaluate_autoencoder: n_batches={n_batches}: expected >= 1")
    was_training = ae.training
    ae.eval()
    device = ae.latent_mean.device
    se_rgb = cover = se_pre = n_pre = alpha_l1 = 0.0
    stream_diff = 0.0
    for i in range(n_batches):
        video = clips(batch, torch.Generator().manual_seed(seed + i)).to(device).float()
        z = ae.encode(video)
        recon = ae.decode(z).float()
        a = video[:, :, 3:4]
        se_rgb += float(((recon[:, :, :3] - video[:, :, :3]).square() * a).sum())
        cover += float(a.sum()) * 3
        pre_r = torch.cat([recon[:, :, :3] * recon[:, :, 3:4], recon[:, :, 3:4]], dim=2)
        pre_t = torch.cat([video[:, :, :3] * a, a], dim=2)
        se_pre += float((pre_r - pre_t).square().sum())
        n_pre += pre_t.numel()
        alpha_l1 += float((recon[:, :, 3:4] - a).abs().mean()) / n_batches
        if i == 0:
            dec = ae.decoder_stream()
            streamed = torch.cat([dec.step(z[:, j:j + 1]) for j in range(z.shape[1])], dim=1).float()
            stream_diff = float((streamed - recon).abs().max())
    ae.train(was_training)

    def psnr(se: float, n: float) -> float:
        return 10.0 * math.log10(1.0 / max(se / max(n, 1.0), 1e-12))

    return {"psnr_rgb": psnr(se_rgb, cover), "psnr_premult": psnr(se_pre, n_pre), "alpha_l1": alpha_l1,
            "stream_max_diff": stream_diff}


def disc_clips(height: int, width: int, frames: int, *, max_discs: int = 3) -> ClipSource:
    """A synthetic clip source: anti-aliased coloured discs moving over a transparent background.

    Returns ``clips(batch, generator) -> (batch, frames, 4, height, width)`` float RGBA in [0, 1],
    straight alpha; each disc is an opaque colour with a 1-pixel anti-aliased rim, composited
    back to front.  Used by tests and smoke runs so they do not depend on the procedural world.
    """
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5  # (H, 1)
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5  # (1, W)
    ts = torch.arange(frames, dtype=torch.float32)  # (T,)
    side = float(min(height, width))

    def clips(batch: int, generator: torch.Generator) -> Tensor:
        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator)

        n = max_discs
        present = rand(batch, n) < 0.7
        present[:, 0] = True  # at least one disc per clip
        radius = side * (0.12 + 0.2 * rand(batch, n))  # (B, n)
        cx, cy = width * rand(batch, n), height * rand(batch, n)
        vx, vy = side * 0.06 * (rand(batch, n) * 2 - 1), side * 0.06 * (rand(batch, n) * 2 - 1)
        colour = rand(batch, n, 3)
        px = cx[:, :, None] + vx[:, :, None] * ts  # (B, n, T)
        py = cy[:, :, None] + vy[:, :, None] * ts
        dist = ((xs - px[..., None, None]).square() + (ys - py[..., None, None]).square()).sqrt()  # (B, n, T, H, W)
        cover = (radius[:, :, None, None, None] - dist + 0.5).clamp(0.0, 1.0) * present[:, :, None, None, None]
        premult = torch.zeros(batch, frames, 3, height, width)
        alpha = torch.zeros(batch, frames, 1, height, width)
        for i in range(n):  # "over" compositing, disc 0 at the back
            a = cover[:, i, :, None]  # (B, T, 1, H, W)
            premult = colour[:, i, None, :, None, None] * a + premult * (1 - a)
            alpha = a + alpha * (1 - a)
        rgb = torch.where(alpha > 0, premult / alpha.clamp(min=1e-6), torch.zeros_like(premult))
        return torch.cat([rgb.clamp(0.0, 1.0), alpha], dim=2)

    return clips
