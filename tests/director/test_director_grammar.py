"""The chat grammar: prefixed commands, English and Chinese aliases, free text hits and misses."""

from __future__ import annotations

import pytest

from backend.director.grammar import STREAMER_MIN_COVERAGE, Grammar, content_units
from backend.director.moderation import normalize
from backend.events import CommandKind

ACT, EMO, SAY, PROMPT = CommandKind.ACT, CommandKind.EMOTION, CommandKind.SAY, CommandKind.PROMPT


@pytest.fixture(scope="module")
def g() -> Grammar:
    return Grammar("!")


@pytest.mark.parametrize(("text", "kind", "arg"), [
    ("!wave", ACT, "wave"),
    ("!heart", ACT, "heart"),
    ("!HEART", ACT, "heart"),
    ("!act touch_nose", ACT, "touch_nose"),
    ("!action 挥手", ACT, "wave"),
    ("!emote angry", EMO, "angry"),
    ("!emotion angry", EMO, "angry"),
    ("!emotion 开心", EMO, "happy"),
    ("!表情生气", EMO, "angry"),
    ("!say hello chat", SAY, "hello chat"),
    ("!说 谢谢大家", SAY, "谢谢大家"),
    ("!prompt a sunny beach at dusk", PROMPT, "a sunny beach at dusk"),
    ("!thumbs up", ACT, "like"),
    ("!make a heart", ACT, "heart"),
    ("!touch your nose", ACT, "touch_nose"),
    ("!look angry", EMO, "angry"),
    ("!angry", ACT, "angry"),
    ("!wavve", ACT, "wave"),  # typo, fuzzy
    ("!❤", ACT, "heart"),
])
def test_prefixed_commands(g: Grammar, text: str, kind: CommandKind, arg: str) -> None:
    req = g.parse(text).request
    assert req is not None, text
    assert (req.kind, req.argument) == (kind, arg)


@pytest.mark.parametrize(("alias", "arg"), [
    ("比心", "heart"), ("点赞", "like"), ("摸鼻子", "touch_nose"), ("眨眼", "blink"), ("挥手", "wave"),
    ("生气", "angry"), ("微笑", "smile"), ("点头", "nod"), ("摇头", "shake_head"), ("惊讶", "surprise"),
    ("鞠躬", "bow"), ("网球", "racket"), ("球拍", "racket"),
])
def test_chinese_aliases_with_and_without_prefix(g: Grammar, alias: str, arg: str) -> None:
    for text in (f"!{alias}", alias, f"主播{alias}一下", f"可以{alias}吗"):
        req = g.parse(text).request
        assert req is not None and (req.kind, req.argument) == (ACT, arg), text


def test_greeting_is_a_say_with_prefix_only(g: Grammar) -> None:
    req = g.parse("!你好").request
    assert req is not None and req.kind is SAY and "你好" in req.argument
    assert g.parse("!hello").request.kind is SAY
    # in free text a greeting is chatter
    assert g.parse("你好").request is None
    assert g.parse("hello everyone").request is None


def test_configurable_prefix() -> None:
    g = Grammar("?")
    assert g.parse("?wave").request.argument == "wave"
    assert g.parse("!wave").request.argument == "wave"  # free text still matches "wave"
    strict = Grammar("#", free_text=False)
    assert strict.parse("#heart").request.argument == "heart"
    assert strict.parse("!heart").request is None
    assert strict.parse("heart").reason == "no_command"
    with pytest.raises(ValueError, match="prefix"):
        Grammar(" ")


def test_full_width_prefix_after_normalisation(g: Grammar) -> None:
    assert g.parse(normalize("！ｗａｖｅ")).request.argument == "wave"


@pytest.mark.parametrize(("text", "kind", "arg"), [
    ("wave", ACT, "wave"),
    ("wave please!!", ACT, "wave"),
    ("can you wave at me", ACT, "wave"),
    ("please make a heart", ACT, "heart"),
    ("thumbs up", ACT, "like"),
    ("touch your nose pls", ACT, "touch_nose"),
    ("look angry", EMO, "angry"),
    ("be happy", EMO, "happy"),
    ("比心比心", ACT, "heart"),
    ("hart", ACT, "heart"),  # typo
    ("surprize", ACT, "surprise"),  # typo
])
def test_free_text_hits(g: Grammar, text: str, kind: CommandKind, arg: str) -> None:
    req = g.parse(text).request
    assert req is not None, text
    assert (req.kind, req.argument, req.via in ("free_text", "fuzzy")) == (kind, arg, True)


@pytest.mark.parametrize("text", [
    "nice smile", "I love your wave", "hello everyone", "lol", "what game is this", "i like it",
    "heard that", "heard", "wow", "have", "主播好可爱", "今天吃什么", "❤❤❤", "say what", "don't wave",
    "this stream is so fun to watch",
])
def test_ordinary_chatter_does_not_trigger(g: Grammar, text: str) -> None:
    res = g.parse(text)
    assert res.request is None, (text, res)
    assert res.reason == "no_command"


def test_unknown_commands_name_what(g: Grammar) -> None:
    res = g.parse("!dance")
    assert res.request is None and res.reason.startswith("unknown_command") and "dance" in res.reason
    assert g.parse("!emote furious").reason.startswith("unknown_emotion")
    assert g.parse("!say").reason.startswith("missing_argument")
    assert g.parse("!").reason == "empty_command"


def test_free_text_only_matches_allowed_actions() -> None:
    g = Grammar("!", free_text_actions={"wave"})
    assert g.parse("wave please").request.argument == "wave"
    assert g.parse("make a heart").request is None
    # prefixed commands still parse; moderation decides about the allowlist
    assert g.parse("!heart").request.argument == "heart"
    with pytest.raises(ValueError, match="dance"):
        Grammar("!", free_text_actions={"dance"})


def test_bare_commands_for_the_streamer(g: Grammar) -> None:
    req = g.parse("say thanks for the raid", bare_commands=True).request
    assert (req.kind, req.argument) == (SAY, "thanks for the raid")
    assert g.parse("say thanks for the raid").request is None  # viewers: chatter


def test_content_units_drop_filler() -> None:
    assert content_units("Can you 比心 please!!") == ["比", "心"]
    assert content_units("touch_nose") == ["touch", "nose"]


def test_streamer_coverage_is_looser_and_negation_asks_for_nothing(g: Grammar) -> None:
    loose = {"min_coverage": STREAMER_MIN_COVERAGE, "any_action": True}
    for text, arg in [("wave to chat", "wave"), ("wave at the camera", "wave"), ("look surprised", "surprised")]:
        assert g.parse(text, **loose).request.argument == arg, text
    assert g.parse("wave to chat").request is None  # a viewer's line: half of it is not a request
    assert g.parse("I love your wave", **loose).request is None  # a third is not enough even for the streamer
    for text in ("don't wave", "never wave", "stop wave", "别挥手"):
        assert g.parse(text, **loose).reason == "no_command", text
