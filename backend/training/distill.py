"""`liveidol train distill`: make 1 and 2 sampling steps first-class by distilling the 4-step sampler.

The live engine drops to 1 step (and 1-latent chunks) to hold real time on a small CPU; the 1-step picture
of a model trained only with flow matching is the model's mean guess for the chunk: soft, noisy, and less
sure to follow a command. This stage trains the SAME weights (a student, started from the teacher) so that
the engine's 1- and 2-step schedules land where the teacher's guided 4-step sampler lands, while 3 and 4
steps stay as good.

Design (trajectory distillation onto the sampler's end point, with the context the cache shows):

* **Sequences as the dit stage builds them**: ``[reference, context, noisy]`` with the block-causal mask of
  the streaming cache (``block_causal_mask``), chunk size 1 or up to ``model.chunk_frames``, the context
  re-noised to exactly the serve-time ``model.context_noise`` (as the generator's cache pass writes it),
  random temporal offsets. Every chunk of the noisy copy sees only ground-truth context, so every chunk of a
  clip is sampled at once: one teacher forward per sampler step serves all of them.
* **The teacher** is the frozen imported DiT (``dit_ema`` of the run), no grad, bf16 autocast on CUDA,
  compiled blocks and flex attention as in the dit stage. It runs the generator's sampler
  (``backend.model.sampler.sample_chunk``): x0-prediction at each warped timestep of the 4-step schedule,
  re-noise to the next, with the generator's action guidance (``f + g (f - f_idle)``) on the chunks the
  generator guides: the first ``model.guidance_frames`` latent frames of an action other than
  ``model.guidance_negative``. Its final x0 is the target. ``--teacher-steps N`` (N < 4) stops the teacher
  after N steps where its later steps add more than they clear (an undistilled DiT whose later steps speckle
  the picture, as the g64 grid's does: session 20); the later states are then that end point re-noised, so
  the student draws the N-step picture at every step count.
* **Which noise**: the x0 predicted at t=1000 (sigma 1: the input is pure noise) carries no information
  about that noise, so in the engine's sampler the sample is decided by the RE-noising draws, not by the
  initial noise. A 1-step student must instead turn its input noise ``z`` into the sample. The teacher's
  trajectory is therefore driven by ``z`` alone: initial noise ``z``, re-noising draws ``z``, ``P z``,
  ``P^2 z`` (``P`` rolls the latent channels: each draw is still standard normal per element, so the
  teacher samples as it does at serve time), which makes its end point a deterministic function of ``z``
  the student can learn (a fresh draw per step would leave the student the average over them, blurred).
* **The student** (the trained weights, no guidance pass) is regressed, in x0 space, onto the teacher's end
  point from the teacher's state at each step of the schedule: from ``z`` at t=1000 (what 1-step sampling
  sees), from the step-2 state at the second timestep (the last call of 2-step sampling), and from the
  step-3/4 states (3 and 4 steps keep their end point: at the last state the target is the teacher's own
  prediction). 1 and 2 steps get most of the draws (``STATE_SHARE``). Because the target is the GUIDED
  teacher while the student runs unguided, the guidance is distilled into the weights: the exported
  checkpoint says so (``guidance_distilled``) and the generator then skips the idle pass
  (``model.distilled_guidance = "skip"``), which halves the cost of an action's first chunks, or runs it on
  top (``"apply"``) for comparison.
* **Regulariser**: a share (``FLOW_SHARE``) of the chunks keep the dit stage's flow-matching loss on world
  data (random timesteps), so identity, actions and emotions stay anchored to the world rather than only
  to the teacher. The first second after a command is weighed up as in the dit stage.
* An EMA of the student (decay ``EMA_DECAY``, short: the stage runs hundreds of steps, not tens of
  thousands) is what ``export`` writes.

Run state (resumable like the other stages): ``distill_model.safetensors`` / ``distill_ema.safetensors``
(fp16) and ``distill_state.json`` (``distill_step``, the teacher's ``dit_step``); the teacher stays in
``dit_ema.safetensors``. ``liveidol train export`` writes the distilled student with ``distill_step``,
``guidance_distilled`` and what was distilled in the checkpoint's training metadata; ``import`` of such a
checkpoint keeps them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from backend.actions import ACTION_INDEX, EMOTION_INDEX, EMOTIONS
from backend.config import Config, ModelConfig
from backend.model.attention import FlexAttention
from backend.model.dit import EXTRA_PREFIXES, CausalDiT
from backend.model.generator import distilled_pushes, emotion_pushes
from backend.model.sampler import FlowMatchSchedule

__all__ = ["DistillBatch", "distill_loss", "resume_state", "student_x0", "teacher_trajectory", "train_distill_stage",
           "trajectory_noise"]

log = logging.getLogger(__name__)

TEACHER_STEPS = 4  # the teacher's sampler: the first 4 of model.timesteps
STATE_SHARE = (0.4, 0.3, 0.15, 0.15)  # which teacher state a distilled chunk starts from: t1 (1 step), t2 (2 steps), t3, t4
FLOW_SHARE = 0.25  # chunks trained with the plain flow-matching loss on world data
FLOW_WEIGHT = 0.25  # its weight beside the x0 distillation loss (flow errors run ~4x x0 errors at high noise)
EMA_DECAY = 0.995
LR = 2e-4
WARMUP = 50


def trajectory_noise(z: Tensor, steps: int) -> list[Tensor]:
    """The noise of each sampler step for a trajectory driven by ``z`` ``(B, F, C, h, w)``: ``[z, z, Pz, P^2 z]``
    (the initial noise, then one re-noising draw per later step); ``P`` rolls the channel axis by one."""
    out = [z]
    for i in range(1, steps):
        out.append(torch.roll(z, shifts=i - 1, dims=2))
    return out


@dataclass
class DistillBatch:
    """One training sequence's inputs besides the noisy frames: what teacher and student share."""

    inputs: dict[str, Tensor]  # _sequence_inputs(...) of the teacher (x's noisy part is replaced per call)
    student_context: Tensor  # (B, 1+2n, L, D): the student's own conditioning embedding
    idle_context: Tensor  # (B, n, L, D): the teacher's embedding of the noisy frames under the guidance negative
    guided: Tensor  # (B, n) bool: frames the generator guides
    n: int
    mask: Tensor
    flex: FlexAttention | None = None
    neutral_context: Tensor | None = None  # (B, n, L, D): the noisy frames' embedding under the neutral emotion
    push: Tensor | None = None  # (B, n) float: the emotion guidance's push on each frame; None: no frame pushed


