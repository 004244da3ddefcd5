"""Commands become prompts: the character's [prompts] table, and free text as a prompt in the director."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.actions import ACTIONS, EMOTIONS
from backend.config import ConfigError
from backend.director.grammar import Grammar
from backend.events import CommandKind
from backend.model.wan.prompts import PromptTemplates
from backend.world.character import load_character


def test_every_action_and_emotion_has_a_prompt() -> None:
    t = PromptTemplates()
    texts = {t.text(a.name, e) for a in ACTIONS for e in EMOTIONS}
    assert len(texts) == len(ACTIONS) * len(EMOTIONS)


def test_the_example_character_templates_and_avatar() -> None:
    c = load_character("sakura")
    assert c.resolve(c.reference_image) is not None and c.resolve(c.reference_image).is_file()  # type: ignore[union-attr]
    wave = c.prompts.text("wave", "happy")
    assert wave.startswith("An anime-style virtual idol girl") and "waves cheerfully" in wave and "smiling brightly" in wave
    assert c.prompts.text("nod", "neutral").count("nods yes") == 1  # not in the file: the default phrase
    # free text is embedded as it is while the body is idle; a one-shot action plays its template, then it returns
    assert c.prompts.text("idle", "happy", "  she dances in the rain ") == "she dances in the rain"
    assert "waves cheerfully" in c.prompts.text("wave", "happy", "she dances in the rain")


def test_a_bad_template_or_a_misspelt_action_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[prompts]\ntemplate = "{subject} {acton}"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: prompts.template = .*bad placeholder 'acton'"):
        load_character(bad)
    bad.write_text('name = "bad"\n[prompts.actions]\nwaev = "waves"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: prompts.actions.waev: unknown key"):
        load_character(bad)


def test_free_text_becomes_a_prompt_in_the_wan_tier() -> None:
    g = Grammar("!", free_text_prompts=True)
    r = g.parse("make a heart and spin around").request
    assert r is not None and r.kind is CommandKind.PROMPT and r.argument == "make a heart and spin around"
    r = g.parse("wave").request  # an exact alias stays the action
    assert r is not None and (r.kind, r.argument) == (CommandKind.ACT, "wave")
    r = g.parse("!prompt she sings on a stage").request
    assert r is not None and (r.kind, r.argument) == (CommandKind.PROMPT, "she sings on a stage")
    r = g.parse("make a heart for my chat").request  # no nearest-action mapping in this tier
    assert r is not None and (r.kind, r.argument) == (CommandKind.PROMPT, "make a heart for my chat")
    default = Grammar("!").parse("make a heart for my chat").request  # the default tier: the nearest action
    assert default is not None and (default.kind, default.argument) == (CommandKind.ACT, "heart")
