"""What the idol does about what she perceives: percept events -> reactions, with cooldowns.

Pure and synchronous (time is passed in). The service hands each :class:`~backend.perception.analysis.Percept`
to :meth:`Reactor.react`, which returns the reactions due now; the service sends them to the director
(``Director.handle_reaction``), which queues actions below every viewer and drops them when stale.

    streamer waves          -> she waves back        (act wave)
    streamer smiles         -> she smiles            (act smile)
    heart hands             -> she answers a heart   (act heart)
    streamer looks sad      -> a gentle, concerned look (emotion sad)
    thumbs-up               -> a thumbs-up back      (act like)
    nod / head shake        -> she nods / shakes her head
    streamer looks surprised -> she is surprised too (act surprise)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backend.config import REACTIONS
from backend.events import CommandKind

from .analysis import Percept

__all__ = ["REACTION_COMMANDS", "Reaction", "Reactor"]

# percept event -> (reaction name in config, command kind, argument)
REACTION_COMMANDS: dict[str, tuple[CommandKind, str]] = {
    "wave": (CommandKind.ACT, "wave"),
    "smile": (CommandKind.ACT, "smile"),
    "heart": (CommandKind.ACT, "heart"),
    "sad": (CommandKind.EMOTION, "sad"),
    "thumbs_up": (CommandKind.ACT, "like"),
    "nod": (CommandKind.ACT, "nod"),
    "head_shake": (CommandKind.ACT, "shake_head"),
    "surprised": (CommandKind.ACT, "surprise"),
}
assert set(REACTION_COMMANDS) == set(REACTIONS), "backend.config.REACTIONS and REACTION_COMMANDS disagree"
# when one picture starts several signs, the most deliberate gesture wins
_ORDER = ("heart", "wave", "thumbs_up", "nod", "head_shake", "surprised", "smile", "sad")


@dataclass(frozen=True)
class Reaction:
    name: str  # the percept event it answers ("wave", "smile" ...)
    kind: CommandKind
    argument: str
    at: float  # the percept's time
    seen_at: float  # when the picture that showed it was taken (for latency figures)


class Reactor:
    """At most one reaction per picture; each reaction rests ``cooldown_s``, all of them ``global_cooldown_s``."""

    def __init__(self, enabled: tuple[str, ...] = REACTIONS, *, cooldown_s: float = 10.0,
                 global_cooldown_s: float = 3.0) -> None:
        unknown = set(enabled) - set(REACTION_COMMANDS)
        if unknown:
            raise ValueError(f"unknown reactions {sorted(unknown)} (known: {', '.join(REACTION_COMMANDS)})")
        self.enabled = frozenset(enabled)
        self.cooldown_s, self.global_cooldown_s = cooldown_s, global_cooldown_s
        self._last: dict[str, float] = {}
        self._last_any = -math.inf

    def react(self, percept: Percept, *, seen_at: float | None = None) -> Reaction | None:
        now = percept.at
        if now - self._last_any < self.global_cooldown_s:
            return None
        for name in _ORDER:
            if name not in percept.events or name not in self.enabled:
                continue
            if now - self._last.get(name, -math.inf) < self.cooldown_s:
                continue
            self._last[name] = self._last_any = now
            kind, argument = REACTION_COMMANDS[name]
            return Reaction(name, kind, argument, now, now if seen_at is None else seen_at)
        return None