def _guided_frames(actions: Tensor, since: Tensor, chunk: int, cfg: ModelConfig) -> Tensor:
    """(B, n) bool: the frames of chunks the generator would guide: the chunk's first frame plays an action
    other than the guidance negative, younger than ``guidance_frames`` latent frames (any age when that is 0)."""
    b, n = actions.shape
    if cfg.guidance <= 0:
        return torch.zeros(b, n, dtype=torch.bool, device=actions.device)
    first = torch.arange(n, device=actions.device) // chunk * chunk  # each frame's chunk start
    a0, s0 = actions[:, first], since[:, first]
    young = s0 < cfg.guidance_frames if cfg.guidance_frames else torch.ones_like(a0, dtype=torch.bool)
    return (a0 != ACTION_INDEX[cfg.guidance_negative]) & young


def _pushed_frames(emotions: Tensor, chunk: int, pushes: dict[str, float]) -> Tensor:
    """(B, n) float: the emotion guidance's push on each frame, as the generator pushes a chunk: by the emotion of
    the chunk's first frame (``pushes``: :func:`backend.model.generator.emotion_pushes`; others 0)."""
    n = emotions.shape[1]
    table = torch.tensor([pushes.get(e, 0.0) for e in EMOTIONS], device=emotions.device)
    first = torch.arange(n, device=emotions.device) // chunk * chunk
    return table[emotions[:, first]]


def _flow(dit: CausalDiT, db: DistillBatch, noisy: Tensor, t_noisy: Tensor, context: Tensor | None = None) -> Tensor:
    """(B, n, C, h, w) flow of the noisy frames; ``context`` replaces the whole conditioning embedding."""
    return _flows(dit, db, noisy, t_noisy, [context])[0]


