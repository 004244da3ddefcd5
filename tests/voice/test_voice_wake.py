"""Wake phrase (fuzzy, as whisper spells it) and push-to-talk decide which utterances are commands."""

from __future__ import annotations

import pytest

from backend.voice.wake import CommandGate, sound_key, strip_wake_phrase


@pytest.mark.parametrize(("heard", "command"), [
    ("Idol, wave to chat.", "wave to chat"),
    ("idol wave", "wave"),
    ("Idle, look surprised!", "look surprised"),  # whisper-base spellings seen on piper speech
    ("Hydeal, Wave to Chat", "Wave to Chat"),
    ("Hidle looks surprised.", "looks surprised"),
    ("I doll, smile", "smile"),  # heard as two words
    ("Hey idol, nod.", "nod"),  # a greeting first
    ("OK, idol: make a heart", "make a heart"),
    ("Idol, say hello everyone.", "say hello everyone"),
])
def test_wake_phrase_is_found_and_stripped(heard: str, command: str) -> None:
    assert strip_wake_phrase(heard, "idol") == command


@pytest.mark.parametrize("heard", [
    "I really like this game.",
    "I will wait a cat.",  # "I will" sounds a bit like "idol": must not wake
    "I told you so",
    "Wave to chat",
    "This idol is great",  # the phrase not at the start
    "",
])
def test_chatter_without_the_wake_phrase_is_not_a_command(heard: str) -> None:
    assert strip_wake_phrase(heard, "idol") is None


def test_multi_word_phrase() -> None:
    assert strip_wake_phrase("Hey Aiko, wave!", "hey aiko") == "wave"
    assert strip_wake_phrase("Hey, I go, wave", "hey aiko") == "wave"
    assert strip_wake_phrase("Hey everyone, welcome", "hey aiko") is None


def test_sound_key_merges_vowels_and_drops_a_leading_h() -> None:
    assert sound_key("Hydeal") == sound_key("idol") == "adal"


def test_gate_with_wake_phrase() -> None:
    gate = CommandGate("idol")
    assert gate.listening
    assert gate.command("Idol, wave.") == "wave"
    assert gate.command("nice weather") is None
    assert gate.command("Idol.") is None  # a bare wake phrase is no command


def test_gate_without_wake_phrase_takes_everything() -> None:
    gate = CommandGate("")
    assert gate.command("  look surprised. ") == "look surprised"
    assert gate.command("   ") is None


def test_push_to_talk() -> None:
    gate = CommandGate("idol", push_to_talk=True)
    assert not gate.listening  # nothing is listened to until the key is held
    assert gate.command("wave") is None
    gate.held = True
    assert gate.listening
    assert gate.command("wave to chat") == "wave to chat"  # no wake phrase needed while held
    assert gate.command("Idol, nod") == "nod"  # but it is stripped when said
    gate.held = False
    assert gate.command("wave", spoken_while_held=True) == "wave"  # said while held, decided after release
    assert gate.command("wave", spoken_while_held=False) is None
