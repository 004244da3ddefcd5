"""Frame pacing on an absolute monotonic schedule: output slot ``n`` is due at ``t0 + n / fps``.

Deadlines are computed from ``t0`` every time, never by adding intervals, so timing errors do not
accumulate. A slot whose time has fully passed while the loop was busy is skipped (counted in
``skipped``), so a late loop catches up at once instead of bursting frames; a frame's ``pts`` is always
``seq / fps``.

Usage::

    pacer = Pacer(fps=25.0)
    pacer.start()
    while True:
        seq = await pacer.next_slot()   # sleeps until the slot is due
        publish(seq, pts=pacer.pts(seq))

:class:`RateMeter` measures the achieved rate over a sliding window.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

__all__ = ["Pacer", "RateMeter"]


class Pacer:
    """Absolute-schedule slot clock (see module docstring). ``clock`` and ``sleep`` are injectable."""

    def __init__(self, fps: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self._clock = clock
        self._sleep = sleep
        self.t0: float | None = None
        self._next = 0
        self.skipped = 0

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def start(self, t0: float | None = None) -> None:
        self.t0 = self._clock() if t0 is None else t0
        self._next = 0

    @property
    def next_seq(self) -> int:
        """The slot :meth:`next_slot` waits for next (0 before the first)."""
        return self._next

    def deadline(self, seq: int) -> float:
        if self.t0 is None:
            raise RuntimeError("pacer not started")
        return self.t0 + seq / self.fps

    def pts(self, seq: int) -> float:
        return seq / self.fps

    def now_pts(self) -> float:
        """The clock's current time as a pts (seconds since t0)."""
        if self.t0 is None:
            return 0.0
        return self._clock() - self.t0

    def due(self, now: float | None = None) -> int:
        """The slot to show at ``now``: the next one, or a later one if whole slots have passed."""
        if self.t0 is None:
            raise RuntimeError("pacer not started")
        now = self._clock() if now is None else now
        current = int((now - self.t0) * self.fps + 1e-9)  # the slot whose interval contains now
        seq = self._next
        if current > seq:
            self.skipped += current - seq
            seq = current
        return seq

    async def next_slot(self) -> int:
        """Sleep until the next slot is due; return its sequence number (slots may be skipped)."""
        delay = self.deadline(self._next) - self._clock()
        if delay > 0:
            await self._sleep(delay)
        seq = self.due()
        self._next = seq + 1
        return seq


class RateMeter:
    """Events per second over the last ``window`` seconds."""

    def __init__(self, window: float = 2.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._times: collections.deque[float] = collections.deque()

    def tick(self) -> None:
        now = self._clock()
        self._times.append(now)
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()

    def rate(self) -> float:
        now = self._clock()
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0
