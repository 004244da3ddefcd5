"""What every chat bridge shares: the bridge interface and the reconnect policy.

A bridge is an async context manager that yields typed events (backend.events.ChatEvent) and can send a
reply where the platform allows it::

    async with TwitchBridge(cfg.chat.twitch) as bridge:
        async for event in bridge.events():
            await director.handle(event)

``events()`` runs until the context exits: it reconnects by itself (with :class:`Backoff`), and one bad
message is logged and skipped, never fatal.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from backend.events import ChatEvent

__all__ = ["Backoff", "ChatBridge"]


class ChatBridge(Protocol):
    platform: str

    async def __aenter__(self) -> ChatBridge: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def events(self) -> AsyncIterator[ChatEvent]: ...

    async def send_reply(self, text: str, reply_to: str = "") -> bool:
        """Send ``text`` to chat; False (and a log line) where the platform or the login does not allow it."""
        ...


@dataclass
class Backoff:
    """Exponential backoff with full jitter, injectable into clients (tests pass a tiny base).

    ``next_delay()`` returns the seconds to wait before the next attempt; ``reset()`` after a connection
    that stayed up.
    """

    base_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        cap = min(self.max_s, self.base_s * self.factor ** self.attempt)
        self.attempt += 1
        return self.rng.uniform(cap / 2, cap)

    def reset(self) -> None:
        self.attempt = 0