def _flows(dit: CausalDiT, db: DistillBatch, noisy: Tensor, t_noisy: Tensor, contexts: list[Tensor | None]) -> list[Tensor]:
    """:func:`_flow` under each of ``contexts`` (None: the sequence's own conditioning) in ONE call on the batch
    stacked that many times: the teacher's guided step is one launch of every kernel, not three (the steps on
    a GPU are bound by launches at these sizes, not by arithmetic)."""
    k, inp = len(contexts), db.inputs
    x = inp["x"].permute(0, 2, 1, 3, 4)  # (B, F, C, h, w)
    x = torch.cat([x[:, :1 + db.n], noisy.to(x.dtype)], dim=1)
    t = torch.cat([inp["t"][:, :1 + db.n], t_noisy], dim=1)
    ctx = torch.cat([inp["context"] if c is None else c for c in contexts])
    controls = inp["controls"]

    def stacked(v: Tensor) -> Tensor:
        return v.repeat(k, *([1] * (v.dim() - 1))) if k > 1 else v

    out = dit.forward_train(stacked(x).permute(0, 2, 1, 3, 4), stacked(t), ctx,
                            controls=None if controls is None else stacked(controls), frame_pos=inp["frame_pos"],
                            attn_mask=db.mask, flex=db.flex)
    return list(out.permute(0, 2, 1, 3, 4)[:, 1 + db.n:].float().chunk(k))


@torch.no_grad()
def teacher_trajectory(teacher: CausalDiT, db: DistillBatch, z: Tensor, cfg: ModelConfig, sched: FlowMatchSchedule,
                       *, guidance: float, noise: list[Tensor] | None = None,
                       steps: int = TEACHER_STEPS) -> tuple[list[Tensor], Tensor]:
    """The teacher's guided sampler on every chunk at once: ``(states, x0)``: the input of each of the
    ``TEACHER_STEPS`` sampler calls (``states[0]`` is ``z``) and the final x0, float32 ``(B, n, C, h, w)``.

    ``steps`` < ``TEACHER_STEPS``: the teacher samples with its first ``steps`` timesteps (the engine's
    ``steps``-step sampler) and the later states are its end point re-noised to the later timesteps with the
    trajectory's later draws, so a student regressed onto that end point from every state draws the
    ``steps``-step picture at every step count (each of its calls re-noises what the last one predicted).

    Step for step what ``sample_chunk`` with the generator's flow does (x0 by the nearest training sigma,
    re-noise by ``t_next / 1000``, action guidance ``+ g (f - f_idle)`` on the guided frames only, emotion guidance
    ``+ w (f - f_neutral)`` with ``db.push``'s ``w`` per frame), with the noise of :func:`trajectory_noise` (or
    ``noise``: the initial noise and each re-noising draw, explicitly)."""
    if not 1 <= steps <= TEACHER_STEPS:
        raise ValueError(f"teacher steps: 1 to {TEACHER_STEPS}, got {steps}")
    ts = sched.warp_list(cfg.timesteps[:TEACHER_STEPS])
    noise = trajectory_noise(z.float(), len(ts)) if noise is None else [e.float() for e in noise]
    b, n = z.shape[:2]
    idle_ctx = calm_ctx = None
    if guidance > 0 and bool(db.guided.any()):  # the idle pass runs on every row: one shape for the compiled blocks
        idle_ctx = db.inputs["context"].clone()
        idle_ctx[:, 1 + n:] = db.idle_context
    if db.push is not None and db.neutral_context is not None:
        calm_ctx = db.inputs["context"].clone()
        calm_ctx[:, 1 + n:] = db.neutral_context
    states, x, x0 = [], noise[0], noise[0]
    for i, tv in enumerate(ts[:steps]):
        states.append(x)
        t = torch.full((b, n), tv, device=z.device)
        cond, *others = _flows(teacher, db, x, t, [None, *(c for c in (idle_ctx, calm_ctx) if c is not None)])
        flow = cond
        if idle_ctx is not None:
            uncond = others.pop(0)
            flow = torch.where(db.guided.view(b, n, 1, 1, 1), flow + guidance * (cond - uncond), flow)
        if calm_ctx is not None:
            assert db.push is not None
            flow = flow + db.push.view(b, n, 1, 1, 1) * (cond - others.pop(0))
        sigma = float(sched.sigma_nearest(torch.tensor([tv], dtype=torch.float32))[0])
        x0 = (x.double() - sigma * flow.double()).float()
        if i + 1 < steps:
            s_next = ts[i + 1] / sched.num_train_steps
            x = (1 - s_next) * x0 + s_next * noise[i + 1]
    for i in range(steps, len(ts)):  # the end point re-noised, as a student's later calls re-noise its own
        s_i = ts[i] / sched.num_train_steps
        states.append((1 - s_i) * x0 + s_i * noise[i])
    return states, x0


