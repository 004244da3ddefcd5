"""What each step of the 4-step sampler hands on (session 20): aiko's first chunk (idle, the reference the only
context, as at a stream's start), sampled with the training forward; the clean latents each step predicts (x0),
decoded, left to right. One row a checkpoint ("PATH:PREDICTION:SHIFT"), the world's rest pose first.

    PYTHONPATH=. python docs/eval/s20/step_x0.py OUT.jpg CKPT:PRED:SHIFT [CKPT:PRED:SHIFT ...]
"""

import sys

import numpy as np
import torch
from PIL import Image

from backend.cli import _preset
from backend.config import load_config
from backend.model.generator import Generator
from backend.training import train as T
from backend.world.character import load_character
from backend.world.reference import reference_frame


def _rgb(frame: torch.Tensor) -> np.ndarray:
    """(4, H, W) straight alpha -> (H, W, 3) over grey, the middle half of the width (where the idol stands)."""
    w = frame.shape[-1]
    y = frame[..., w // 4:w - w // 4].permute(1, 2, 0).float().numpy()
    a = y[..., 3:4]
    return np.clip(y[..., :3] * a + 0.66 * (1 - a), 0, 1)


def row(spec: str, seed: int = 1) -> np.ndarray:
    ckpt, pred, shift = spec.split(":")
    cfg = load_config(overrides=_preset("liveidol-g64") | {"model.device": "cpu", "model.checkpoint": ckpt,
                                                             "model.dit.prediction": pred, "model.shift": float(shift)})
    gen = Generator(cfg.model)
    dit, ae, m = gen.dit, gen.autoencoder, cfg.model
    pool = T.LatentPool(cfg, ae, 1, seed=12345, device=torch.device("cpu"))
    n = 2  # one 2-latent chunk
    batch = {k: v[:1, :n] for k, v in pool.batch(1, torch.Generator().manual_seed(0)).items()}
    batch["mouth"] = pool.mouth[:1, :n * ae.cfg.temporal_factor]
    batch["actions"][:] = 0
    batch["emotions"][:] = 0
    ref = torch.from_numpy(reference_frame(load_character("aiko"), gen.native_size)).permute(2, 0, 1)[None] / 255
    batch["reference"] = ae.encode(ref.float()[:, None].expand(1, ae.cfg.temporal_factor, *ref.shape[1:]))
    mask = T.block_causal_mask(n, n, m.window_frames, m.sink_frames > 0)
    sigmas = [t / 1000 for t in gen.schedule.warp_list(m.timesteps)] + [0.0]
    torch.manual_seed(seed)
    x = torch.randn(batch["latents"].shape)
    frames = [_rgb(ae.decode(batch["reference"], which="mid")[0, 0])]
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        inp = T._sequence_inputs(dit, m, batch, torch.zeros_like(x), x, torch.full((1, n), 1000 * s), 0,
                                 torch.full((1,), 1000 * m.context_noise))
        flow = dit.forward_train(**inp, attn_mask=mask).permute(0, 2, 1, 3, 4)[:, 1 + n:]
        frames.append(_rgb(ae.decode(x - s * flow, which="mid")[0, -1]))
        x = x + (sigmas[i + 1] - s) * flow
    return np.concatenate(frames, 1)


def main() -> None:
    torch.set_grad_enabled(False)
    im = np.concatenate([row(spec) for spec in sys.argv[2:]], 0)
    Image.fromarray((im * 255).astype(np.uint8)).save(sys.argv[1], quality=88)


if __name__ == "__main__":
    main()
