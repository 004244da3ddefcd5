"""Session 18, one-off (how `world_framings.png` was made; not part of the package): the world's two framings
for aiko / rin / hana (rows), each at rest, mid-bow, waving and making a heart: the half framing (head to waist,
what the shipped v8 was trained on) then the whole framing (hair to shoes), 480x270 tiles over grey.

    PYTHONPATH=. python docs/eval/s18/world_framings.py docs/eval/s18
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from backend.world.character import identity_tensor, load_character
from backend.world.png import write_png
from backend.world.pose import simulate
from backend.world.render import FRAMINGS, render

TILE = (480, 270)
SCRIPT = [(0, "idle", "neutral"), (10, "bow", "happy"), (40, "wave", "angry"), (70, "heart", "sad")]
FRAMES = [5, 25, 55, 85]  # rest, mid-bow, waving, the heart


def main(out: Path) -> None:
    poses, _ = simulate(SCRIPT, 96, seed=3)
    poses = torch.as_tensor(poses)[None, FRAMES].float().contiguous()
    rows = []
    for name in ("aiko", "rin", "hana"):
        ident = identity_tensor([load_character(name).identity])
        tiles = []
        for framing in FRAMINGS:
            for f in render(ident, poses, TILE, framing)[0]:  # premultiplied
                grey = 0.5 * (1 - f[3:4])
                tiles.append(((f[:3] + grey).clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
        rows.append(np.concatenate(tiles, 1))
    write_png(out / "world_framings.png", np.concatenate(rows, 0))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
