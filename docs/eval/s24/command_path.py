"""How much of the chunk after a command switch comes from the command, in the shipped v8 and in g64? (session 24)

On arms_context.py's cached world window (hana, heart from latent 2; `--cache` files of that script, one per model's
latent grid), teacher-forced at 1 step (x0 at sigma 1, the context the world's re-noised to model.context_noise):
per latent frame, the norms of the world's motion from the last pre-switch latent, of the command's effect
(x0 under the real labels minus x0 with the action set to idle and the progress control zeroed), the cosine of that
effect with the world's motion, and the same with the context held at the pre-switch pose; then the adaLN
modulation's share: |e0(heart) - e0(idle)| against |e0(t=1000) - e0(t=750)|.

    PYTHONPATH=. python docs/eval/s24/command_path.py MODEL:CKPT:PRED:SHIFT:CACHE [...]
    (MODEL: 'default' or a preset such as liveidol-g64)
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "s22"))
import arms_context as AC

from backend.actions import ACTION_INDEX
from backend.training import train as T


def report(model: str, spec: str, cache: str) -> None:
    gen = AC._load(spec, model)
    batch = torch.load(cache)
    dit, m = gen.dit, gen.cfg
    n, chunk = 8, 2
    lat = batch["latents"].float()
    mask = T.block_causal_mask(n, chunk, m.window_frames, m.sink_frames > 0)
    torch.manual_seed(7)
    z, eps = torch.randn(lat.shape), torch.randn(lat.shape)
    s = m.context_noise
    t_ctx = torch.full((1,), 1000 * s)
    ctx = (1 - s) * lat + s * eps
    held = ctx.clone()
    held[:, 2:] = ctx[:, 1:2]  # the context frozen at the pre-switch pose

    def x0(b: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        inp = T._sequence_inputs(dit, m, b, c, z, torch.full((1, n), 1000.0), 0, t_ctx)
        return z - dit.forward_train(**inp, attn_mask=mask).permute(0, 2, 1, 3, 4)[:, 1 + n:]

    idle = dict(batch, actions=torch.full_like(batch["actions"], ACTION_INDEX["idle"]),
                progress=torch.zeros_like(batch["progress"]))
    motion = lat - lat[:, 1:2]

    def norms(t: torch.Tensor) -> str:
        return " ".join(f"{v:6.1f}" for v in t.flatten(2).norm(dim=2)[0].tolist())

    def cos(u: torch.Tensor) -> str:
        return " ".join(f"{v:6.2f}" for v in F.cosine_similarity(u.flatten(2), motion.flatten(2), dim=2)[0].tolist())

    effect = x0(batch, ctx) - x0(idle, ctx)
    effect_held = x0(batch, held) - x0(idle, held)
    print(f"{model} {spec}  (latents 0-7; the switch at 2)")
    print(f"  world motion            {norms(motion)}")
    print(f"  command effect          {norms(effect)}")
    print(f"  cos(effect, motion)     {cos(effect)}")
    print(f"  held: command effect    {norms(effect_held)}")
    print(f"  held: cos               {cos(effect_held)}")
    c_heart = dit.build_context(torch.tensor([ACTION_INDEX["heart"]]), torch.tensor([0]))
    c_idle = dit.build_context(torch.tensor([ACTION_INDEX["idle"]]), torch.tensor([0]))
    x = torch.zeros(1, dit.sizes.in_dim, 1, 8 * dit.sizes.patch_size[1], 8 * dit.sizes.patch_size[2])

    def e0(t: float, c: torch.Tensor) -> torch.Tensor:
        return dit._embed(x, torch.tensor([[t]]), None, c)[2]

    by_command = (e0(1000.0, c_heart) - e0(1000.0, c_idle)).norm().item()
    by_time = (e0(1000.0, c_idle) - e0(750.0, c_idle)).norm().item()
    print(f"  adaLN: |e0(heart)-e0(idle)| {by_command:.2f}, |e0(t1000)-e0(t750)| {by_time:.2f} "
          f"(ratio {by_command / by_time:.3f})")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    for arg in sys.argv[1:]:
        model, ckpt, pred, shift, cache = arg.split(":")
        report(model, f"{ckpt}:{pred}:{shift}", cache)