def student_x0(student: CausalDiT, db: DistillBatch, x: Tensor, t: Tensor, sched: FlowMatchSchedule) -> Tensor:
    """The student's (unguided) x0 prediction ``x - sigma(t) * flow`` for noisy frames ``x`` at ``t`` (B, n)."""
    flow = _flow(student, db, x, t, context=db.student_context)
    sigma = sched.sigma_nearest(t).float().view(*t.shape, 1, 1, 1)
    return x.float() - sigma * flow


def distill_loss(student: CausalDiT, db: DistillBatch, states: list[Tensor], target: Tensor, world: Tensor,
                 chunk: int, sched: FlowMatchSchedule, cfg: ModelConfig, gen: torch.Generator, noise_gen: torch.Generator,
                 weight: Tensor, *, flow_share: float = FLOW_SHARE,
                 state_share: tuple[float, ...] = STATE_SHARE) -> tuple[Tensor, dict[str, float]]:
    """The student's loss on one sequence: per chunk either x0 regression onto the teacher's end point
    ``target`` from a teacher state (picked by ``state_share``), or (``flow_share`` of the chunks) the
    flow-matching loss on the ``world`` latents at a random timestep. ``weight`` (B, n) weighs frames."""
    from backend.training.train import _randn, _sample_t

    b, n = target.shape[:2]
    device = target.device
    n_chunks = math.ceil(n / chunk)
    ts = torch.tensor(sched.warp_list(cfg.timesteps[:len(states)]), device=device)
    probs = torch.tensor(state_share[:len(states)], dtype=torch.float32)
    k = torch.multinomial(probs / probs.sum(), b * n_chunks, replacement=True, generator=gen).view(b, n_chunks)
    use_flow = torch.rand(b, n_chunks, generator=gen) < flow_share
    t_fm = _sample_t(n_chunks, b, cfg, sched, gen)

    def frame(v: Tensor) -> Tensor:  # (B, n_chunks) -> (B, n)
        return v.to(device).repeat_interleave(chunk, dim=1)[:, :n]

    k_f, fm_f = frame(k), frame(use_flow)
    stacked = torch.stack(states, dim=0)  # (S, B, n, C, h, w)
    x_d = torch.gather(stacked, 0, k_f.view(1, b, n, 1, 1, 1).expand(1, *stacked.shape[1:]))[0]
    t_d = ts[k_f]
    sigma_fm = (frame(t_fm) / sched.num_train_steps).view(b, n, 1, 1, 1)
    eps = _randn(world.shape, noise_gen).to(device)
    x_fm = (1 - sigma_fm) * world.float() + sigma_fm * eps
    x_in = torch.where(fm_f.view(b, n, 1, 1, 1), x_fm, x_d)
    t_in = torch.where(fm_f, frame(t_fm).float(), t_d.float())
    flow = _flow(student, db, x_in, t_in, context=db.student_context)
    sigma = sched.sigma_nearest(t_in).float().view(b, n, 1, 1, 1)
    x0 = x_in.float() - sigma * flow
    err_d = (x0 - target).square().mean(dim=(2, 3, 4))  # (B, n)
    err_f = (flow - (eps - world.float())).square().mean(dim=(2, 3, 4))
    w_d, w_f = weight * (~fm_f).float(), weight * fm_f.float() * FLOW_WEIGHT
    loss = (err_d * w_d).sum() / w_d.sum().clamp_min(1e-6) + (err_f * w_f).sum() / weight.sum().clamp_min(1e-6)
    with torch.no_grad():
        one = (k_f == 0) & ~fm_f
        stats = {"x0_err": float((err_d * w_d).sum() / w_d.sum().clamp_min(1e-6)),
                 "x0_err_1step": float(err_d[one].mean()) if one.any() else float("nan"),
                 "flow_err": float(err_f[fm_f].mean()) if fm_f.any() else float("nan")}
    return loss, stats


