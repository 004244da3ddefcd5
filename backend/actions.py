"""The action and emotion library: the one vocabulary that the director, the engine, the procedural
world and the model share.

An action's index is its row in the model's action embedding table and its id in the world's
trajectory library, so the order below is part of the trained checkpoint: append, never reorder.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACTIONS", "ACTION_INDEX", "EMOTIONS", "EMOTION_INDEX", "Action", "action", "emotion_index"]


@dataclass(frozen=True)
class Action:
    name: str
    duration_s: float  # how long one play lasts; looping actions (idle, talk) last until replaced
    loop: bool = False
    description: str = ""


ACTIONS: tuple[Action, ...] = (
    Action("idle", 4.0, loop=True, description="breathing, random blinks, gentle sway"),
    Action("wave", 2.4, description="raise the right hand and wave"),
    Action("heart", 2.4, description="both hands make a heart over the chest"),
    Action("like", 2.0, description="thumbs-up"),
    Action("touch_nose", 2.0, description="touch the nose with the right index finger"),
    Action("blink", 0.8, description="a deliberate double blink"),
    Action("racket", 2.4, description="raise a tennis racket"),
    Action("angry", 1.6, description="anger micro-expression: brows down, pout"),
    Action("smile", 2.0, description="big smile, closed eyes"),
    Action("nod", 1.6, description="nod yes"),
    Action("shake_head", 1.6, description="shake head no"),
    Action("surprise", 1.6, description="surprise: eyes and mouth wide, hands up"),
    Action("bow", 2.4, description="bow from the waist"),
    Action("talk", 4.0, loop=True, description="talk: mouth follows the audio envelope"),
)
ACTION_INDEX: dict[str, int] = {a.name: i for i, a in enumerate(ACTIONS)}

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "angry", "surprised", "sad")
EMOTION_INDEX: dict[str, int] = {e: i for i, e in enumerate(EMOTIONS)}


def action(name: str) -> Action:
    """The action called ``name``; KeyError lists the known names."""
    try:
        return ACTIONS[ACTION_INDEX[name]]
    except KeyError:
        raise KeyError(f"unknown action {name!r} (known: {', '.join(ACTION_INDEX)})") from None


def emotion_index(name: str) -> int:
    try:
        return EMOTION_INDEX[name]
    except KeyError:
        raise KeyError(f"unknown emotion {name!r} (known: {', '.join(EMOTIONS)})") from None
