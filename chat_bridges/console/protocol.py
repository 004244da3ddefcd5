"""The local console's line language, sans-I/O: one typed line -> one chat event (or a note for the typist).

Plain lines are chat from the current user, by default the streamer (role BROADCASTER). Slash commands
change who speaks or simulate what a platform would send::

    !dance                    chat as the current user
    /as viewer                following lines come from a viewer (viewer, sub, vip, mod, broadcaster)
    /as mod !skip             this one line as a moderator
    /user alice               following lines come from "alice"
    /bits 100 !wave           a cheer of 100 bits (PaidMessage kind "bits", 100 cents)
    /redeem !dance            a channel-point redemption (PaidMessage kind "redemption", 0 cents)
    /delete console-3         a moderator deletes message console-3 (``/delete`` alone: the last one)
    /ban alice [seconds]      ban (or time out) a user; /clear clears the whole chat
    //text                    a line that starts with "/" sent as chat
    /help                     this list

Every event gets a message id ``console-<n>`` (shown by the bridge) so ``/delete`` can name it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from backend.events import Ban, ChatEvent, ChatMessage, Deletion, PaidMessage, Role

__all__ = ["HELP", "ConsoleInputError", "ConsoleSession", "Note", "parse_role"]

PLATFORM = "console"

HELP = (__doc__ or "").split("::", 1)[1].split("Every event", 1)[0].strip("\n")

_ROLES = {
    "viewer": Role.VIEWER,
    "sub": Role.SUBSCRIBER,
    "subscriber": Role.SUBSCRIBER,
    "vip": Role.VIP,
    "mod": Role.MODERATOR,
    "moderator": Role.MODERATOR,
    "broadcaster": Role.BROADCASTER,
    "streamer": Role.BROADCASTER,
}


class ConsoleInputError(ValueError):
    """A console line that cannot be understood; the message says why and how to write it."""


@dataclass(frozen=True)
class Note:
    """Something to show the typist (help, a changed identity); not a chat event."""

    text: str


def parse_role(word: str) -> Role:
    try:
        return _ROLES[word.lower()]
    except KeyError:
        raise ConsoleInputError(f"unknown role {word!r}: use one of {', '.join(_ROLES)}") from None


class ConsoleSession:
    """The typist's identity and message counter. ``feed(line)`` -> event, :class:`Note` or None (blank line);
    raises :class:`ConsoleInputError` for a line it cannot understand."""

    def __init__(self, *, channel: str = "console", user_name: str = "streamer", role: Role = Role.BROADCASTER,
                 clock: Callable[[], float] = time.time):
        self.channel = channel
        self.user_name = user_name
        self.role = role
        self._clock = clock
        self._count = 0
        self.last_message_id = ""

    def _next_id(self) -> str:
        self._count += 1
        self.last_message_id = f"console-{self._count}"
        return self.last_message_id

    def _chat(self, text: str, role: Role | None = None) -> ChatMessage:
        if not text.strip():
            raise ConsoleInputError("empty message")
        return ChatMessage(PLATFORM, self.channel, f"console:{self.user_name}", self.user_name, text.strip(),
                           message_id=self._next_id(), role=self.role if role is None else role,
                           timestamp=self._clock())

    def feed(self, line: str) -> ChatEvent | Note | None:
        line = line.rstrip("\r\n")
        if not line.strip():
            return None
        if line.startswith("//"):
            return self._chat(line[1:])
        if not line.startswith("/"):
            return self._chat(line)
        command, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        command = command.lower()
        if command == "help":
            return Note(HELP)
        if command == "as":
            word, _, text = rest.partition(" ")
            if not word:
                raise ConsoleInputError("usage: /as <viewer|sub|vip|mod|broadcaster> [message]")
            role = parse_role(word)
            if text.strip():
                return self._chat(text, role)
            self.role = role
            return Note(f"now speaking as {self.user_name} ({role.name.lower()})")
        if command == "user":
            if not rest or " " in rest:
                raise ConsoleInputError("usage: /user <name> (one word)")
            self.user_name = rest
            return Note(f"now speaking as {self.user_name} ({self.role.name.lower()})")
        if command in ("bits", "redeem"):
            value = 0
            text = rest
            if command == "bits":
                amount, _, text = rest.partition(" ")
                if not amount.isdigit() or int(amount) <= 0:
                    raise ConsoleInputError(f"usage: /bits <positive whole number> [message], got {amount!r}")
                value = int(amount)
            elif not text:
                raise ConsoleInputError("usage: /redeem <reward text>")
            return PaidMessage(PLATFORM, self.channel, f"console:{self.user_name}", self.user_name, text.strip(),
                               value_cents=value, kind="bits" if command == "bits" else "redemption",
                               message_id=self._next_id(), role=self.role, timestamp=self._clock())
        if command == "delete":
            target = rest or self.last_message_id
            if not target or " " in target:
                raise ConsoleInputError("usage: /delete [message id], and nothing was sent yet to delete")
            return Deletion(PLATFORM, self.channel, target)
        if command == "ban":
            name, _, seconds = rest.partition(" ")
            if not name:
                raise ConsoleInputError("usage: /ban <user> [seconds]")
            try:
                duration = float(seconds) if seconds.strip() else 0.0
            except ValueError:
                raise ConsoleInputError(f"usage: /ban <user> [seconds], got seconds={seconds!r}") from None
            if duration < 0:
                raise ConsoleInputError(f"/ban: seconds must be >= 0, got {duration:g}")
            return Ban(PLATFORM, self.channel, f"console:{name}", user_name=name, duration_s=duration)
        if command == "clear":
            return Ban(PLATFORM, self.channel, user_id="")
        raise ConsoleInputError(f"unknown command /{command[:20]}: type /help (or // to send a line starting with /)")
