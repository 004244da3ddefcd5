"""The identity reference as the generator takes it: the frame it keeps as its sink for the whole stream."""

from __future__ import annotations

import numpy as np

from backend.world.character import CharacterConfig
from backend.world.render import character_reference, straight_alpha

__all__ = ["reference_frame"]


def reference_frame(character: CharacterConfig, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 4) uint8 with straight alpha at ``size`` = (W, H): the character's custom avatar image (its alpha
    kept) when it has one, else the idol rendered in the rest pose."""
    frame = straight_alpha(character_reference(character, size))  # (4, H, W)
    return (frame.permute(1, 2, 0) * 255).round().to("cpu").numpy().astype(np.uint8)
