"""Which utterances are commands: the wake phrase (fuzzy) and push-to-talk. Pure: text in, command out.

Whisper rarely spells a short wake word the same way twice ("Idol," "Idle" "Hydeal" "I doll"), so the
match is fuzzy on the first words: their letters (difflib ratio) or a rough sound key (vowels merged, a
leading "h" dropped) must be close to the phrase's. A greeting may come before it ("hey idol, wave").

* ``push_to_talk``: what is said while the key is held is the command; a leading wake phrase is stripped.
* otherwise, with a wake phrase: only utterances starting with it are commands (the rest is chatter).
* no wake phrase: every utterance is a command.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

__all__ = ["CommandGate", "sound_key", "strip_wake_phrase"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)
_LEADERS = frozenset({"hey", "hi", "ok", "okay", "oh", "so", "yo", "hello", "um", "uh", "and"})
_VOWELS = re.compile(r"[aeiouy]+")
_SOUND_CUTOFF = 0.85


def sound_key(text: str) -> str:
    """A rough sound key: lower case letters only, a leading 'h' dropped, vowel runs merged to 'a'."""
    s = re.sub(r"[^a-z]", "", text.lower())
    if len(s) > 2 and s[0] == "h":
        s = s[1:]
    s = _VOWELS.sub("a", s)
    return re.sub(r"(.)\1+", r"\1", s)


def _close(heard: str, phrase: str, cutoff: float, *, by_sound: bool) -> bool:
    """Letters close (with or without a leading 'h'), or - for the same word count - sound keys very close."""
    a, b = heard.replace(" ", ""), phrase.replace(" ", "")
    spellings = {a, a[1:]} if len(a) > 2 and a[0] == "h" and b[0] != "h" else {a}
    if any(difflib.SequenceMatcher(None, x, b).ratio() >= cutoff for x in spellings):
        return True
    kb = sound_key(b)
    return by_sound and len(kb) > 1 and difflib.SequenceMatcher(None, sound_key(a), kb).ratio() >= _SOUND_CUTOFF


def strip_wake_phrase(text: str, phrase: str, *, cutoff: float = 0.74, max_lead: int = 2) -> str | None:
    """The command after the wake phrase, or None when the text does not start with it.

    ``strip_wake_phrase("Idle, wave to chat.", "idol") == "wave to chat"``. Up to ``max_lead`` greeting
    words may come first; the phrase may be heard as one word more or less than it has.
    """
    words = [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
    target = " ".join(_WORD.findall(phrase.lower()))
    if not target:
        return _tidy(text)
    n = len(target.split())
    for lead in range(min(max_lead, len(words)) + 1):
        if lead and words[lead - 1][0] not in _LEADERS:
            break
        best: tuple[float, int] | None = None
        for size in (n, n + 1, n - 1):
            if size < 1 or lead + size > len(words):
                continue
            heard = " ".join(w for w, _, _ in words[lead:lead + size])
            if _close(heard, target, cutoff, by_sound=size == n):
                score = difflib.SequenceMatcher(None, heard, target).ratio()
                if best is None or score > best[0]:
                    best = (score, size)
        if best is not None:
            end = words[lead + best[1] - 1][2]
            return _tidy(text[end:])
    return None


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip(" \t,.;:!?-—…，。！？、")
    return text


@dataclass
class CommandGate:
    """Wake phrase + push-to-talk state. ``command(text)`` -> the command text, or None (not for the idol)."""

    wake_phrase: str = "idol"
    push_to_talk: bool = False
    held: bool = False  # push-to-talk key state (only meaningful when push_to_talk)

    @property
    def listening(self) -> bool:
        """Whether audio should be listened to at all now."""
        return self.held or not self.push_to_talk

    def command(self, text: str, *, spoken_while_held: bool | None = None) -> str | None:
        """Decide for one transcript. ``spoken_while_held``: push-to-talk state when it was said
        (default: now). Returns None for chatter, an empty transcript or a bare wake phrase."""
        if self.push_to_talk:
            if not (self.held if spoken_while_held is None else spoken_while_held):
                return None
            cmd = strip_wake_phrase(text, self.wake_phrase) if self.wake_phrase else None
            cmd = _tidy(text) if cmd is None else cmd
        elif self.wake_phrase:
            cmd = strip_wake_phrase(text, self.wake_phrase)
        else:
            cmd = _tidy(text)
        return cmd or None
