"""Moderation: what a chat line may contain and who may ask for what.

* :func:`normalize` - Unicode NFKC (full-width ``！ｗａｖｅ`` -> ``!wave``), control / zero-width / format
  characters removed, whitespace collapsed.  Everything downstream sees only normalised text.
* :class:`BlockList` - blocked words, case-insensitive and after normalisation, matched as substrings (safe for
  CJK, which has no word boundaries) both in the text as written and in a *squashed* copy without spaces and
  punctuation, so ``b.a.d`` and ``b a d`` hit ``bad``.  The price is the Scunthorpe problem: a blocked ``ass``
  also blocks ``class``; the streamer's list should hold whole, unambiguous words.
* :class:`Dedup` - one viewer's identical (normalised) message within a window is spam.
* :class:`Moderator` - the checks above plus length limits, mod-only actions and the streamer's allowlist,
  each raising :class:`Rejected` with a short machine reason and a human detail.

Pure and synchronous; the clock is passed in.
"""

from __future__ import annotations

import re
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable

from backend.actions import ACTION_INDEX
from backend.config import DirectorConfig
from backend.events import Role

__all__ = ["BlockList", "Dedup", "DirectorError", "Moderator", "Rejected", "fold", "normalize"]


class DirectorError(Exception):
    """Base of the director's errors."""


class Rejected(DirectorError):
    """A request was refused. ``reason`` is a short machine word (logged as reason=...), ``detail`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# Characters that render as nothing (or nearly) and are used to dodge filters; categories Cc/Cf cover
# control characters, ZWSP/ZWJ/ZWNJ, BOM, soft hyphen, bidi controls; the rest are listed explicitly.
_INVISIBLE_EXTRA = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u3164\uffa0") | frozenset(
    chr(c) for c in range(0xFE00, 0xFE10)  # variation selectors
)
_SPACE_RE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, invisible characters removed, runs of whitespace (tabs, newlines, ideographic space) -> one space."""
    text = unicodedata.normalize("NFKC", text)
    out = []
    for ch in text:
        if ch in "\t\n\r":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") or ch in _INVISIBLE_EXTRA:
            continue
        else:
            out.append(ch)
    return _SPACE_RE.sub(" ", "".join(out)).strip()


def fold(text: str) -> str:
    """Normalised and case-folded: the form used for comparisons."""
    return normalize(text).casefold()


def _squash(text: str) -> str:
    """Only letters, digits and CJK/other symbols: separators and punctuation removed."""
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LNS")


class BlockList:
    """Blocked words. ``find(text)`` returns the first blocked word found in ``text`` (or None)."""

    def __init__(self, words: Iterable[str]) -> None:
        folded = [(w, fold(w)) for w in words]
        self.words = tuple(w for w, f in folded if f)
        self._plain = [(w, f) for w, f in folded if f]
        self._squashed = [(w, _squash(f)) for w, f in self._plain if _squash(f)]

    def find(self, text: str) -> str | None:
        if not self._plain:
            return None
        folded = fold(text)
        for word, f in self._plain:
            if f in folded:
                return word
        squashed = _squash(folded)
        for word, s in self._squashed:
            if s in squashed:
                return word
        return None

    def __bool__(self) -> bool:
        return bool(self._plain)


class Dedup:
    """Remembers (user, folded text) for ``window_s``; ``seen()`` is True for a repeat inside the window.

    A repeat refreshes the window (a spammer stays deduplicated). Bounded: the oldest entries go first.
    """

    def __init__(self, window_s: float, *, max_entries: int = 4096) -> None:
        self.window_s = window_s
        self.max_entries = max_entries
        self._last: OrderedDict[tuple[str, str], float] = OrderedDict()

    def seen(self, user_key: str, text: str, now: float) -> bool:
        if self.window_s <= 0:
            return False
        self._expire(now)
        key = (user_key, fold(text))
        repeat = key in self._last
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.max_entries:
            self._last.popitem(last=False)
        return repeat

    def _expire(self, now: float) -> None:
        while self._last:
            key, at = next(iter(self._last.items()))
            if now - at < self.window_s:
                break
            del self._last[key]

    def clear(self) -> None:
        self._last.clear()


class Moderator:
    """The director's content and permission checks, configured by :class:`DirectorConfig`."""

    def __init__(self, cfg: DirectorConfig) -> None:
        for name in (*cfg.allowed_actions, *cfg.mod_only_actions):
            if name not in ACTION_INDEX:
                raise ValueError(f"director: unknown action {name!r} in allowed/mod-only actions "
                                 f"(known: {', '.join(ACTION_INDEX)})")
        self.cfg = cfg
        self.blocklist = BlockList(cfg.blocked_words)
        self.dedup = Dedup(cfg.dedup_window_s)
        self.allowed = frozenset(cfg.allowed_actions)
        self.mod_only = frozenset(cfg.mod_only_actions)

    def clean_message(self, text: str) -> str:
        """Normalise a viewer's line; :class:`Rejected` ("too_long", "empty") when it cannot be considered."""
        text = normalize(text)
        if not text:
            raise Rejected("empty", "nothing left after normalisation")
        if len(text) > self.cfg.max_message_chars:
            raise Rejected("too_long", f"{len(text)} > {self.cfg.max_message_chars} chars")
        return text

    def check_blocked(self, text: str, *, what: str = "request") -> None:
        word = self.blocklist.find(text)
        if word is not None:
            # the word itself is not repeated into logs: it is offensive by definition
            raise Rejected("blocked_word", f"{what} contains a blocked word")

    def check_say(self, text: str, *, limit: bool = True) -> str:
        """What the idol will say: normalised, blocked words refused, at most ``max_say_chars`` (if ``limit``)."""
        text = normalize(text)
        if not text:
            raise Rejected("empty", "nothing to say")
        self.check_blocked(text, what="say text")
        if limit and len(text) > self.cfg.max_say_chars:
            raise Rejected("say_too_long", f"{len(text)} > {self.cfg.max_say_chars} chars")
        return text

    def check_action(self, name: str, role: Role) -> None:
        """Mod-only actions need a moderator; others must be on the allowlist (when there is one).

        The broadcaster may ask for anything; moderators may also ask for mod-only actions off the allowlist.
        """
        if name not in ACTION_INDEX:
            raise Rejected("unknown_action", repr(name))
        if role >= Role.BROADCASTER:
            return
        if name in self.mod_only:
            if role < Role.MODERATOR:
                raise Rejected("mod_only", f"{name} is for moderators")
            return
        if self.allowed and name not in self.allowed:
            raise Rejected("not_allowed", f"{name} is not on the streamer's allowlist")

    def is_duplicate(self, user_key: str, text: str, now: float) -> bool:
        return self.dedup.seen(user_key, text, now)
