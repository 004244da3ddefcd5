"""The perception service: camera -> landmarks -> percepts -> reactions, a few pictures a second.

    async with Perception(cfg.perception, camera_factory, on_reaction) as perception:
        ...  # runs until the block ends; perception.stats() has counts, step time and CPU seconds

Everything heavy (the screenshot, JPEG decoding, MediaPipe, the analysis) runs in ONE worker thread whose
scheduling priority is lowered (``nice`` +10 on Linux, inherited by MediaPipe's own threads, which it starts
from there), at most ``cfg.fps`` times a second and never two steps at once: on a 2-core machine the generator
keeps its share. A camera error (OBS closed, source renamed) is logged once per kind and retried each second;
the stream goes on.

:class:`Mood` folds chat and speech sentiment into the idol's emotion (see :mod:`backend.perception.mood`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from backend.config import PerceptionConfig
from backend.events import ChatEvent, ChatMessage, PaidMessage
from backend.tasks import cancel_and_wait

from .analysis import Analyzer, Percept
from .camera import CameraError
from .reactions import Reaction, Reactor

__all__ = ["Mood", "Perception"]

log = logging.getLogger(__name__)

NICE = 10  # worker thread priority offset (Linux): generation first


class Camera(Protocol):
    def grab(self) -> np.ndarray: ...

    def close(self) -> None: ...


def _lower_priority() -> None:
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


class Perception:
    def __init__(self, cfg: PerceptionConfig, camera_factory: Callable[[], Camera],
                 on_reaction: Callable[[Reaction], Awaitable[Any]], *,
                 landmarker_factory: Callable[[], Any] | None = None,
                 on_percept: Callable[[Percept], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._camera_factory = camera_factory
        self._landmarker_factory = landmarker_factory
        self._on_reaction = on_reaction
        self._on_percept = on_percept
        self._clock = clock
        self.analyzer = Analyzer()
        self.reactor = Reactor(cfg.reactions, cooldown_s=cfg.reaction_cooldown_s,
                               global_cooldown_s=cfg.global_cooldown_s)
        self.recent: collections.deque[Percept] = collections.deque(maxlen=64)
        self.reactions: collections.deque[Reaction] = collections.deque(maxlen=64)
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._camera: Camera | None = None
        self._marker: Any = None
        self._step_s: collections.deque[float] = collections.deque(maxlen=256)
        self.pictures = 0
        self.errors = 0
        self.cpu_s = 0.0  # CPU seconds of the worker thread (MediaPipe's own threads not included)
        self._last_error = ""

    # ------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Perception:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="perception", initializer=_lower_priority)
        await self._run(self._open)
        self._task = asyncio.create_task(self._loop(), name="perception")
        log.info("perception on: camera=%s source=%r fps=%.1f reactions=%s", self.cfg.camera, self.cfg.obs_source,
                 self.cfg.fps, ",".join(self.cfg.reactions))
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._executor is not None:
            with contextlib.suppress(Exception):
                await self._run(self._close)
            self._executor.shutdown(wait=True)
            self._executor = None

    def _open(self) -> None:
        if self._landmarker_factory is None:
            from .landmarks import Landmarker

            self._marker = Landmarker()
        else:
            self._marker = self._landmarker_factory()
        self._camera = self._camera_factory()

    def _close(self) -> None:
        if self._camera is not None:
            self._camera.close()
        if self._marker is not None and hasattr(self._marker, "close"):
            self._marker.close()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._executor is not None, "Perception used outside `async with`"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------------- loop

    def _step(self, at: float) -> Percept:
        """In the worker thread: one picture -> one percept."""
        assert self._camera is not None and self._marker is not None
        cpu0 = time.thread_time()
        try:
            rgb = self._camera.grab()
            return self.analyzer.step(self._marker.step(rgb), at)
        finally:
            self.cpu_s += time.thread_time() - cpu0

    async def _loop(self) -> None:
        period = 1.0 / self.cfg.fps
        next_at = self._clock()
        while True:
            at = self._clock()
            try:
                percept = await self._run(self._step, at)
            except CameraError as exc:
                self.errors += 1
                if str(exc) != self._last_error:
                    log.warning("perception: %s (retrying every second)", exc)
                    self._last_error = str(exc)
                await asyncio.sleep(1.0)
                next_at = self._clock()
                continue
            self._last_error = ""
            self.pictures += 1
            self._step_s.append(self._clock() - at)
            self.recent.append(percept)
            if self._on_percept is not None:
                self._on_percept(percept)
            reaction = self.reactor.react(percept, seen_at=at)
            if reaction is not None:
                self.reactions.append(reaction)
                log.info("perception: reaction=%s kind=%s argument=%s", reaction.name, reaction.kind.value,
                         reaction.argument)
                try:
                    await self._on_reaction(reaction)
                except Exception:  # the director refusing must not stop perception
                    log.exception("perception: reaction failed reaction=%s", reaction.name)
            next_at = max(next_at + period, self._clock())
            await asyncio.sleep(max(0.0, next_at - self._clock()))

    def stats(self) -> dict[str, Any]:
        steps = sorted(self._step_s)
        return {"pictures": self.pictures, "errors": self.errors, "reactions": len(self.reactions),
                "cpu_s": round(self.cpu_s, 3),
                "step_p50_ms": round(1000 * steps[len(steps) // 2], 1) if steps else None,
                "step_max_ms": round(1000 * steps[-1], 1) if steps else None}


class Mood:
    """Chat and speech sentiment -> the idol's emotion, through ``handle_mood(emotion, detail=...)``."""

    def __init__(self, cfg: PerceptionConfig, handle_mood: Callable[..., Awaitable[Any]], *,
                 sentiment: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        from .mood import MoodTracker

        self.tracker = MoodTracker(alpha=cfg.mood_alpha, enter=cfg.mood_enter, exit=cfg.mood_exit,
                                   hold_s=cfg.mood_hold_s)
        self._handle_mood = handle_mood
        self._sentiment = sentiment
        self._clock = clock

    async def __aenter__(self) -> Mood:
        if self._sentiment is None:
            from .mood import Sentiment

            self._sentiment = await asyncio.to_thread(Sentiment)  # SnowNLP loads its model for seconds
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def observe(self, text: str, source: str = "chat") -> str | None:
        """Fold one text in; sends the new emotion to the director when the mood changed."""
        if self._sentiment is None or not text:
            return None
        score = self._sentiment.score(text)
        change = self.tracker.observe(score, self._clock())
        if change is not None:
            log.info("mood: emotion=%s value=%.2f source=%s", change, self.tracker.value, source)
            await self._handle_mood(change, detail=f"mood={self.tracker.value:.2f}")
        return change

    def tap(self, handle: Callable[[ChatEvent], Awaitable[Any]]) -> Callable[[ChatEvent], Awaitable[Any]]:
        """Wrap the director's ``handle``: every chat message also feeds the mood."""
        async def tapped(event: ChatEvent) -> Any:
            result = await handle(event)
            if isinstance(event, ChatMessage | PaidMessage):
                try:
                    await self.observe(event.text, event.platform)
                except Exception:  # a sentiment failure must not lose the command
                    log.exception("mood failed on a message platform=%s", event.platform)
            return result

        return tapped