def build_batch(teacher: CausalDiT, student: CausalDiT, cfg: ModelConfig, batch: dict[str, Tensor], chunk: int,
                offset: int, noise_gen: torch.Generator, flex: FlexAttention | None,
                pushes: dict[str, float] | None = None) -> DistillBatch:
    """The shared inputs of one sequence: clean world context re-noised to the serve-time context noise;
    ``pushes`` (emotion -> w) the emotion guidance the teacher samples with (None: none)."""
    from backend.training.train import _noised_context, _sequence_inputs, block_causal_mask

    lat = batch["latents"].float()
    b, n = lat.shape[:2]
    device = lat.device
    sigma_ctx = torch.full((b,), cfg.context_noise, device=device)
    context, t_context = _noised_context(lat, sigma_ctx, noise_gen)
    placeholder = torch.zeros_like(lat)
    t_placeholder = torch.zeros(b, n, device=device)
    with torch.no_grad():
        inputs = _sequence_inputs(teacher, cfg, batch, context, placeholder, t_placeholder, offset, t_context)
        neg = torch.full((b * n,), ACTION_INDEX[cfg.guidance_negative], dtype=torch.long, device=device)
        idle_context = teacher.build_context(neg, batch["emotions"].flatten()).unflatten(0, (b, n))
        push = _pushed_frames(batch["emotions"], chunk, pushes) if pushes else None
        neutral_context = None
        if push is not None and bool((push > 0).any()):  # else no neutral pass: nothing in the sequence is pushed
            neutral = torch.full((b * n,), EMOTION_INDEX["neutral"], dtype=torch.long, device=device)
            neutral_context = teacher.build_context(batch["actions"].flatten(), neutral).unflatten(0, (b, n))
        else:
            push = None
    student_inputs = _sequence_inputs(student, cfg, batch, context, placeholder, t_placeholder, offset, t_context)
    mask = block_causal_mask(n, chunk, cfg.window_frames, cfg.sink_frames > 0, device)
    return DistillBatch(inputs=inputs, student_context=student_inputs["context"], idle_context=idle_context,
                        guided=_guided_frames(batch["actions"], batch["since"], chunk, cfg), n=n, mask=mask, flex=flex,
                        neutral_context=neutral_context, push=push)


