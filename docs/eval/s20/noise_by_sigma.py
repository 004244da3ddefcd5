"""How much of its input noise a DiT leaves in its clean-latent prediction at each sigma the samplers use
(session 20; session 19's noise_leak.py measured t = 1000 alone, on the model's own rollouts).

World clips (8, the first 2-latent chunk of each: the reference is their only context, as at a stream's start) are
noised to sigma with one draw eps; x0_hat = x - sigma * flow. beta = <x0_hat - x0, eps> / <eps, eps> is the share
of eps the prediction keeps, x0_mse the whole error. The best possible prediction (the posterior mean, which
training converges to) keeps (1 - sigma) / sigma * x0_mse of it, not 0 (its error is orthogonal to the input x,
and eps = (x - (1 - sigma) x0) / sigma); "excess" is what a model keeps beyond that: a real leak (a head that
cannot separate a patch's noise from its picture), where the rest of beta is the blur of a mean.

    PYTHONPATH=. python docs/eval/s20/noise_by_sigma.py MODEL CHECKPOINT PREDICTION   # MODEL: a preset or default
"""

import json
import sys

import torch

from backend.cli import _preset
from backend.config import load_config
from backend.model.generator import Generator
from backend.training import train as T

SIGMAS = (1.0, 0.9375, 0.8333, 0.625, 0.4, 0.2)  # shift 5's four (1000, 750, 500, 250 warped), then lower


def main() -> None:
    torch.set_grad_enabled(False)
    preset, ckpt, pred = sys.argv[1:4]
    overrides = (_preset(preset) if preset != "default" else {}) | {"model.device": "cpu",
                                                                   "model.dit.prediction": pred}
    if ckpt != "builtin":
        overrides["model.checkpoint"] = ckpt
    cfg = load_config(overrides=overrides)
    gen = Generator(cfg.model)
    dit, m = gen.dit, cfg.model
    pool = T.LatentPool(cfg, gen.autoencoder, 8, seed=4242, device=torch.device("cpu"))
    n = 2
    drawn = pool.batch(8, torch.Generator().manual_seed(0))
    batch = {k: v if k == "reference" else v[:, :n] for k, v in drawn.items()}
    batch["mouth"] = drawn["mouth"][:, :n * gen.autoencoder.cfg.temporal_factor]  # per video frame
    lat = batch["latents"].float()
    b = lat.shape[0]
    mask = T.block_causal_mask(n, n, m.window_frames, m.sink_frames > 0)
    out = {}
    for s in SIGMAS:
        eps = torch.randn(lat.shape, generator=torch.Generator().manual_seed(7))
        noisy = (1 - s) * lat + s * eps
        inp = T._sequence_inputs(dit, m, batch, torch.zeros_like(lat), noisy, torch.full((b, n), 1000 * s), 0,
                                 torch.full((b,), 1000 * m.context_noise))
        flow = dit.forward_train(**inp, attn_mask=mask).permute(0, 2, 1, 3, 4)[:, 1 + n:]
        err = noisy - s * flow - lat
        beta, mse = float((err * eps).sum() / (eps * eps).sum()), float((err ** 2).mean())
        # the best estimate (the posterior mean) keeps exactly (1 - sigma) / sigma * mse of eps: its error is
        # orthogonal to x, and eps = (x - (1 - sigma) x0) / sigma; what it keeps beyond that is a real leak
        out[str(s)] = {"beta": round(beta, 4), "x0_mse": round(mse, 4),
                       "excess": round(beta - (1 - s) / s * mse * float(eps.var()), 4)}
    print(json.dumps({"model": preset, "checkpoint": ckpt, "prediction": pred,
                      "latent_var": round(float(lat.var()), 3), "by_sigma": out}))


if __name__ == "__main__":
    main()
