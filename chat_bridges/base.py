"""What every chat bridge shares: the bridge interface, the event pump, the HTTP helper, the reconnect policy
and the status a bridge reports.

A bridge is an async context manager that yields typed events (backend.events.ChatEvent) and can send a
reply where the platform allows it::

    async with TwitchBridge(cfg.chat.twitch) as bridge:
        async for event in bridge.events():
            await director.handle(event)

``events()`` runs until the context exits: it reconnects by itself (with :class:`Backoff`), and one bad
message is logged and skipped, never fatal. A refused login ends it: the bridge's :class:`BridgeStatus`
says why (``state = "failed"``), the console log has it at error level, and ``/control`` ``status`` shows it.

The pieces here are used by every bridge (Twitch IRC and EventSub, Bilibili, the console) so there is one
copy of each: :class:`EventPump` (one owned background task feeding a bounded queue that ``events()`` reads),
:func:`urllib_http` (HTTP in a worker thread, error statuses returned) and :class:`Backoff`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from backend.events import ChatEvent
from backend.tasks import cancel_and_wait

__all__ = ["Backoff", "BridgeStatus", "ChatBridge", "EventPump", "HttpFunc", "HttpResponse", "urllib_http"]

log = logging.getLogger(__name__)


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
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
    the delay is uniform in ``[0, min(max_s, base_s * factor ** attempt)]``. Injectable into clients
    (tests pass a tiny base).

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
        return self.rng.uniform(0.0, cap)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class BridgeStatus:
    """What a bridge reports for ``/control`` ``status`` (``chat``): plain JSON-able fields.

    ``state``: connecting -> connected -> reconnecting ... ; ``failed`` when it gave up (``error`` says why
    and what to fix: a refused login is not retried forever)."""

    platform: str
    channel: str
    state: str = "connecting"
    error: str = ""
    connections: int = 0
    dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"platform": self.platform, "channel": self.channel, "state": self.state, "error": self.error,
                "connections": self.connections, "dropped": self.dropped}


class HttpResponse(NamedTuple):
    status: int
    body: bytes


HttpFunc = Callable[[str, str, Mapping[str, str], bytes | None], Awaitable[HttpResponse]]
"""``await http(method, url, headers, body) -> HttpResponse``; HTTP error statuses are returned, not raised.
Injected so tests can talk to a loopback server."""


async def urllib_http(method: str, url: str, headers: Mapping[str, str], body: bytes | None = None, *,
                      timeout_s: float = 10.0) -> HttpResponse:
    """The default HTTP client of every bridge: urllib.request in a worker thread. Non-2xx answers are
    returned, not raised; network errors raise OSError."""

    def request() -> HttpResponse:
        req = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return HttpResponse(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return HttpResponse(exc.code, exc.read())

    return await asyncio.to_thread(request)


class EventPump:
    """One owned background task feeding a bounded queue; ``events()`` yields until the task ends (and
    re-raises the error it ended with). A slow consumer loses the newest events (counted in ``dropped``,
    logged) instead of stalling the socket. Single use: a bridge is entered once.

    ::

        pump = EventPump("twitch irc #chan", 1000)
        pump.start(self._run())      # _run() calls pump.put(event)
        async for event in pump.events(): ...
        await pump.stop()
    """

    _END = object()

    def __init__(self, name: str, size: int, *, error: type[Exception] = RuntimeError,
                 status: BridgeStatus | None = None) -> None:
        self._name = name
        self.status = status
        self._queue: asyncio.Queue[Any] = asyncio.Queue(size)
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._error_type = error
        self._started = False
        self.dropped = 0

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._started:
            coro.close()
            raise self._error_type(f"{self._name}: a bridge can be entered only once; make a new one")
        self._started = True
        self._task = asyncio.create_task(self._guard(coro), name=self._name)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("%s: stopped: %s", self._name, exc)
            self._error = exc
            if self.status is not None:
                self.status.state, self.status.error = "failed", str(exc)
        finally:
            self._end()

    def _end(self) -> None:
        while True:
            try:
                self._queue.put_nowait(self._END)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()

    def put(self, event: ChatEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.status is not None:
                self.status.dropped = self.dropped
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("%s: event queue full, dropped=%d (consumer too slow)", self._name, self.dropped)

    async def events(self) -> AsyncIterator[ChatEvent]:
        while True:
            item = await self._queue.get()
            if item is self._END:
                self._end()  # leave the marker for any other reader
                if self._error is not None:
                    raise self._error
                return
            yield item

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._end()
