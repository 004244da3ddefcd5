"""Session 17, one-off (how `grid_faces.png` and `grid_faces.json` were made; not part of the package): the
autoencoder round trip of the shipped model (32x18 latent grid) beside the next model's (64x36, `--model
liveidol-g64`), every detail decoder at the output size, for aiko / rin / hana: figures (PSNR / SSIM / sharpness
against the world rendered at 960x540) and one face crop each, frame 5 of the round trip's wave, over grey.

    PYTHONPATH=. python docs/eval/s17/grid_faces.py docs/eval/s17
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from backend.cli import _preset
from backend.config import load_config
from backend.model.generator import Generator
from backend.training.evaluate import autoencoder_roundtrip
from backend.world.character import load_character
from backend.world.png import write_png
from backend.world.pose import HEAD_CENTRE
from backend.world.render import design_frame

SIZE = (960, 540)
HALF = 30.0  # half side of the face crop, design pixels
TRIPS = [(name, which) for name in ("shipped", "g64") for which in ("mid", "hires")]  # one round trip each
WORLD_ROWS = {"world 960x540": "world", "world 256x144 resampled": "upscaled_world"}  # label -> picture
ROWS = [*WORLD_ROWS, *(f"{name} {which}" for name, which in TRIPS)]


def _crop(frame: torch.Tensor) -> np.ndarray:
    scale, ox, oy = design_frame(SIZE)
    cx, cy, r = (HEAD_CENTRE[0] + ox) * scale, (HEAD_CENTRE[1] - oy) * scale, HALF * scale
    x0, y0, side = int(cx - r), int(cy - r), int(2 * r)
    rgba = frame[:, y0:y0 + side, x0:x0 + side].clamp(0, 1)  # premultiplied
    grey = 0.5 * (1 - rgba[3:4])
    return ((rgba[:3] + grey).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def main() -> None:
    out = Path(sys.argv[1])
    models = {"shipped": {}, "g64": _preset("liveidol-g64")}
    aes = {}
    for name, overrides in models.items():
        gen = Generator(load_config(None, {**overrides, "model.device": "cpu"}).model)
        aes[name] = (gen.autoencoder.float(), gen.native_size)
    figures: dict[str, dict[str, dict[str, float]]] = {}
    columns = []
    for character in ("aiko", "rin", "hana"):
        char = load_character(character)
        trips = {}
        for name, which in TRIPS:
            ae, native = aes[name]
            trips[f"{name} {which}"] = autoencoder_roundtrip(ae, char, native, SIZE, which=which, keep_frames=True)
        first = trips["shipped mid"]  # the world pictures and the resampled world's figures are every trip's
        cells = {label: _crop(first["pictures"][key][5]) for label, key in WORLD_ROWS.items()}
        cells.update({label: _crop(res["pictures"]["decoded"][5]) for label, res in trips.items()})
        figures.setdefault("world 256x144 resampled", {})[character] = {
            k: round(v, 4) for k, v in first["upscaled_world"].items()}
        for label, res in trips.items():
            figures.setdefault(label, {})[character] = {k: round(res[k], 4) for k in ("psnr", "ssim",
                                                                                    "sharpness_ratio")}
        columns.append(np.concatenate([cells[label] for label in ROWS], axis=0))
    gap = np.full((columns[0].shape[0], 6, 3), 255, np.uint8)
    sheet = np.concatenate([c for col in columns for c in (col, gap)][:-1], axis=1)
    write_png(out / "grid_faces.png", sheet)
    (out / "grid_faces.json").write_text(json.dumps({"rows": ROWS, "figures": figures}, indent=1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
