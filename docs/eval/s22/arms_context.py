"""Does g64 draw an action's arms when its context is the world's frames, and when it is its own? (session 22)

A world clip around the start of ACTION (default heart): 8 latent frames from 2 before the switch, 2-latent
chunks, 1 step (x0 at sigma 1). Rows: the world; then per checkpoint ("PATH:PREDICTION:SHIFT") teacher-forced
(each chunk's context the world's earlier latents, re-noised to model.context_noise as the cache pass does) and
its own rollout (each chunk's context its own earlier x0, re-noised the same way). Columns: the last decoded
frame of each latent from the switch on, the middle half of the width.

    PYTHONPATH=. python docs/eval/s22/arms_context.py OUT.jpg [--action heart] [--guidance G] [--cache F.pt] [--model P]
        CKPT:PRED:SHIFT [...]

--steps N: the sampler's first N timesteps per chunk (x0 re-noised between, as the generator samples; the own rollout
is then ~N times slower: each chunk is sampled alone). --guidance G: the generator's action guidance f + G (f - f_idle)
on the frames it guides (the first model.guidance_frames latents of the action); --cache: keep the world window in
F.pt (the pool renders ~9 min).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.actions import ACTION_INDEX
from backend.cli import _preset
from backend.config import load_config
from backend.model.generator import Generator
from backend.model.sampler import FlowMatchSchedule
from backend.training import train as T


def _rgb(frame: torch.Tensor) -> np.ndarray:
    w = frame.shape[-1]
    y = frame[..., w // 4:w - w // 4].permute(1, 2, 0).float().numpy()
    a = y[..., 3:4]
    return np.clip(y[..., :3] * a + 0.66 * (1 - a), 0, 1)


def strip(ae, lat: torch.Tensor, n: int) -> np.ndarray:
    """One row of the picture: the last decoded frame of each of the ``n`` latents ``lat`` from the third on."""
    video = ae.decode(lat, which="mid")[0]  # (n*tf, 4, H, W)
    tf = video.shape[0] // n
    return np.concatenate([_rgb(video[(k + 1) * tf - 1]) for k in range(2, n)], 1)


def save_rows(path: str, rows: list[np.ndarray]) -> None:
    Image.fromarray((np.concatenate(rows, 0) * 255).astype(np.uint8)).save(path, quality=90)


def _overrides(model: str) -> dict:
    return {} if model == "default" else _preset(model)


def _load(spec: str, model: str) -> Generator:
    ckpt, pred, shift = spec.split(":")
    cfg = load_config(overrides=_overrides(model) | {"model.device": "cpu", "model.checkpoint": ckpt,
                                                             "model.dit.prediction": pred, "model.shift": float(shift)})
    return Generator(cfg.model)


def _window(pool: T.LatentPool, action: int, n: int) -> dict[str, torch.Tensor]:
    acts = pool.actions
    for i in range(len(acts)):
        starts = [j for j in range(2, acts.shape[1] - n + 3) if acts[i, j] == action and acts[i, j - 1] != action]
        if starts:
            s = starts[0] - 2
            tf = pool.mouth.shape[1] // acts.shape[1]
            out = {k: getattr(pool, k)[i:i + 1, s:s + n] for k in
                   ("latents", "actions", "emotions", "progress", "emotion_progress", "since")}
            out["reference"] = pool.reference[i:i + 1]
            out["mouth"] = pool.mouth[i:i + 1, s * tf:(s + n) * tf]
            return out
    raise SystemExit("no clip in the pool shows that action's start")


def rows(gen: Generator, batch: dict[str, torch.Tensor], n: int, chunk: int, guidance: float = 0.0,
         steps: int = 1) -> list[torch.Tensor]:
    dit, m = gen.dit, gen.cfg
    lat = batch["latents"].float()
    mask = T.block_causal_mask(n, chunk, m.window_frames, m.sink_frames > 0)
    torch.manual_seed(7)
    z = torch.randn(lat.shape)
    eps = torch.randn(lat.shape)
    s_ctx = m.context_noise
    t_ctx = torch.full((1,), 1000 * s_ctx)
    neg = ACTION_INDEX[m.guidance_negative]
    guided = ((batch["since"] < m.guidance_frames) & (batch["actions"] != neg)).view(1, n, 1, 1, 1)
    idle = dict(batch, actions=torch.full_like(batch["actions"], neg))
    sched = FlowMatchSchedule(shift=m.shift)
    ts = sched.warp_list(m.timesteps[:steps])
    renoise = torch.Generator().manual_seed(11)

    def flow_of(ctx: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        def flow(b: dict[str, torch.Tensor]) -> torch.Tensor:
            inp = T._sequence_inputs(dit, m, b, ctx, noisy, t, 0, t_ctx)
            return dit.forward_train(**inp, attn_mask=mask).permute(0, 2, 1, 3, 4)[:, 1 + n:]

        f = flow(batch)
        return torch.where(guided, f + guidance * (f - flow(idle)), f) if guidance > 0 else f

    def x0_of(ctx: torch.Tensor) -> torch.Tensor:  # every chunk's x0 after `steps` steps; chunk k sees frames < k
        if steps == 1:  # one pass serves every chunk (the mask)
            return z - flow_of(ctx, z, torch.full((1, n), 1000.0))
        out = torch.zeros_like(lat)
        for k in range(0, n, chunk):
            x = z.clone()
            for i, tv in enumerate(ts):  # the sampler's steps: x0 = x - sigma * flow, then re-noised to the next
                x0 = sched.to_x0_at(x, flow_of(ctx, x, torch.full((1, n), float(tv))), float(tv))
                if i + 1 < len(ts):
                    x = sched.renoise(x0, torch.randn(x0.shape, generator=renoise), ts[i + 1]).float()
            out[:, k:k + chunk] = x0[:, k:k + chunk]
        return out

    ctx = (1 - s_ctx) * lat + s_ctx * eps
    forced = x0_of(ctx)  # the world's context
    own = torch.zeros_like(lat)
    for k in range(0, n, chunk):  # its own: each chunk's x0 becomes the next chunks' context
        pred = x0_of(ctx)
        own[:, k:k + chunk] = pred[:, k:k + chunk]
        ctx[:, k:k + chunk] = (1 - s_ctx) * pred[:, k:k + chunk] + s_ctx * eps[:, k:k + chunk]
    return [forced, own]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("specs", nargs="+")
    p.add_argument("--action", default="heart")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--guidance", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=1,
                   help="the sampler's steps (model.timesteps[:steps], re-noised between)")
    p.add_argument("--cache")
    p.add_argument("--model", default="liveidol-g64", help="the preset the checkpoints take ('default': none)")
    a = p.parse_args()
    torch.set_grad_enabled(False)
    n, chunk = 8, 2
    first = _load(a.specs[0], a.model)
    if a.cache and Path(a.cache).exists():
        batch = torch.load(a.cache)
    else:
        pool = T.LatentPool(load_config(overrides=_overrides(a.model) | {"model.device": "cpu"}),
                            first.autoencoder, 96, seed=a.seed, device=torch.device("cpu"))
        batch = _window(pool, ACTION_INDEX[a.action], n)
        if a.cache:
            torch.save(batch, a.cache)
    ae = first.autoencoder
    strips = [strip(ae, batch["latents"].float(), n)]
    for spec in a.specs:
        gen = first if spec == a.specs[0] else _load(spec, a.model)
        strips += [strip(ae, x, n) for x in rows(gen, batch, n, chunk, a.guidance, a.steps)]
    save_rows(a.out, strips)


if __name__ == "__main__":
    main()
