"""One way to stop a background task: cancel it and wait for it, without swallowing the caller's own cancel."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing to do) and wait until it has ended; its own ``CancelledError`` is absorbed.

    If the caller is itself being cancelled while it waits (an ``asyncio.timeout`` around a close expired, or its
    own task was cancelled), that cancel goes on up: a bare ``suppress(CancelledError)`` here would swallow it, and
    a bound put around the close would then never trip."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
