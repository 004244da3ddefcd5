"""Helpers for the director tests (imported by conftest.py and the tests as tests.director.director_kit)."""

from __future__ import annotations

from typing import Any

from backend.events import ChatMessage, Command, PaidMessage, Role


class FakeClock:
    """A monotonic clock the test moves by hand; nothing ever sleeps on it."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


class Recorder:
    """The engine side: records every command sent to it."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    async def __call__(self, command: Command) -> None:
        self.commands.append(command)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(c.kind.value, c.argument) for c in self.commands]


class Replies:
    """The chat side of ``reply(platform, text)``; ``allowed=False`` plays a platform without replies."""

    def __init__(self, allowed: bool = True) -> None:
        self.sent: list[tuple[str, str]] = []
        self.allowed = allowed

    async def __call__(self, platform: str, text: str) -> bool:
        if self.allowed:
            self.sent.append((platform, text))
        return self.allowed


_ids = iter(range(1, 10**9))


def chat(text: str, user: str = "alice", role: Role = Role.VIEWER, platform: str = "twitch",
         message_id: str | None = None, **kw: Any) -> ChatMessage:
    return ChatMessage(platform=platform, channel="chan", user_id=f"id-{user}", user_name=user, text=text,
                       message_id=message_id or f"m{next(_ids)}", role=role, **kw)


def paid(text: str, cents: int, user: str = "payer", kind: str = "bits", platform: str = "twitch",
         role: Role = Role.VIEWER) -> PaidMessage:
    return PaidMessage(platform=platform, channel="chan", user_id=f"id-{user}", user_name=user, text=text,
                       value_cents=cents, kind=kind, message_id=f"m{next(_ids)}", role=role)
