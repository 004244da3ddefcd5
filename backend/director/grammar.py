"""The chat command grammar: one (already normalised) chat line -> a :class:`Request`, or ``None`` and a reason.

Forms understood::

    !wave   !heart   !比心   !make a heart   !thumbs up   !look angry      an action / emotion by name or alias
    !act wave        !action 挥手   !动作 挥手                               an action by name or alias
    !emote angry     !emotion 开心  !表情 生气                               an emotion
    !say <text>      !说 <text>                                             what the idol says
    !prompt <text>   !提示 <text>                                           free text conditioning
    wave please      主播比心一下   touch your nose                          free text (no prefix), when enabled

Free text is matched to the nearest allowed action: the message is reduced to its *content units*
(English words and single CJK characters, with polite filler such as "please", "can you", "主播", "一下"
removed), and an alias hits when its occurrences cover at least :data:`FREE_TEXT_MIN_COVERAGE` of those
units ("wave please" -> wave; "nice smile" or "I love your wave" -> nothing).  Failing that, a small fuzzy
match (difflib, cutoff :data:`FUZZY_CUTOFF`) catches typos of a whole short request ("wavve", "hart").
Greetings and emoji aliases ("你好", "hello", "❤") only work with the prefix: in free text they are ordinary
chatter.
Negated free text ("don't wave", "别挥手") asks for nothing.  The streamer's free text may use the looser
:data:`STREAMER_MIN_COVERAGE` ("wave to chat" -> wave), passed as ``min_coverage``.

The grammar is pure: no clock, no I/O, no knowledge of who sent the line (moderation and policy decide that).
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from backend.actions import ACTIONS, EMOTIONS
from backend.events import CommandKind

__all__ = [
    "FREE_TEXT_MIN_COVERAGE",
    "FUZZY_CUTOFF",
    "STREAMER_MIN_COVERAGE",
    "Alias",
    "Grammar",
    "ParseResult",
    "Request",
    "content_units",
    "is_cjk",
]

FREE_TEXT_MIN_COVERAGE = 0.6  # share of a message's content units an alias must cover in free text
# The streamer talks to the idol in imperatives with a target ("wave to chat", "wave at the camera"): their
# free text may be looser (viewers' chatter keeps FREE_TEXT_MIN_COVERAGE).
STREAMER_MIN_COVERAGE = 0.5
FUZZY_CUTOFF = 0.85  # difflib ratio for a typo of a whole request (free text); prefixed commands use PREFIX_FUZZY_CUTOFF
PREFIX_FUZZY_CUTOFF = 0.75
FUZZY_MIN_CHARS = 4  # shorter requests are never fuzzy-matched ("bow" vs "wow")


@dataclass(frozen=True)
class Request:
    """What a chat line asks for. ``via``: "command" (!act/!emote/!say/!prompt), "alias", "free_text", "fuzzy"."""

    kind: CommandKind
    argument: str
    via: str
    score: float = 1.0


@dataclass(frozen=True)
class ParseResult:
    request: Request | None
    reason: str  # why (or how) it matched; "no_command", "unknown_command ..." when request is None

    def __bool__(self) -> bool:
        return self.request is not None


@dataclass(frozen=True)
class Alias:
    phrase: str
    kind: CommandKind
    argument: str
    free: bool = True  # usable in free text (no prefix)


# ----------------------------------------------------------------------------- vocabulary

_ACTION_ALIASES: dict[str, tuple[str, ...]] = {
    "wave": ("wave", "wave hand", "wave your hand", "挥手", "挥挥手", "招手"),
    "heart": ("heart", "make a heart", "heart hands", "finger heart", "比心", "笔芯", "比个心", "爱心"),
    "like": ("like", "thumbs up", "thumb up", "thumbsup", "点赞", "点个赞", "赞"),
    "touch_nose": ("touch nose", "touch your nose", "touch_nose", "摸鼻子", "摸摸鼻子"),
    "blink": ("blink", "wink", "眨眼", "眨眨眼"),
    "racket": ("racket", "tennis", "tennis racket", "racquet", "网球", "球拍", "网球拍"),
    "angry": ("angry", "生气"),
    "smile": ("smile", "微笑", "笑一个"),
    "nod": ("nod", "nod yes", "点头", "点点头"),
    "shake_head": ("shake head", "shake your head", "shake_head", "摇头", "摇摇头"),
    "surprise": ("surprise", "惊讶", "吃惊"),
    "bow": ("bow", "鞠躬"),
}
_PREFIX_ONLY_ACTION_ALIASES: dict[str, tuple[str, ...]] = {"heart": ("❤", "♥", "💕"), "like": ("👍",)}

_EMOTION_WORDS: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral", "calm", "normal", "平静", "正常"),
    "happy": ("happy", "glad", "joyful", "开心", "高兴", "快乐"),
    "angry": ("angry", "mad", "生气", "愤怒"),
    "surprised": ("surprised", "shocked", "吃惊", "惊讶"),
    "sad": ("sad", "upset", "难过", "伤心", "悲伤"),
}
_NEGATIONS_EN = frozenset("don't dont not never stop no".split())  # "don't wave" asks for nothing
_NEGATIONS_ZH = ("不要", "别")
_EMOTION_LEADS = ("look", "be", "feel", "get")  # "look angry" -> emotion angry

_GREETINGS: dict[str, str] = {"你好": "你好！", "大家好": "大家好！", "hello": "Hello!", "hi": "Hi!"}

_HEADS: dict[str, str] = {
    "act": "act", "action": "act", "do": "act", "动作": "act",
    "emote": "emotion", "emotion": "emotion", "mood": "emotion", "表情": "emotion", "情绪": "emotion",
    "say": "say", "说": "say",
    "prompt": "prompt", "提示": "prompt",
}
_CJK_HEADS = tuple(sorted((h for h in _HEADS if not h.isascii()), key=len, reverse=True))

_EN_FILLER = frozenset(
    "please pls plz can could would will you u ya do a an the me us for again now some one give show idol "
    "just ok okay hey to at your ur my oh pretty quick quickly".split()
)
_ZH_FILLER = tuple(sorted(
    ("请", "主播", "一下", "一个", "可以", "能不能", "能", "吗", "嘛", "吧", "呀", "啊", "哦", "呢", "给我们",
     "给我", "给", "我们", "来个", "来", "再", "下", "了", "宝宝", "老婆", "个"),
    key=len, reverse=True,
))


def is_cjk(ch: str) -> bool:
    """True for Han, kana and Hangul characters (they carry a word each, without spaces)."""
    o = ord(ch)
    return (0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF
            or 0xAC00 <= o <= 0xD7AF or 0xF900 <= o <= 0xFAFF)


def content_units(text: str) -> list[str]:
    """The content of ``text`` for matching: lower-case English words and single CJK characters / symbols,
    polite filler removed. ``content_units("Can you 比心 please!!")`` -> ``["比", "心"]``."""
    text = text.casefold().replace("_", " ")
    for filler in _ZH_FILLER:
        text = text.replace(filler, " ")
    units: list[str] = []
    word: list[str] = []

    def flush() -> None:
        if word:
            w = "".join(word).strip("'")
            if w and w not in _EN_FILLER:
                units.append(w)
            word.clear()

    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch == "'"):
            word.append(ch)
            continue
        flush()
        if is_cjk(ch) or unicodedata.category(ch) == "So":
            units.append(ch)
    flush()
    return units


def _joined(units: list[str]) -> str:
    return " ".join(units)


def _coverage(message: list[str], alias: list[str]) -> float:
    """Share of ``message`` covered by non-overlapping occurrences of ``alias``."""
    if not message or not alias:
        return 0.0
    covered, i, n = 0, 0, len(alias)
    while i <= len(message) - n:
        if message[i:i + n] == alias:
            covered += n
            i += n
        else:
            i += 1
    return covered / len(message)


class Grammar:
    """Parses normalised chat lines (see :func:`backend.director.moderation.normalize`) into requests.

    ``free_text_actions``: the actions free text may resolve to (default: every non-looping action);
    prefixed commands may name any action of the library (moderation decides whether it is allowed).
    """

    def __init__(self, prefix: str = "!", *, free_text: bool = True,
                 free_text_actions: Iterable[str] | None = None, free_text_prompts: bool = False) -> None:
        if not prefix.strip():
            raise ValueError("director prefix must not be empty or blank")
        self.prefix = prefix
        self.free_text = free_text
        self.free_text_prompts = free_text_prompts  # the Wan tier: free text is a prompt, embedded as it is
        library = {a.name for a in ACTIONS}
        free_actions = (set(free_text_actions) if free_text_actions is not None
                        else {a.name for a in ACTIONS if not a.loop})
        unknown = free_actions - library
        if unknown:
            raise ValueError(f"free_text_actions: unknown actions {sorted(unknown)} (known: {sorted(library)})")
        self.free_text_actions = frozenset(free_actions)
        aliases: list[Alias] = [Alias(a.name, CommandKind.ACT, a.name, free=False) for a in ACTIONS]
        for name, phrases in _ACTION_ALIASES.items():
            aliases += [Alias(p, CommandKind.ACT, name) for p in phrases]
        for name, phrases in _PREFIX_ONLY_ACTION_ALIASES.items():
            aliases += [Alias(p, CommandKind.ACT, name, free=False) for p in phrases]
        for emotion, words in _EMOTION_WORDS.items():
            for w in words:
                if w.isascii():
                    aliases += [Alias(f"{lead} {w}", CommandKind.EMOTION, emotion) for lead in _EMOTION_LEADS]
        aliases += [Alias(p, CommandKind.SAY, said, free=False) for p, said in _GREETINGS.items()]
        self.aliases: tuple[Alias, ...] = tuple(aliases)
        self._alias_units = [(a, content_units(a.phrase)) for a in self.aliases]
        self._alias_units = [(a, u) for a, u in self._alias_units if u]
        self._emotions = {w.casefold(): e for e, words in _EMOTION_WORDS.items() for w in words}
        self._emotions.update({e: e for e in EMOTIONS})
        self._actions_by_phrase = {
            _joined(u): a.argument for a, u in self._alias_units if a.kind is CommandKind.ACT
        }

    # ------------------------------------------------------------------------- public

    def parse(self, text: str, *, free_text: bool | None = None, bare_commands: bool = False,
              any_action: bool = False, min_coverage: float = FREE_TEXT_MIN_COVERAGE) -> ParseResult:
        """Parse one line. ``free_text`` overrides the configured setting (paid messages always use it);
        ``bare_commands`` also accepts command words without the prefix ("say hello"), ``any_action`` lets
        free text reach every action, not only ``free_text_actions``, and ``min_coverage`` is the share of
        free text an alias must cover (:data:`STREAMER_MIN_COVERAGE` for the streamer)."""
        text = text.strip()
        if not text:
            return ParseResult(None, "empty")
        if text.startswith(self.prefix):
            return self._parse_prefixed(text[len(self.prefix):].strip())
        if bare_commands:
            result = self._parse_command_word(text)
            if result is not None:
                return result
        if not (self.free_text if free_text is None else free_text):
            return ParseResult(None, "no_command")
        return self._match_free(text, any_action=any_action, min_coverage=min_coverage)

    def emotion(self, word: str) -> str | None:
        """The emotion named by ``word`` (English or Chinese alias, small typos allowed), or None."""
        key = word.strip().casefold()
        if key in self._emotions:
            return self._emotions[key]
        close = difflib.get_close_matches(key, list(self._emotions), n=1, cutoff=PREFIX_FUZZY_CUTOFF)
        return self._emotions[close[0]] if close and len(key) >= FUZZY_MIN_CHARS else None

    def action(self, phrase: str) -> str | None:
        """The action named by ``phrase`` (name or alias, small typos allowed), or None."""
        units = content_units(phrase)
        if not units:
            return None
        key = _joined(units)
        if key in self._actions_by_phrase:
            return self._actions_by_phrase[key]
        if len(key) >= FUZZY_MIN_CHARS:
            close = difflib.get_close_matches(key, list(self._actions_by_phrase), n=1, cutoff=PREFIX_FUZZY_CUTOFF)
            if close:
                return self._actions_by_phrase[close[0]]
        return None

    # ------------------------------------------------------------------------- internals

    def _split_head(self, rest: str) -> tuple[str, str, str] | None:
        """(command, head word, tail) when ``rest`` starts with a command word, else None."""
        head, _, tail = rest.partition(" ")
        cmd = _HEADS.get(head.casefold())
        if cmd is not None:
            return cmd, head, tail.strip()
        for h in _CJK_HEADS:
            if rest.startswith(h):
                return _HEADS[h], h, rest[len(h):].strip()
        return None

    def _parse_command_word(self, rest: str) -> ParseResult | None:
        split = self._split_head(rest)
        if split is None:
            return None
        cmd, head, tail = split
        if not tail:
            return ParseResult(None, f"missing_argument for {head!r}")
        if cmd == "say":
            return ParseResult(Request(CommandKind.SAY, tail, "command"), "say")
        if cmd == "prompt":
            return ParseResult(Request(CommandKind.PROMPT, tail, "command"), "prompt")
        if cmd == "emotion":
            emotion = self.emotion(tail)
            if emotion is None:
                return ParseResult(None, f"unknown_emotion {tail!r} (known: {', '.join(EMOTIONS)})")
            return ParseResult(Request(CommandKind.EMOTION, emotion, "command"), "emotion")
        name = self.action(tail)
        if name is None:
            return ParseResult(None, f"unknown_action {tail!r}")
        return ParseResult(Request(CommandKind.ACT, name, "command"), "act")

    def _parse_prefixed(self, rest: str) -> ParseResult:
        if not rest:
            return ParseResult(None, "empty_command")
        result = self._parse_command_word(rest)
        if result is not None:
            return result
        units = content_units(rest)
        key = _joined(units)
        for alias, au in self._alias_units:
            if au == units:
                return ParseResult(Request(alias.kind, alias.argument, "alias"), f"alias {alias.phrase!r}")
        hit = self._best_cover(units, free_only=False)
        if hit is not None:
            return hit
        if len(key) >= FUZZY_MIN_CHARS:
            fuzzy = self._fuzzy(key, PREFIX_FUZZY_CUTOFF, free_only=False)
            if fuzzy is not None:
                return fuzzy
        return ParseResult(None, f"unknown_command {rest[:40]!r}")

    def _usable(self, alias: Alias, free_only: bool, any_action: bool) -> bool:
        if not free_only:
            return True
        if not alias.free:
            return False
        return any_action or alias.kind is not CommandKind.ACT or alias.argument in self.free_text_actions

    def _best_cover(self, units: list[str], *, free_only: bool, any_action: bool = False,
                    min_coverage: float = FREE_TEXT_MIN_COVERAGE) -> ParseResult | None:
        best: tuple[float, int, Alias] | None = None
        for alias, au in self._alias_units:
            if not self._usable(alias, free_only, any_action):
                continue
            cov = _coverage(units, au)
            if cov >= min_coverage and (best is None or (cov, len(au)) > best[:2]):
                best = (cov, len(au), alias)
        if best is None:
            return None
        cov, _, alias = best
        return ParseResult(Request(alias.kind, alias.argument, "free_text" if free_only else "alias", round(cov, 3)),
                           f"alias {alias.phrase!r} covers {cov:.0%}")

    def _fuzzy(self, key: str, cutoff: float, *, free_only: bool, any_action: bool = False) -> ParseResult | None:
        candidates = {_joined(au): alias for alias, au in self._alias_units
                      if self._usable(alias, free_only, any_action) and _joined(au).isascii()}
        close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=cutoff)
        if not close:
            return None
        alias = candidates[close[0]]
        score = difflib.SequenceMatcher(None, key, close[0]).ratio()
        return ParseResult(Request(alias.kind, alias.argument, "fuzzy", round(score, 3)),
                           f"fuzzy {key!r} ~ {alias.phrase!r} ({score:.2f})")

    def _match_free(self, text: str, *, any_action: bool = False,
                    min_coverage: float = FREE_TEXT_MIN_COVERAGE) -> ParseResult:
        units = content_units(text)
        if self.free_text_prompts and units:  # no nearest-action mapping: only an exact alias is an action
            for alias, au in self._alias_units:
                if au == units and alias.free:
                    return ParseResult(Request(alias.kind, alias.argument, "alias"), f"alias {alias.phrase!r}")
            return ParseResult(Request(CommandKind.PROMPT, text, "free_text"), "prompt (free text as it is)")
        if not units or _NEGATIONS_EN.intersection(units) or any(n in text for n in _NEGATIONS_ZH):
            return ParseResult(None, "no_command")
        hit = self._best_cover(units, free_only=True, any_action=any_action, min_coverage=min_coverage)
        if hit is not None:
            return hit
        key = _joined(units)
        if key.isascii() and len(key) >= FUZZY_MIN_CHARS and len(units) <= 3:
            fuzzy = self._fuzzy(key, FUZZY_CUTOFF, free_only=True, any_action=any_action)
            if fuzzy is not None:
                return fuzzy
        return ParseResult(None, "no_command")
