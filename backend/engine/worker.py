"""The generator's one dedicated thread: the asyncio loop hands it calls and awaits their results.

torch work (``reset``, ``next_chunk``, ``snapshot``, ``restore``) runs here, one call at a time, in
submission order, so the generator is only ever touched by this thread and the event loop never blocks.
Requests wait in a bounded queue; a full queue raises :class:`WorkerBusy` at once instead of blocking.

Usage::

    async with GeneratorWorker() as worker:
        frames, seconds = await worker.call(gen.next_chunk, cond)   # seconds: time spent in the thread

An exception raised by the call is re-raised by ``await worker.call(...)``; the thread keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from backend.engine.session import EngineError

__all__ = ["GeneratorWorker", "WorkerBusy", "WorkerStopped"]

log = logging.getLogger(__name__)


class WorkerBusy(EngineError):
    """The worker's request queue is full."""


class WorkerStopped(EngineError):
    """The worker is not running (not started yet, or stopped)."""


_STOP = object()


class GeneratorWorker:
    """One thread running submitted callables in order (see module docstring)."""

    def __init__(self, *, max_pending: int = 4, name: str = "liveidol-generator") -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def __aenter__(self) -> GeneratorWorker:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        if self._thread is not None:
            raise WorkerStopped("worker already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    async def stop(self, join_timeout_s: float = 30.0) -> None:
        """Let the call in progress finish, cancel queued ones, join the thread."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        while True:  # make room for the stop marker by cancelling what waits
            try:
                self._queue.put_nowait(_STOP)
                break
            except queue.Full:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    continue
                if item is not _STOP:
                    self._settle(item[3], exc=WorkerStopped("worker stopped"))
        await asyncio.to_thread(thread.join, join_timeout_s)
        if thread.is_alive():
            log.error("generator thread did not stop within timeout_s=%.1f", join_timeout_s)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
        """Run ``fn(*args, **kwargs)`` in the worker thread; return (result, seconds it took there)."""
        if not self.running or self._loop is None:
            raise WorkerStopped("generator worker is not running")
        fut: asyncio.Future[tuple[Any, float]] = self._loop.create_future()
        try:
            self._queue.put_nowait((fn, args, kwargs, fut))
        except queue.Full:
            raise WorkerBusy(f"generator worker queue full (max_pending={self._queue.maxsize})") from None
        return await fut

    def _settle(self, fut: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
        def done() -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(done)
        except RuntimeError:  # loop closed: nobody waits any more
            pass

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args, kwargs, fut = item
            t = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the awaiting coroutine, which decides
                self._settle(fut, exc=exc)
            else:
                self._settle(fut, result=(result, time.perf_counter() - t))
            self.calls += 1
