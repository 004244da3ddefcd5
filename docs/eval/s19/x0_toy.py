"""Why g64's DiT is to predict x0 (session 19): JiT's toy (Li & He 2025, "Back to Basics: Let Denoising Generative
Models Denoise") run on LiveIdol's own CausalDiT.

Data: latents (16 channels, 1 frame, 16x16) cut into 4x4 patches, 256 values a patch (g64's layout; v8's 2x2 patches:
64 values), each patch a point of one 8-dimensional linear manifold, P z (P orthonormal columns scaled to unit
variance per value; z drawn per patch). With dim 64 a patch does not fit the hidden size; 256 is g64's ratio; with
dim 320 it has room. Each DiT is trained the same number of steps with the flow-matching loss of `liveidol train dit` (flow target eps - x0), once
predicting flow (the head's output is the flow) and once x0 (`model.dit.prediction = "x0"`: the head draws x0 and
the model returns (x - x0) / max(sigma, 0.05)). Then 4-step samples (the engine's shifted schedule) are scored by
how far their patches lie off the manifold: |x - P P^T x|^2 / |x|^2 (0 = on it; pure noise: 1 - 8/256).

    PYTHONPATH=. python docs/eval/s19/x0_toy.py [--steps 1500]
"""

import argparse
import json
import time

import torch

from backend.config import DiTSizes
from backend.model.dit import CausalDiT
from backend.model.sampler import FlowMatchSchedule


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--dims", default="64,256,320")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    shape, k = (16, 1, 16, 16), 8
    n = 16 * 4 * 4  # values a patch
    p, _ = torch.linalg.qr(torch.randn(n, k))  # (n, k) orthonormal
    scale = (n / k) ** 0.5

    def patches(x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, 16, 16) -> (B, 16 patches, 256 values)
        return x.view(x.shape[0], 16, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(x.shape[0], 16, n)

    def data(b: int) -> torch.Tensor:
        z = torch.randn(b, 16, k)  # each patch its own point of the shared manifold
        v = (z @ p.T * scale).view(b, 4, 4, 16, 4, 4).permute(0, 3, 1, 4, 2, 5)
        return v.reshape(b, *shape)

    def off(x: torch.Tensor) -> float:
        f = patches(x)
        return float(((f - f @ p @ p.T).pow(2).sum(-1) / f.pow(2).sum(-1)).mean())

    sched = FlowMatchSchedule(shift=5.0)
    ts = sched.warp_list([1000.0, 750.0, 500.0, 250.0])
    out = {}
    for dim in map(int, args.dims.split(",")):
        for pred in ("flow", "x0"):
            sizes = DiTSizes(dim=dim, ffn_dim=2 * dim, num_heads=4, num_layers=2, patch_size=(1, 4, 4),
                             num_controls=0, prediction=pred)
            torch.manual_seed(1)
            dit = CausalDiT(sizes)
            opt = torch.optim.AdamW(dit.parameters(), lr=1e-3, weight_decay=0.0)
            ctx = dit.build_context(torch.zeros(64, dtype=torch.long), torch.zeros(64, dtype=torch.long)).detach()
            gen = torch.Generator().manual_seed(2)
            t0 = time.time()
            for _ in range(args.steps):
                x0 = data(64)
                u = torch.rand(64, generator=gen)
                sigma = 5 * u / (1 + 4 * u)
                eps = torch.randn(x0.shape, generator=gen)
                s = sigma.view(-1, 1, 1, 1, 1)
                flow = dit((1 - s) * x0 + s * eps, 1000 * sigma[:, None], ctx)
                loss = (flow - (eps - x0)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            dit.eval()
            with torch.no_grad():  # the engine's sampler: x0 at each warped timestep, re-noised to the next
                x = torch.randn(256, *shape, generator=gen)
                c = ctx[:1].expand(x.shape[0], -1, -1)
                for i, t in enumerate(ts):
                    sig = t / 1000
                    samples = x - sig * dit(x, torch.full((x.shape[0], 1), t), c)
                    if i + 1 < len(ts):
                        nxt = ts[i + 1] / 1000
                        x = (1 - nxt) * samples + nxt * torch.randn(x.shape, generator=gen)
            out[f"dim{dim}_{pred}"] = {"off_manifold": off(samples), "last_loss": loss.item(),
                                      "seconds": time.time() - t0}
            print(f"dim {dim:4d} ({16 * 16} values a patch) prediction {pred:4s}: off-manifold "
                  f"{out[f'dim{dim}_{pred}']['off_manifold']:.3f}, last loss {loss.item():.3f}", flush=True)
    print(json.dumps({"steps": args.steps, "data": "each 4x4x16 patch of 16x1x16x16 latents on one 8-dim linear manifold",
                      **out}))


if __name__ == "__main__":
    main()
