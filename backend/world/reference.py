"""The identity reference: the frame the generator keeps as its sink for the whole stream."""

from __future__ import annotations

import numpy as np
import torch

from backend.world.character import CharacterConfig, identity_tensor, load_image_rgb
from backend.world.pose import REST_POSE
from backend.world.render import render

__all__ = ["reference_frame"]


def reference_frame(character: CharacterConfig, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 4) uint8, straight alpha: the character's custom avatar image if it has one, else the idol
    rendered in the rest pose at ``size`` = (W, H)."""
    path = character.resolve(character.reference_image)
    if path is not None:
        rgb = load_image_rgb(path, size)
        return np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    poses = torch.from_numpy(REST_POSE)[None, None]
    frame = render(identity_tensor([character.identity]), poses, size)[0, 0]  # (4, H, W) premultiplied
    rgb, a = frame[:3], frame[3:4]
    rgb = torch.where(a > 1e-3, rgb / a.clamp(min=1e-3), 0.0).clamp(0, 1)
    return (torch.cat([rgb, a]).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
