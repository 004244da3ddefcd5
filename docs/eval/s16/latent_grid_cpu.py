"""Session 16, one-off (how `cpu_latent_grid.jsonl` was made; not part of the package): train the small model's
autoencoder on the 2-core CPU for a fixed time at a given latent grid, then print its round trip (native decoder)
at the native size and at 960x540 (bicubic), for aiko / rin / hana.

    PYTHONPATH=. python docs/eval/s16/latent_grid_cpu.py 4 48 /tmp/ae4.pt   # spatial_factor 4: a 64x36 grid
    PYTHONPATH=. python docs/eval/s16/latent_grid_cpu.py 8 48 /tmp/ae8.pt   # today's 32x18 grid
    PYTHONPATH=. python docs/eval/s16/latent_grid_cpu.py shipped            # the shipped autoencoder, no training

The two trainings ran side by side, one thread each, batch 4, the autoencoder stage's loss and schedule (6,000 steps).
"""

from __future__ import annotations

import json
import sys
import time

import torch

from backend.config import load_config
from backend.model.autoencoder import VideoAutoencoder
from backend.model.generator import Generator
from backend.training.data import render_clips
from backend.training.evaluate import autoencoder_roundtrip
from backend.training.train import _spec_pool, _sub_clips
from backend.training.train_autoencoder import fit_latent_stats, train_autoencoder
from backend.world.character import load_character
from backend.world.render import straight_alpha


def roundtrip(ae: VideoAutoencoder, size: tuple[int, int]) -> dict[str, dict[str, float]]:
    res = {}
    for name in ("aiko", "rin", "hana"):
        character = load_character(name)
        native = autoencoder_roundtrip(ae, character, size, size)
        up = autoencoder_roundtrip(ae, character, size, (960, 540))
        res[name] = {"native_psnr": native["psnr"], "up_psnr": up["psnr"], "up_ssim": up["ssim"]}
    return res


def main() -> None:
    torch.set_num_threads(1)
    if sys.argv[1] == "shipped":
        gen = Generator(load_config(None, {"model.device": "cpu"}).model)
        print(json.dumps({"sf": 8, "shipped": True, "roundtrip": roundtrip(gen.autoencoder.float(), gen.native_size)}))
        return
    sf, minutes, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    ae_cfg = load_config(None, {"model.device": "cpu", "model.autoencoder.spatial_factor": sf}).model.autoencoder
    tf, size = ae_cfg.temporal_factor, (ae_cfg.native_width, ae_cfg.native_height)
    specs = _spec_pool(96, 16 * tf, 1000, tf)

    def clips(batch: int, gen: torch.Generator) -> torch.Tensor:
        return straight_alpha(render_clips(_sub_clips(specs, batch, gen, tf), size, tf, "cpu", labels=False).video)

    ae = VideoAutoencoder(ae_cfg)
    state = train_autoencoder(ae, clips, steps=100_000, batch=4, device="cpu", deadline=time.monotonic() + 60 * minutes,
                              log_every=200, schedule_steps=6000, latent_noise=0.05)
    fit_latent_stats(ae, clips, n_batches=2)
    torch.save({"ae_state": ae.state_dict(), "step": state["step"]}, out)
    print(json.dumps({"sf": sf, "steps": state["step"], "minutes": minutes, "losses": state["losses"][-1:],
                      "roundtrip": roundtrip(ae, size)}))


if __name__ == "__main__":
    main()
