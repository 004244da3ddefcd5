"""g64 framed whole at the CPU's compute level (session 19): hana, 1 step, 1-latent chunks, idle then a wave; the
last frame of chunks 3, 6, 9 and 12 side by side over grey, at half the output size.

    PYTHONPATH=. python docs/eval/s19/whole_cpu.py OUT.png
"""

import dataclasses
import sys

import numpy as np
import torch
from PIL import Image

from backend.cli import _preset
from backend.config import load_config
from backend.model.generator import Conditions, Generator
from backend.world.character import load_character
from backend.world.reference import reference_frame


def main() -> None:
    torch.set_grad_enabled(False)
    cfg = load_config(overrides=_preset("liveidol-g64") | {"model.device": "cpu"})
    gen = Generator(cfg.model)
    hana = dataclasses.replace(load_character("hana"), framing="whole")
    gen.check_framing(hana.framing, "hana framed whole")
    gen.reset(reference_frame(hana, gen.native_size), Conditions())
    frames = [gen.next_chunk(Conditions("wave", serial=1) if i >= 4 else Conditions(), steps=1, chunk_frames=1)[-1]
              for i in range(13)]
    im = np.concatenate([frames[i] for i in (3, 6, 9, 12)], 1)
    a = im[..., 3:4] / 255.0
    out = Image.fromarray((im[..., :3] * a + 170 * (1 - a)).astype(np.uint8))
    out.resize((im.shape[1] // 2, im.shape[0] // 2)).save(sys.argv[1])


if __name__ == "__main__":
    main()
