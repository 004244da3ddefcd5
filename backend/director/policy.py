"""Policy: who goes first and how often - priority tiers, the bounded priority queue, cooldowns, the
rate-limited cooldown reply, per-user limits per stream and vote mode.

Priority (higher first, FIFO within equal keys)::

    STREAMER  the streamer's own voice / control commands
    STAFF     broadcaster and moderators in chat (they also bypass cooldowns and limits)
    PAID      bits, super chats, gifts, guard buys, redemptions - higher value first
    MEMBER    subscribers and VIPs
    VIEWER    everyone else (and the winner of a chat vote)
    REACTION  the idol's own reactions to what the camera sees (below every viewer; they expire)

Pure and synchronous; every time is passed in as ``now`` (seconds on the director's clock).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from backend.events import Command, Role

from .moderation import Rejected

__all__ = [
    "CommandQueue",
    "Cooldowns",
    "QueueItem",
    "ReplyLimiter",
    "Tier",
    "UsageLimits",
    "VoteBox",
    "VoteResult",
    "tier_for",
    "wait_seconds",
]


class Tier(enum.IntEnum):
    REACTION = -1
    VIEWER = 0
    MEMBER = 1
    PAID = 2
    STAFF = 3
    STREAMER = 4


def tier_for(role: Role, *, paid: bool = False) -> Tier:
    if role >= Role.MODERATOR:
        return Tier.STAFF
    if paid:
        return Tier.PAID
    if role >= Role.SUBSCRIBER:
        return Tier.MEMBER
    return Tier.VIEWER


@dataclass
class QueueItem:
    """A queued command and who asked for it."""

    command: Command
    tier: Tier
    value_cents: int = 0
    seq: int = 0  # arrival order, set by the queue
    platform: str = ""
    user_key: str = ""  # platform:user id (see Director), "" for the streamer
    message_id: str = ""
    duration_s: float = 0.0
    held: bool = False  # waiting for the streamer's approval (approval mode)
    expires_at: float = math.inf  # dropped when not dispatched by then (reactions)

    @property
    def key(self) -> tuple[int, int, int]:
        """Sort key: smaller is served first."""
        return (-int(self.tier), -self.value_cents, self.seq)


class CommandQueue:
    """A bounded priority queue. ``push`` of a full queue evicts the lowest-priority item (returned), or
    raises :class:`Rejected` ("queue_full") when the new item is itself the lowest."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"queue size must be >= 1, got {size}")
        self.size = size
        self._items: list[QueueItem] = []
        self._seq = 0

    def push(self, item: QueueItem) -> QueueItem | None:
        self._seq += 1
        item.seq = self._seq
        evicted = None
        if len(self._items) >= self.size:
            lowest = self._items[-1]
            if item.key > lowest.key:
                raise Rejected("queue_full", f"{len(self._items)} queued, all of higher priority")
            evicted = self._items.pop()
        self._items.append(item)
        self._items.sort(key=lambda i: i.key)
        return evicted

    def pop(self) -> QueueItem | None:
        """The first item not held for approval (held items keep their place)."""
        for n, item in enumerate(self._items):
            if not item.held:
                return self._items.pop(n)
        return None

    def remove_where(self, pred: Callable[[QueueItem], bool]) -> list[QueueItem]:
        gone = [i for i in self._items if pred(i)]
        self._items = [i for i in self._items if not pred(i)]
        return gone

    def promote(self, command_id: str, tier: Tier = Tier.STREAMER) -> QueueItem | None:
        """Raise an item to ``tier`` and release it if held (the streamer's "approve": play it next)."""
        for item in self._items:
            if item.command.command_id == command_id:
                item.tier = tier
                item.held = False
                self._seq += 1
                item.seq = self._seq  # behind what already has that tier: approvals play in order
                self._items.sort(key=lambda i: i.key)
                return item
        return None

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[QueueItem]:
        return iter(list(self._items))

    def clear(self) -> list[QueueItem]:
        gone, self._items = self._items, []
        return gone


