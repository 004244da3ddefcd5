"""The procedural character world: the idol's identity, pose trajectories and a fast torch renderer.

The default model is trained on clips rendered here (no weights can be downloaded), and evaluation
reads poses back from generated frames with ``backend.training.probe``.
"""

from backend.world.character import (
    IDENTITY_DIM,
    CharacterConfig,
    Identity,
    apply_background,
    identity_tensor,
    load_character,
    sample_identity,
)
from backend.world.pose import POSE_INDEX, POSE_PARAMS, action_scores, random_script, simulate
from backend.world.render import character_reference, reference_frame, render

__all__ = [
    "IDENTITY_DIM",
    "POSE_INDEX",
    "POSE_PARAMS",
    "CharacterConfig",
    "Identity",
    "action_scores",
    "apply_background",
    "character_reference",
    "identity_tensor",
    "load_character",
    "random_script",
    "reference_frame",
    "render",
    "sample_identity",
    "simulate",
]
