"""How much of its input noise a DiT leaves in its picture (session 19).

At the first sampling step (t = 1000) the DiT's input is pure noise eps, and the clean latents it should predict
do not depend on that draw, so the x0 the sampler takes, x0 = eps - flow, should hold none of it. The regression
coefficient beta = <x0 - mean, eps> / <eps, eps> over a rollout (every chunk's first call) measures what it keeps:
0 ideally, 1 if the head handed back none of the noise. A flow head that has to carry the noise of a patch as wide
as the DiT leaves it in the picture.

    PYTHONPATH=. python docs/eval/s19/noise_leak.py [--model liveidol-g64] [--checkpoint F] [--set KEY=VALUE ...]
"""

import argparse
import json

import numpy as np
import torch

from backend.cli import _parse_set, _preset
from backend.config import load_config
from backend.model import generator as generator_module
from backend.model.generator import Conditions, Generator
from backend.world.character import load_character
from backend.world.reference import reference_frame


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--checkpoint")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--chunks", type=int, default=24)
    args = ap.parse_args()
    overrides = {**_preset(args.model), **_parse_set(args.set, {}), "model.device": "cpu"}
    if args.checkpoint:
        overrides["model.checkpoint"] = args.checkpoint
    cfg = load_config(overrides=overrides)
    gen = Generator(cfg.model)
    sums = {"x0_eps": 0.0, "eps_eps": 0.0, "x0_x0": 0.0}
    original = generator_module.sample_chunk

    def measured(flow_fn, noise, timesteps, schedule, generator, **kw):  # type: ignore[no-untyped-def]
        t = torch.full(noise.shape[:2], 1000.0)
        flow = flow_fn(noise, t, 1000.0).float()  # the generator's flow_fn takes the host value too
        x0 = noise.float() - flow
        x0 = x0 - x0.mean(dim=(0, 1, 3, 4), keepdim=True)  # per channel
        sums["x0_eps"] += float((x0 * noise.float()).sum())
        sums["eps_eps"] += float(noise.float().pow(2).sum())
        sums["x0_x0"] += float(x0.pow(2).sum())
        return original(flow_fn, noise, timesteps, schedule, generator, **kw)

    generator_module.sample_chunk = measured
    aiko = load_character("aiko")
    gen.reset(reference_frame(aiko, gen.native_size), Conditions())
    actions = ["idle", "wave", "heart", "touch_nose", "bow", "like"]
    with torch.no_grad():
        for i in range(args.chunks):
            gen.next_chunk(Conditions(actions[i // 4 % len(actions)], serial=i // 4), steps=4)
    beta = sums["x0_eps"] / sums["eps_eps"]
    share = beta ** 2 * sums["eps_eps"] / sums["x0_x0"]
    print(json.dumps({"model": args.model or "default", "checkpoint": cfg.model.checkpoint,
                      "prediction": cfg.model.dit.prediction, "patch_values": int(np.prod(cfg.model.dit.patch_size))
                      * cfg.model.dit.out_dim, "dim": cfg.model.dit.dim, "chunks": args.chunks, "beta": beta,
                      "noise_share_of_x0": share}))


if __name__ == "__main__":
    main()
