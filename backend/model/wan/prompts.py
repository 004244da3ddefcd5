"""Commands become prompts: the character's templates for the Wan tier (its ``[prompts]`` table).

A Wan-based model knows no action table: every action and emotion is a sentence for the text encoder.
The character file holds them (``configs/characters/*.toml``)::

    [prompts]
    subject = "A photoreal young woman with shoulder-length black hair and a white blouse"
    scene = "Medium shot, plain light-grey studio wall, soft light, she looks into the camera."
    template = "{subject} {action}, {emotion}. {scene}"
    [prompts.actions]
    wave = "raises her right hand and waves at the camera"
    [prompts.emotions]
    happy = "smiling warmly"

Every key is optional (the defaults below are generic). Which text is embedded (:meth:`PromptTemplates.text`):

* a free-text prompt (``!prompt ...``, or free text from chat and voice in this tier) is embedded as it is,
  while the body is idle; a one-shot action or speech plays from its template, then the prompt returns;
* otherwise ``template`` with the action's and the emotion's phrases.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from backend.actions import ACTIONS, EMOTIONS
from backend.config import opt

__all__ = ["DEFAULT_ACTION_PHRASES", "DEFAULT_EMOTION_PHRASES", "ActionPrompts", "EmotionPrompts", "PromptTemplates"]

DEFAULT_ACTION_PHRASES: dict[str, str] = {
    "idle": "stands facing the camera, breathing calmly and blinking now and then",
    "wave": "raises her right hand and waves at the camera",
    "heart": "makes a heart shape with both hands in front of her chest",
    "like": "gives a thumbs-up to the camera",
    "touch_nose": "touches the tip of her nose with her right index finger",
    "blink": "blinks twice on purpose",
    "racket": "raises a tennis racket",
    "angry": "frowns with her brows down and pouts",
    "smile": "breaks into a big smile with her eyes closed",
    "nod": "nods yes",
    "shake_head": "shakes her head no",
    "surprise": "looks surprised with wide eyes and open mouth, hands raised",
    "bow": "bows politely from the waist",
    "talk": "talks to the camera",
}
DEFAULT_EMOTION_PHRASES: dict[str, str] = {
    "neutral": "with a calm expression",
    "happy": "looking happy and cheerful",
    "angry": "looking angry",
    "surprised": "looking surprised",
    "sad": "looking sad",
}
assert set(DEFAULT_ACTION_PHRASES) == {a.name for a in ACTIONS}, "every action needs a default prompt phrase"
assert set(DEFAULT_EMOTION_PHRASES) == set(EMOTIONS), "every emotion needs a default prompt phrase"

# One field per action / emotion of the library, so the loader refuses a misspelt name in a character file.
ActionPrompts: Any = dataclasses.make_dataclass(
    "ActionPrompts",
    [(name, str, opt(text, f"Prompt phrase of the action {name!r}.")) for name, text in DEFAULT_ACTION_PHRASES.items()],
    frozen=True)
ActionPrompts.__doc__ = "The prompt phrase of each action (``{action}`` in the template)."
EmotionPrompts: Any = dataclasses.make_dataclass(
    "EmotionPrompts",
    [(name, str, opt(text, f"Prompt phrase of the emotion {name!r}.")) for name, text in DEFAULT_EMOTION_PHRASES.items()],
    frozen=True)
EmotionPrompts.__doc__ = "The prompt phrase of each emotion (``{emotion}`` in the template)."
_FIELDS = ("subject", "action", "emotion", "scene")


@dataclass(frozen=True)
class PromptTemplates:
    """The ``[prompts]`` table of a character file: how commands become prompts in the Wan tier."""

    subject: str = opt("A young virtual idol", "Who is in the picture (``{subject}``).")
    scene: str = opt("Medium shot, plain studio background, soft light, she looks into the camera.",
                     "Shot, background and light (``{scene}``).")
    template: str = opt("{subject} {action}, {emotion}. {scene}",
                        "The prompt of an action: placeholders {subject}, {action}, {emotion}, {scene}.")
    actions: ActionPrompts = opt(None, "Prompt phrase per action.", factory=ActionPrompts)  # type: ignore[valid-type]
    emotions: EmotionPrompts = opt(None, "Prompt phrase per emotion.", factory=EmotionPrompts)  # type: ignore[valid-type]

    def check(self) -> None:
        """Raise ValueError naming the placeholder when ``template`` does not format."""
        try:
            self.template.format(**dict.fromkeys(_FIELDS, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompts.template = {self.template!r}: bad placeholder {exc} "
                             f"(allowed: {', '.join('{' + f + '}' for f in _FIELDS)})") from None

    def text(self, action: str, emotion: str, prompt: str = "", *, idle_action: str = "idle") -> str:
        """The text to embed for a directive (see the module docstring)."""
        if prompt.strip() and action == idle_action:
            return prompt.strip()
        try:
            act, emo = getattr(self.actions, action), getattr(self.emotions, emotion)
        except AttributeError as exc:
            raise ValueError(f"no prompt phrase for {exc.name!r}") from None
        return " ".join(self.template.format(subject=self.subject, action=act, emotion=emo, scene=self.scene).split())