def train_distill_stage(cfg: Config, run: Any, deadline: float, device: torch.device, *, kernel: str = "auto",
                        compile: bool | None = None, teacher_steps: int | None = None) -> None:
    """Distil the run's teacher (``dit_ema``) into a student until ``deadline``, resuming ``distill_*``.
    ``teacher_steps``: how many of its sampler's steps the teacher's end point takes (None: what the run was
    started with, else ``TEACHER_STEPS``); a run goes on with the count it started with."""
    from backend.model.checkpoint import load_into
    from backend.training.train import (
        ACTION_START_LATENTS,
        LatentPool,
        _load_autoencoder,
        _randn,
        _random_offset,
        optimizer_step,
        time_for_a_step,
        training_kernels,
    )

    mcfg = cfg.model
    meta = run.meta()
    teacher_weights = run.load_weights("dit_ema.safetensors")
    if teacher_weights is None:
        raise SystemExit(f"{run.path}/dit_ema.safetensors missing: seed the run with `liveidol train import --run "
                         f"{run.path}` (the shipped weights) or train the dit stage first")
    if len(mcfg.timesteps) < TEACHER_STEPS:
        raise SystemExit(f"model.timesteps has {len(mcfg.timesteps)} values: distillation needs the "
                         f"{TEACHER_STEPS}-step schedule")
    state_path = run.path / "distill_state.json"
    dstate = json.loads(state_path.read_text()) if state_path.exists() else {}
    teacher_step = int(meta.get("step", 0))
    if dstate and int(dstate.get("teacher_step", -1)) != teacher_step:
        raise SystemExit(f"{run.path}: the distilled student was made from the teacher at dit step "
                         f"{dstate.get('teacher_step')}, the run's DiT is now at step {teacher_step}; distil in a new "
                         "run directory (`liveidol train import`)")
    recorded_steps = int(dstate["teacher_steps"]) if "teacher_steps" in dstate else None
    if teacher_steps is not None and recorded_steps is not None and teacher_steps != recorded_steps:
        raise SystemExit(f"{state_path}: the student is being distilled onto the teacher's {recorded_steps}-step end "
                         f"point, not {teacher_steps}: go on with --teacher-steps {recorded_steps}, or distil in a new "
                         "run directory")
    n_teacher = teacher_steps or recorded_steps or TEACHER_STEPS
    if not 1 <= n_teacher <= TEACHER_STEPS:
        raise SystemExit(f"--teacher-steps: 1 to {TEACHER_STEPS}, got {n_teacher}")
    step = int(dstate.get("distill_step", 0))
    resumed_at = step
    # a teacher whose guidance was distilled already runs unguided, as the generator runs it
    teacher_guided = not meta.get("guidance_distilled", False)
    guidance = mcfg.guidance if teacher_guided else 0.0
    # the emotion guidance likewise: folded in unless the teacher has it folded in already
    # (a run goes on with the pushes it started with, whatever the config says now)
    prior_pushes = distilled_pushes(meta)
    if prior_pushes:
        pushes = {}
    elif dstate:
        pushes = distilled_pushes(dstate)
    else:
        pushes = {e: w for e, w in emotion_pushes(mcfg).items() if w > 0}
    ae = _load_autoencoder(cfg, run, device)
    teacher = CausalDiT(mcfg.dit)
    load_into(teacher, teacher_weights, source=str(run.path / "dit_ema.safetensors"), what="dit",
              optional_prefixes=EXTRA_PREFIXES)
    student = copy.deepcopy(teacher)
    sw, ew = run.load_weights("distill_model.safetensors"), run.load_weights("distill_ema.safetensors")
    if sw is not None:
        load_into(student, sw, source=str(run.path / "distill_model.safetensors"), what="dit",
                  optional_prefixes=EXTRA_PREFIXES)
    teacher.to(device).eval().requires_grad_(False)
    student.to(device).train()
    ema = copy.deepcopy(student).requires_grad_(False)
    if ew is not None:
        load_into(ema, ew, source=str(run.path / "distill_ema.safetensors"), what="dit",
                  optional_prefixes=EXTRA_PREFIXES)
    cuda = device.type == "cuda"
    flex, compile = training_kernels(kernel, compile, device, student, teacher)
    gen = torch.Generator().manual_seed(mcfg.seed + 7919 + step)
    noise_gen = torch.Generator(device).manual_seed(mcfg.seed + 7919 + step)
    pool = LatentPool(cfg, ae, 1024 if cuda else 8, seed=11 + step, device=device)
    sched = FlowMatchSchedule(shift=mcfg.shift)
    opt = torch.optim.AdamW(student.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=0.0, fused=cuda or None)
    batch_size = 32 if cuda else 2
    log.info("distill start step=%d teacher_step=%d teacher_steps=%d guidance=%.2f (teacher %s) emotion_pushes=%s "
             "kernel=%s compiled=%s batch=%d", step, teacher_step, n_teacher, guidance,
             "guided" if teacher_guided else "already distilled",
             pushes or (f"already distilled {prior_pushes}" if prior_pushes else "none"), "flex" if flex else "sdpa",
             compile, batch_size)
    losses: list[float] = []
    stats_acc: list[dict[str, float]] = []
    step_times: list[float] = []
    t_start = time.monotonic()
    while True:
        if not time_for_a_step(step_times, deadline):
            break
        t0 = time.monotonic()
        batch = pool.batch(batch_size, gen)
        chunk = int(torch.randint(1, mcfg.chunk_frames + 1, (1,), generator=gen).item())
        offset = _random_offset(gen)
        with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
            db = build_batch(teacher, student, mcfg, batch, chunk, offset, noise_gen, flex, pushes)
            z = _randn(batch["latents"].shape, noise_gen).to(device)
            states, target = teacher_trajectory(teacher, db, z, mcfg, sched, guidance=guidance, steps=n_teacher)
            weight = 1.0 + 2.0 * (batch["since"] < ACTION_START_LATENTS).float()
            loss, stats = distill_loss(student, db, states, target, batch["latents"], chunk, sched, mcfg, gen,
                                       noise_gen, weight)
        lr = LR * min(1.0, (step - resumed_at + 1) / WARMUP)
        optimizer_step(opt, student, ema, loss, lr=lr, step=step, ema_decay=EMA_DECAY)
        step += 1
        losses.append(loss.item())
        stats_acc.append(stats)
        step_times.append(time.monotonic() - t0)
        if step % 50 == 0 or step == resumed_at + 1:
            last = stats_acc[-50:]
            mean = {k: sum(s[k] for s in last if s[k] == s[k]) / max(1, sum(1 for s in last if s[k] == s[k]))
                    for k in last[0]}
            log.info("distill step=%d loss=%.4f x0_err=%.4f x0_err_1step=%.4f flow_err=%.4f lr=%.2e step_ms=%.0f",
                     step, sum(losses[-50:]) / len(losses[-50:]), mean["x0_err"], mean["x0_err_1step"],
                     mean["flow_err"], lr, 1000 * sum(step_times[-50:]) / len(step_times[-50:]))
            run.log(stage="distill", step=step, loss=sum(losses[-50:]) / len(losses[-50:]), **mean)
    run.save_weights("distill_model.safetensors", _plain_state(student))
    run.save_weights("distill_ema.safetensors", _plain_state(ema))
    state_path.write_text(json.dumps({"distill_step": step, "teacher_step": teacher_step,
                                      "guidance_distilled": (teacher_guided and mcfg.guidance > 0)
                                      or bool(meta.get("guidance_distilled", False)),
                                      "guidance": mcfg.guidance if teacher_guided else meta.get("guidance", 0.0),
                                      "guidance_frames": mcfg.guidance_frames,
                                      "emotion_guidance_distilled": pushes or prior_pushes,
                                      "teacher_steps": n_teacher}))
    log.info("distill saved step=%d steps_this_call=%d seconds=%.0f last_loss=%.4f", step, step - resumed_at,
             time.monotonic() - t_start, sum(losses[-50:]) / max(1, len(losses[-50:])))


