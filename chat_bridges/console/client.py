"""The local console bridge: try commands without any platform, from stdin or any async source of lines.

::

    async with ConsoleBridge() as console:          # reads stdin
        async for event in console.events():        # ChatMessage (role BROADCASTER unless "/as viewer" ...)
            ...

Tests and tools pass ``lines=`` (any async iterable of str) and ``output=`` (a callable taking one str).
A line it cannot understand prints an error and the next line is read; ``events()`` ends at end of input.
Lines are read by one background task into a bounded queue: :class:`chat_bridges.base.EventPump`, as in
every bridge.
The line language is in :mod:`chat_bridges.console.protocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TextIO

from backend.events import ChatEvent, Deletion, Role
from chat_bridges.base import BridgeStatus, EventPump

from .protocol import ConsoleInputError, ConsoleSession, Note

__all__ = ["ConsoleBridge", "stdin_lines"]

log = logging.getLogger(__name__)


async def stdin_lines(stream: TextIO | None = None) -> AsyncIterator[str]:
    """Lines of ``stream`` (default stdin) without blocking the loop: a pipe reader on a duplicate of its file
    descriptor where the platform allows it (pipes and terminals on Unix), else a worker thread per line.
    The descriptor is put back in blocking mode at the end (asyncio makes it non-blocking, and a terminal
    shares that flag with the shell)."""
    stream = stream or sys.stdin
    loop = asyncio.get_running_loop()
    stream_reader = asyncio.StreamReader()
    reader: asyncio.StreamReader | None = stream_reader
    transport = None
    fd = -1
    pipe = None
    try:
        fd = os.dup(stream.fileno())
        pipe = os.fdopen(fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream_reader), pipe)
    except (ValueError, OSError, NotImplementedError, AttributeError):
        reader = None  # a regular file, no file descriptor, or a platform without pipe support
        if pipe is not None:
            pipe.close()
        elif fd >= 0:
            os.close(fd)
    try:
        while True:
            if reader is not None:
                line = (await reader.readline()).decode("utf-8", "replace")
            else:
                line = await asyncio.to_thread(stream.readline)
            if not line:
                return
            yield line.rstrip("\r\n")
    finally:
        if transport is not None:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, True)
            transport.close()


class ConsoleBridge:
    """A :class:`chat_bridges.base.ChatBridge` over typed lines (platform "console")."""

    platform = "console"

    def __init__(self, *, lines: AsyncIterable[str] | None = None, output: Callable[[str], None] | None = None,
                 channel: str = "console", user_name: str = "streamer", role: Role = Role.BROADCASTER,
                 clock: Callable[[], float] = time.time, queue_size: int = 1000):
        self._lines = lines
        self._output = output or (lambda text: print(text, flush=True))
        self.session = ConsoleSession(channel=channel, user_name=user_name, role=role, clock=clock)
        self.status = BridgeStatus("console", channel, state="connected")
        self._pump = EventPump("console", queue_size, error=RuntimeError, status=self.status)
        self._open = False

    async def __aenter__(self) -> ConsoleBridge:
        self._open = True
        self._pump.start(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        await self._pump.stop()

    def events(self) -> AsyncIterator[ChatEvent]:
        """The typed lines as chat events, until the input ends (the same pump as every bridge)."""
        if not self._open:
            raise RuntimeError("console: use 'async with ConsoleBridge(...)' before events()")
        return self._pump.events()

    async def _read(self) -> None:
        source = self._lines if self._lines is not None else stdin_lines()
        async for line in source:
            try:
                result = self.session.feed(line)
            except ConsoleInputError as exc:
                self._output(f"error: {exc}")
                log.debug("console: bad line: %s", exc)
                continue
            if result is None:
                continue
            if isinstance(result, Note):
                self._output(result.text)
                continue
            message_id = getattr(result, "message_id", "")
            if message_id and not isinstance(result, Deletion):  # a Deletion names someone else's id
                self._output(f"[{message_id}]")
            self._pump.put(result)
        self.status.state = "closed"

    async def send_reply(self, text: str, reply_to: str = "") -> bool:
        if not self._open:
            return False
        self._output(f"idol{' @' + reply_to if reply_to else ''}: {text}")
        return True