class Cooldowns:
    """Per-user and global cooldowns between accepted commands."""

    def __init__(self, user_s: float, global_s: float) -> None:
        self.user_s = user_s
        self.global_s = global_s
        self._user_last: dict[str, float] = {}
        self._global_last: float | None = None

    def remaining(self, user_key: str, now: float) -> float:
        """Seconds until ``user_key`` may ask again (0 when free)."""
        left = 0.0
        last = self._user_last.get(user_key)
        if last is not None:
            left = max(left, last + self.user_s - now)
        if self._global_last is not None:
            left = max(left, self._global_last + self.global_s - now)
        return max(0.0, left)

    def record(self, user_key: str, now: float) -> None:
        self._user_last[user_key] = now
        self._global_last = now
        if len(self._user_last) > 8192:  # bounded: forget users whose cooldown is long over
            self._user_last = {k: t for k, t in self._user_last.items() if now - t < self.user_s}


def wait_seconds(remaining: float) -> int:
    """The N in "wait N s": whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(remaining - 1e-9))


class ReplyLimiter:
    """At most one reply per ``interval_s``."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: float | None = None

    def ready(self, now: float) -> bool:
        return self._last is None or now - self._last >= self.interval_s

    def mark(self, now: float) -> None:
        self._last = now


class UsageLimits:
    """Commands per user per stream (0 = unlimited); ``reset()`` when a new stream starts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used: dict[str, int] = {}

    def exhausted(self, user_key: str) -> bool:
        return self.limit > 0 and self._used.get(user_key, 0) >= self.limit

    def record(self, user_key: str) -> None:
        self._used[user_key] = self._used.get(user_key, 0) + 1

    def used(self, user_key: str) -> int:
        return self._used.get(user_key, 0)

    def reset(self) -> None:
        self._used.clear()


@dataclass
class _Ballot:
    option: str
    at: float
    order: int
    platform: str
    message_id: str


@dataclass(frozen=True)
class VoteResult:
    option: str
    votes: int
    tally: dict[str, int] = field(default_factory=dict)
    platform: str = ""


class VoteBox:
    """Vote mode: the first vote opens a window of ``window_s``; when it closes, the option with the most
    votes wins, a tie going to the option voted for first.  One ballot per user per window (a second vote
    changes the ballot but keeps the user's place in time)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._ballots: dict[str, _Ballot] = {}
        self._opened: float | None = None
        self._order = 0

    @property
    def enabled(self) -> bool:
        return self.window_s > 0

    @property
    def open(self) -> bool:
        return self._opened is not None

    def closes_at(self) -> float | None:
        return None if self._opened is None else self._opened + self.window_s

    def cast(self, user_key: str, option: str, now: float, *, platform: str = "", message_id: str = "") -> bool:
        """Record a vote; True when it is the user's first in this window."""
        if self._opened is None:
            self._opened = now
        first = user_key not in self._ballots
        if first:
            self._order += 1
            self._ballots[user_key] = _Ballot(option, now, self._order, platform, message_id)
        else:
            b = self._ballots[user_key]
            self._ballots[user_key] = _Ballot(option, b.at, b.order, platform, message_id)
        return first

    def tally(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in sorted(self._ballots.values(), key=lambda b: b.order):
            out[b.option] = out.get(b.option, 0) + 1
        return out  # insertion order = order of each option's first vote

    def due(self, now: float) -> bool:
        closes = self.closes_at()
        return closes is not None and now >= closes

    def close(self) -> VoteResult | None:
        """End the window: the winner (None if every ballot was withdrawn)."""
        tally = self.tally()
        ordered = sorted(self._ballots.values(), key=lambda b: b.order)
        self._ballots.clear()
        self._opened = None
        if not tally:
            return None
        best = max(tally.values())
        winner = next(o for o in tally if tally[o] == best)  # dicts keep first-vote order
        platform = next(b.platform for b in ordered if b.option == winner)
        return VoteResult(winner, best, tally, platform)

    def withdraw(self, *, user_key: str | None = None, message_id: str | None = None,
                 platform: str | None = None) -> int:
        """Remove ballots (moderation): by user, by message, or every ballot of a platform. Returns how many."""
        gone = [k for k, b in self._ballots.items()
                if (user_key is not None and k == user_key)
                or (message_id is not None and message_id and b.message_id == message_id)
                or (platform is not None and user_key is None and message_id is None and b.platform == platform)]
        for k in gone:
            del self._ballots[k]
        if not self._ballots:
            self._opened = None
        return len(gone)
