"""Can g64 start the heart on its own rollout at all? Fit it to one world window and look (session 25).

Session 24 measured g64's command carrying its 1-step prediction a seventh to a fifth of the way along the world's
motion after a switch, and session 25's latent critic did not change it. Either the network cannot draw that chunk
from that context at sigma 1 (its patches, its head), or its training never asks hard enough. This fits a checkpoint
to arms_context.py's cached heart window alone: 1-step x0 at sigma 1 for every chunk, the context the world's
(re-noised to model.context_noise) or held at the pre-switch latent for 1-4 latents after the switch, squared error on
the frames from the switch on, AdamW at LR, STEPS steps on the CPU. Every EVERY steps it prints the squared error of
the teacher-forced and of the own-rollout prediction on the frames after the switch; at the end it writes
arms_context.py's rows (the world, then before and after, each teacher-forced and on its own rollout) and, as the
control, the fitted model's two rows with the command after the switch set to idle (the progress control zeroed):
a heart drawn there was memorised from the window, not started by the command.

    PYTHONPATH=. python docs/eval/s25/overfit_heart.py OUT.jpg CKPT:PRED:SHIFT --cache WINDOW.pt [--steps 200] [--lr 1e-4]
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "s22"))
import arms_context as AC

from backend.training import train as T


def sigma1_loss(dit, m, batch: dict[str, torch.Tensor], switch: int, mask: torch.Tensor,
                rng: torch.Generator) -> torch.Tensor:
    """The fit's loss on a batch of windows (B, n): every chunk's 1-step x0 from pure noise, the context the world's
    or, for half the rows, held at the pre-switch latent for 1-4 latents after the switch, re-noised to
    model.context_noise; squared error on the frames from the switch on."""
    lat = batch["latents"].float()
    b, n = lat.shape[:2]
    ctx = lat.clone()
    for r in range(b):
        if torch.rand((), generator=rng) < 0.5:
            lag = int(torch.randint(1, 5, (1,), generator=rng))
            ctx[r, switch:switch + lag] = lat[r, switch - 1:switch]
    s_ctx = m.context_noise
    ctx = (1 - s_ctx) * ctx + s_ctx * torch.randn(ctx.shape, generator=rng)
    z = torch.randn(lat.shape, generator=rng)
    inp = T._sequence_inputs(dit, m, batch, ctx, z, torch.full((b, n), 1000.0), 0, torch.full((b,), 1000 * s_ctx))
    x0 = z - dit.forward_train(**inp, attn_mask=mask).permute(0, 2, 1, 3, 4)[:, 1 + n:].float()
    return (x0[:, switch:] - lat[:, switch:]).square().mean()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("spec")
    p.add_argument("--cache", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--model", default="liveidol-g64")
    a = p.parse_args()
    n, chunk = 8, 2
    gen = AC._load(a.spec, a.model)
    before = copy.deepcopy(gen)
    batch = torch.load(a.cache)
    dit, m = gen.dit, gen.cfg
    lat = batch["latents"].float()
    switch = int((batch["since"][0] == 0).nonzero()[0])
    mask = T.block_causal_mask(n, chunk, m.window_frames, m.sink_frames > 0)
    rng = torch.Generator().manual_seed(0)

    idle = dict(batch, actions=batch["actions"].clone(), progress=batch["progress"].clone())
    idle["actions"][:, switch:] = AC.ACTION_INDEX["idle"]
    idle["progress"][:, switch:] = 0.0

    def error(g, b=batch) -> tuple[float, ...]:
        with torch.no_grad():
            forced, own = AC.rows(g, b, n, chunk)
        return tuple(round(float((x[:, switch:] - lat[:, switch:]).square().mean()), 4) for x in (forced, own))

    dit.requires_grad_(True)  # the generator loads it frozen
    opt = torch.optim.AdamW(dit.parameters(), lr=a.lr, weight_decay=0.0)
    dit.train()
    print(f"step 0: squared error after the switch teacher-forced / own rollout {error(gen)}", flush=True)
    t0 = time.monotonic()
    for step in range(1, a.steps + 1):
        loss = sigma1_loss(dit, m, batch, switch, mask, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.every == 0 or step == a.steps:
            dit.eval()
            print(f"step {step}: loss {loss.item():.4f}, teacher-forced / own {error(gen)} "
                  f"({time.monotonic() - t0:.0f} s)", flush=True)
            dit.train()
    dit.eval()
    print(f"control (the command after the switch set to idle): teacher-forced / own {error(gen, idle)}", flush=True)
    with torch.no_grad():
        strips = [AC.strip(gen.autoencoder, lat, n)] + [AC.strip(gen.autoencoder, x, n)
                                                        for g, b in ((before, batch), (gen, batch), (gen, idle))
                                                        for x in AC.rows(g, b, n, chunk)]
    AC.save_rows(a.out, strips)


if __name__ == "__main__":
    main()
