"""The g64 autoencoder's ceiling on following (session 19): the world's frames of a command plan, encoded and
decoded by the preset's autoencoder, read by the probe with `liveidol eval`'s rule, beside the world's own frames.
If the round trip keeps every action readable, what the generator misses is the DiT's.

    PYTHONPATH=. python docs/eval/s19/ae_probe.py CHARACTER DECODER SEED COMMANDS   # e.g. aiko mid 120 40
"""

import collections
import sys

import torch

from backend.cli import _preset
from backend.config import load_config
from backend.model.generator import Generator
from backend.training import evaluate as ev
from backend.world.render import premultiplied, render, straight_alpha


def main() -> None:
    name, which, seed, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_grad_enabled(False)
    cfg = load_config(overrides=_preset("liveidol-g64") | {"model.device": "cpu"})
    gen = Generator(cfg.model)
    ae, probe, fps = gen.autoencoder, ev._load_probe(None, gen.device), ev.ACTION_FPS
    character = ev.load_character(name)
    plan = ev.plan_commands(n, frames_per_chunk=gen.frames_per_chunk(), seed=seed, fps=fps, balance_emotions=True)
    tf = ae.cfg.temporal_factor
    poses, _ = ev.simulate(ev.world_script(plan), ev._ceil_to(plan[-1].start + plan[-1].window, 2 * tf), fps=fps,
                           seed=seed)
    ident = ev.identity_tensor([character.identity])
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for c in plan:
        a0 = c.start // tf * tf  # the latent frame the window starts in
        src = render(ident, poses[None, a0:a0 + ev._ceil_to(c.start - a0 + c.window, tf)], gen.native_size, "half")[0]
        dec = ae.decode(ae.encode(straight_alpha(src[None])), which=which)[0].float()
        seen = ev._resize_area(premultiplied(dec), gen.native_size)
        w = slice(c.start - a0, c.start - a0 + c.window)
        k = counts[c.action]
        k[0] += 1
        k[1] += ev.followed(ev.action_scores(probe.predict(src[w])[0].cpu(), fps), c.action)
        k[2] += ev.followed(ev.action_scores(probe.predict(seen[w])[0].cpu(), fps), c.action)
    for action, (total, world, trip) in sorted(counts.items()):
        print(f"{action:12s} commands {total:2d}  world {world:2d}  round trip {trip:2d}")
    print("all", *(sum(v[i] for v in counts.values()) for i in range(3)))


if __name__ == "__main__":
    main()