def _plain_state(dit: CausalDiT) -> dict[str, Tensor]:
    """The state dict with compiled blocks' keys as the eager model's (compile in place keeps them; checked)."""
    state = dit.state_dict()
    return {k.replace("._orig_mod", ""): v for k, v in state.items()}


def export_metadata(run_path: Any) -> dict[str, Any] | None:
    """The training metadata an export of a distilled run adds, or None when the run has no student."""
    p = run_path / "distill_state.json"
    if not p.exists():
        return None
    s = json.loads(p.read_text())
    return {"distill_step": int(s["distill_step"]), "guidance_distilled": bool(s.get("guidance_distilled", False)),
            "emotion_guidance_distilled": distilled_pushes(s),
            "distilled": {"teacher_steps": int(s.get("teacher_steps", TEACHER_STEPS)), "student_steps": [1, 2, 3, 4],
                          "teacher_dit_step": int(s["teacher_step"]), "guidance": float(s.get("guidance", 0.0)),
                          "guidance_frames": int(s.get("guidance_frames", 0))}}


def resume_state(training: dict[str, Any], source: str) -> dict[str, Any]:
    """The ``distill_state.json`` a run resumes from, read back from the training metadata of a distilled export
    (``source`` names it in the error; the inverse of :func:`export_metadata`): how to go on distilling a student
    shipped in an earlier session."""
    d = training.get("distilled") or {}
    if "distill_step" not in training or "teacher_dit_step" not in d:
        raise SystemExit(f"{source}: not a distilled checkpoint (no distill_step in its training metadata): give the "
                         "student written by `liveidol train export` of a distill run")
    return {"distill_step": int(training["distill_step"]), "teacher_step": int(d["teacher_dit_step"]),
            "guidance_distilled": bool(training.get("guidance_distilled", False)),
            "guidance": float(d.get("guidance", 0.0)), "guidance_frames": int(d.get("guidance_frames", 0)),
            "emotion_guidance_distilled": distilled_pushes(training),
            "teacher_steps": int(d.get("teacher_steps", TEACHER_STEPS))}
