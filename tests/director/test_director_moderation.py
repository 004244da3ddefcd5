"""Moderation: NFKC and invisible-character tricks, blocked words (CJK too), length limits, dedup, permissions."""

from __future__ import annotations

import dataclasses

import pytest

from backend.config import DirectorConfig
from backend.director.moderation import BlockList, Dedup, Moderator, Rejected, normalize
from backend.events import Role


def test_normalize_nfkc_and_invisible_characters() -> None:
    assert normalize("！ｗａｖｅ") == "!wave"  # full-width
    assert normalize("!w\u200bav\u200de\ufeff") == "!wave"  # zero-width space / joiner, BOM
    assert normalize("!wa\u00adve\x07") == "!wave"  # soft hyphen, BEL
    assert normalize("  say\u3000hi\n\tthere ") == "say hi there"  # ideographic space, newline, tab
    assert normalize("\u202eevaw!") == "evaw!"  # bidi override removed
    assert normalize("ﬁne ①") == "fine 1"  # ligature, circled digit


@pytest.mark.parametrize("text", [
    "you are BADWORD", "b\u200badword", "ＢＡＤＷＯＲＤ", "b.a.d.w.o.r.d", "b a d w o r d", "xxbadwordxx",
    "这是坏词呀", "坏\u200b词", "坏 词",
])
def test_blocklist_hits_through_tricks(text: str) -> None:
    bl = BlockList(["badword", "坏词"])
    assert bl.find(text) is not None, text


@pytest.mark.parametrize("text", ["good words only", "bad", "a word", "坏的词", ""])
def test_blocklist_misses(text: str) -> None:
    bl = BlockList(["badword", "坏词"])
    assert bl.find(text) is None, text
    assert not BlockList([])
    assert BlockList(["", "  "]).find("anything") is None


def _mod(**kw: object) -> Moderator:
    return Moderator(dataclasses.replace(DirectorConfig(), **kw))


def test_length_limits_name_the_numbers() -> None:
    m = _mod(max_message_chars=10, max_say_chars=5)
    assert m.clean_message(" !wave\u200b ") == "!wave"
    with pytest.raises(Rejected) as exc:
        m.clean_message("x" * 11)
    assert exc.value.reason == "too_long" and "11 > 10" in exc.value.detail
    with pytest.raises(Rejected) as exc:
        m.clean_message("\u200b\u200b")
    assert exc.value.reason == "empty"
    with pytest.raises(Rejected) as exc:
        m.check_say("hello there")
    assert exc.value.reason == "say_too_long"
    assert m.check_say("hello there", limit=False) == "hello there"


def test_blocked_words_in_say_text() -> None:
    m = _mod(blocked_words=("Secret",))
    with pytest.raises(Rejected) as exc:
        m.check_say("the s\u200becret is out")
    assert exc.value.reason == "blocked_word"
    assert "secret" not in str(exc.value).lower()  # the word itself is not echoed into logs
    assert m.check_say("all fine") == "all fine"


def test_mod_only_and_allowlist() -> None:
    m = _mod(allowed_actions=("wave", "heart"), mod_only_actions=("racket",))
    m.check_action("wave", Role.VIEWER)
    with pytest.raises(Rejected, match="not_allowed"):
        m.check_action("bow", Role.SUBSCRIBER)
    with pytest.raises(Rejected, match="mod_only"):
        m.check_action("racket", Role.VIP)
    m.check_action("racket", Role.MODERATOR)
    with pytest.raises(Rejected, match="not_allowed"):
        m.check_action("bow", Role.MODERATOR)
    m.check_action("bow", Role.BROADCASTER)  # the broadcaster may ask for anything
    with pytest.raises(ValueError, match="dance"):
        _mod(allowed_actions=("dance",))


def test_dedup_window_per_user_and_refresh() -> None:
    d = Dedup(10.0)
    assert not d.seen("u1", "!wave", 0.0)
    assert d.seen("u1", "！ＷＡＶＥ", 5.0)  # same after normalisation and case folding
    assert not d.seen("u2", "!wave", 5.0)  # another viewer
    assert d.seen("u1", "!wave", 14.0)  # a repeat refreshed the window at t=5
    assert not d.seen("u1", "!wave", 24.5)
    assert not Dedup(0.0).seen("u", "x", 0.0) and not Dedup(0.0).seen("u", "x", 0.0)


def test_dedup_is_bounded() -> None:
    d = Dedup(100.0, max_entries=3)
    for i in range(5):
        d.seen("u", f"msg {i}", float(i))
    assert not d.seen("u", "msg 0", 6.0)  # forgotten: the oldest went first
    assert d.seen("u", "msg 4", 6.0)
