"""Does fitting the first chunks after a heart command carry over to clips it was not fitted on? (session 26)

Session 25's overfit_heart.py fitted g64 to one heart window and it then started the heart from the command on its
own rollout; sessions 25-26 trained at scale with more pure-noise chunks and the heart drawn up, and it still did
not. Between the two: is the single window memorised, or does a loss that asks for the chunks after the switch teach
a start that holds on other idols? This renders a pool of world clips (arms_context.py's, CPU), takes every clip that
shows ACTION's start, fits a checkpoint on TRAIN of those windows (1-step x0 at sigma 1 from the switch on, the
context the world's or held at the pre-switch latent for 1-4 latents, as overfit_heart.py) and every EVERY steps prints
the squared error after the switch of the own 1-step rollout on the fitted windows and on the held-out ones (other
clips, other idols), and, as the control, on the held-out windows with the command set to idle. At the end it writes
the held-out windows' rows: the world, then before and after, each on its own rollout.

    PYTHONPATH=. python docs/eval/s26/generalise_heart.py OUT.jpg CKPT:PRED:SHIFT [--train 6] [--steps 60] [--batch 3]
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "s22"))
import arms_context as AC

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "s25"))
import overfit_heart as OH

from backend.config import load_config
from backend.training import train as T

KEYS = ("latents", "actions", "emotions", "progress", "emotion_progress", "since")


def windows(pool: T.LatentPool, action: int, n: int) -> list[dict[str, torch.Tensor]]:
    """Every clip's first start of ``action`` with two latents before it: (1, n) windows, the switch at index 2."""
    out = []
    tf = pool.mouth.shape[1] // pool.actions.shape[1]
    for i in range(len(pool.actions)):
        acts = pool.actions[i]
        starts = [j for j in range(2, acts.shape[0] - n + 3) if acts[j] == action and acts[j - 1] != action]
        if starts:
            s = starts[0] - 2
            w = {k: getattr(pool, k)[i:i + 1, s:s + n] for k in KEYS}
            w["reference"] = pool.reference[i:i + 1]
            w["mouth"] = pool.mouth[i:i + 1, s * tf:(s + n) * tf]
            out.append(w)
    return out


def idle_of(w: dict[str, torch.Tensor], switch: int) -> dict[str, torch.Tensor]:
    idle = dict(w, actions=w["actions"].clone(), progress=w["progress"].clone())
    idle["actions"][:, switch:] = AC.ACTION_INDEX["idle"]
    idle["progress"][:, switch:] = 0.0
    return idle


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("spec")
    p.add_argument("--action", default="heart")
    p.add_argument("--pool", type=int, default=96)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--train", type=int, default=6)
    p.add_argument("--held", type=int, default=3)
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--model", default="liveidol-g64")
    p.add_argument("--cache", help="keep the pool's windows here (a .pt file)")
    a = p.parse_args()
    n, chunk, switch = 8, 2, 2
    gen = AC._load(a.spec, a.model)
    before = copy.deepcopy(gen)
    if a.cache and Path(a.cache).exists():
        ws = torch.load(a.cache)
    else:
        t0 = time.monotonic()
        with torch.no_grad():
            pool = T.LatentPool(load_config(overrides=AC._overrides(a.model) | {"model.device": "cpu"}),
                                gen.autoencoder, a.pool, seed=a.seed, device=torch.device("cpu"))
        ws = windows(pool, AC.ACTION_INDEX[a.action], n)
        print(f"pool of {a.pool} clips: {len(ws)} windows show {a.action}'s start ({time.monotonic() - t0:.0f} s)")
        if a.cache:
            torch.save(ws, a.cache)
    if len(ws) < a.train + a.held:
        raise SystemExit(f"{len(ws)} windows; --train {a.train} and --held {a.held} need more (a larger --pool)")
    fit, held = ws[:a.train], ws[a.train:a.train + a.held]
    dit, m = gen.dit, gen.cfg
    mask = T.block_causal_mask(n, chunk, m.window_frames, m.sink_frames > 0)
    rng = torch.Generator().manual_seed(0)

    def own_error(g, group: list[dict[str, torch.Tensor]]) -> float:
        with torch.no_grad():
            errs = [float((AC.rows(g, w, n, chunk)[1][:, switch:] - w["latents"][:, switch:].float()).square().mean())
                    for w in group]
        return round(sum(errs) / len(errs), 4)

    def report(step: int, extra: str = "") -> None:
        dit.eval()
        print(f"step {step}{extra}: own-rollout error after the switch, fitted {own_error(gen, fit)} / held-out "
              f"{own_error(gen, held)} / held-out with the command idle {own_error(gen, [idle_of(w, switch) for w in held])}",
              flush=True)
        dit.train()

    dit.requires_grad_(True)  # the generator loads it frozen
    opt = torch.optim.AdamW(dit.parameters(), lr=a.lr, weight_decay=0.0)
    report(0)
    t0 = time.monotonic()
    for step in range(1, a.steps + 1):
        pick = torch.randperm(len(fit), generator=rng)[:a.batch].tolist()
        b = {k: torch.cat([fit[i][k] for i in pick]) for k in fit[0]}
        loss = OH.sigma1_loss(dit, m, b, switch, mask, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.every == 0 or step == a.steps:
            report(step, f" (loss {loss.item():.4f}, {time.monotonic() - t0:.0f} s)")
    dit.eval()
    with torch.no_grad():
        strips = []
        for w in held:
            strips.append(AC.strip(gen.autoencoder, w["latents"].float(), n))
            strips += [AC.strip(gen.autoencoder, AC.rows(g, w, n, chunk)[1], n) for g in (before, gen)]
    AC.save_rows(a.out, strips)


if __name__ == "__main__":
    main()
