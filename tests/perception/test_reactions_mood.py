"""The pure parts: reactions and their cooldowns, the mood's moving average and hysteresis, the director's
reaction lane (below every viewer, expiring, leaving asked-for emotions alone), and the real sentiment models."""

from __future__ import annotations

import pytest

from backend.config import REACTIONS, ConfigError, DirectorConfig, load_config
from backend.director.director import Director
from backend.events import CommandKind
from backend.perception.analysis import Percept
from backend.perception.mood import MoodTracker
from backend.perception.reactions import REACTION_COMMANDS, Reactor
from tests.director.director_kit import FakeClock, Recorder, chat

from .conftest import need


def seen(at: float, *events: str) -> Percept:
    return Percept(at, True, events=events)


def test_each_reaction_maps_to_a_real_action_or_emotion():
    from backend.actions import EMOTIONS, action

    for name, (kind, argument) in REACTION_COMMANDS.items():
        assert name in REACTIONS
        if kind is CommandKind.ACT:
            action(argument)
        else:
            assert argument in EMOTIONS


def test_reactor_cooldowns_order_and_switches():
    r = Reactor(cooldown_s=10.0, global_cooldown_s=3.0)
    assert r.react(seen(0.0, "present", "look")) is None  # no reaction to mere presence
    first = r.react(seen(1.0, "smile", "wave"))
    assert first is not None and (first.name, first.kind, first.argument) == ("wave", CommandKind.ACT, "wave")
    assert r.react(seen(2.0, "heart")) is None  # global cooldown
    assert r.react(seen(4.5, "heart")).argument == "heart"
    assert r.react(seen(8.0, "wave")) is None  # wave's own cooldown (10 s)
    assert r.react(seen(8.0, "sad")).kind is CommandKind.EMOTION
    assert r.react(seen(12.0, "wave")).argument == "wave"
    off = Reactor(("heart",), cooldown_s=0.0, global_cooldown_s=0.0)
    assert off.react(seen(0.0, "wave", "smile")) is None
    assert off.react(seen(0.0, "heart")).name == "heart"
    with pytest.raises(ValueError, match="unknown reactions"):
        Reactor(("wink",))


def test_config_refuses_unknown_reactions_in_one_line():
    with pytest.raises(ConfigError, match=r"perception.reactions: unknown 'wink'"):
        load_config(None, {"perception.reactions": ["wave", "wink"]})
    assert load_config(None, {"perception.enabled": True}).perception.enabled


def test_mood_moves_slowly_with_hysteresis_and_hold():
    mood = MoodTracker(alpha=0.2, enter=0.3, exit=0.1, hold_s=5.0)
    changes = [mood.observe(0.9, t) for t in range(3)]
    assert changes == [None, "happy", None]  # 0.18, 0.324 -> happy: one glowing message is not enough
    # one negative message does not flip her; the mood must come back inside +-0.1 to turn neutral
    assert mood.observe(-0.6, 10.0) is None and mood.emotion == "happy"
    out = [mood.observe(-0.6, 10.0 + t) for t in range(1, 8)]
    assert "neutral" in out and mood.emotion in ("neutral", "sad")
    assert out.index("neutral") < (out.index("sad") if "sad" in out else 99)
    # within hold_s of a change nothing changes, however strong
    m2 = MoodTracker(alpha=1.0, enter=0.3, exit=0.1, hold_s=5.0)
    assert m2.observe(1.0, 0.0) == "happy"
    assert m2.observe(-1.0, 1.0) is None and m2.observe(-1.0, 6.0) == "sad"


async def test_director_reactions_queue_below_viewers_and_expire():
    clock, sink = FakeClock(), Recorder()
    director = Director(DirectorConfig(global_cooldown_s=0.0), sink, clock=clock)
    await director.handle(chat("!heart", user="alice"))
    await director.tick()  # heart plays (2.4 s)
    await director.handle(chat("!like", user="bob"))
    d = await director.handle_reaction(CommandKind.ACT, "wave", reason="wave", max_wait_s=5.0)
    assert d.decision == "queued" and d.reason == "tier_reaction"
    await director.handle(chat("!nod", user="carol"))  # a viewer after the reaction still goes before it
    assert [i["argument"] for i in director.state()["next"]] == ["like", "nod", "wave"]
    for _ in range(2):
        clock.advance(2.5)
        await director.tick()
    assert sink.pairs[-1] == ("act", "nod")
    clock.advance(2.0)
    await director.tick()  # the wave waited more than 5 s: dropped, not played late
    assert ("act", "wave") not in sink.pairs
    assert director.decisions[-1].decision in ("expired", "finished", "dispatched")
    assert any(x.decision == "expired" and x.argument == "wave" for x in director.decisions)


async def test_reaction_plays_at_once_when_idle_and_emotions_are_left_alone():
    clock, sink = FakeClock(), Recorder()
    director = Director(DirectorConfig(), sink, clock=clock)
    await director.handle_reaction(CommandKind.ACT, "smile", reason="smile", max_wait_s=2.0)
    await director.tick()
    assert sink.pairs == [("act", "smile")] and sink.commands[0].source == "camera"
    await director.handle(chat("!emote angry", user="dave"))
    d = await director.handle_mood("happy")
    assert d.decision == "rejected" and d.reason == "emotion_held"
    d = await director.handle_reaction(CommandKind.EMOTION, "sad", reason="sad", max_wait_s=2.0)
    assert d.decision == "rejected"
    clock.advance(director.emotion_hold_s + 0.1)
    assert (await director.handle_mood("happy")).decision == "immediate"
    assert sink.pairs[-1] == ("emotion", "happy")


def test_real_sentiment_english_and_chinese():
    need("vaderSentiment", "snownlp")
    from backend.perception.mood import Sentiment

    s = Sentiment()
    assert s.score("I love this stream, she is so cute!") > 0.5
    assert s.score("this is boring and awful") < -0.3
    assert s.score("!wave") == 0.0
    assert s.score("哈哈哈太可爱了") > 0.3
    assert s.score("太糟糕了，很失望") < -0.3


async def test_app_wires_the_mood_into_chat_and_speech():
    """``backend.app._perceive`` with ``perception.mood``: chat messages (through the tapped handler) and the
    streamer's utterances (through ``heard``) move the real sentiment models' mood into the director."""
    need("vaderSentiment", "snownlp")
    import contextlib
    from types import SimpleNamespace

    from backend.app import _perceive

    cfg = load_config(None, {"perception.mood": True, "perception.mood_hold_s": 0.0, "perception.mood_alpha": 0.5})
    sink = Recorder()
    async with contextlib.AsyncExitStack() as stack:
        director = await stack.enter_async_context(Director(cfg.director, sink))
        handle, heard = await _perceive(cfg, director, stack)
        assert heard is not None
        for n, text in enumerate(["I love you, so cute!", "best stream ever, amazing", "哈哈太可爱了"]):
            await handle(chat(text, user=f"fan{n}"))
        assert ("emotion", "happy") in sink.pairs
        for text in ("this is terrible", "I am so sad and tired", "awful, just awful", "I hate this, horrible"):
            await heard(SimpleNamespace(text=text))
        assert sink.pairs[-1] == ("emotion", "sad"), sink.pairs
        assert all(c.source == "mood" for c in sink.commands)
    off = load_config(None, {})
    async with contextlib.AsyncExitStack() as stack:
        director = await stack.enter_async_context(Director(off.director, Recorder()))
        handle, heard = await _perceive(off, director, stack)
        assert heard is None and handle == director.handle
