"""Dynamic compute: hold real time by trading quality for speed, and take quality back with headroom.

Each generated chunk has a real-time budget of ``frames / fps`` seconds. The policy keeps a smoothed
*load* (generation seconds / budget; 1.0 means exactly real time):

* load above ``high`` (behind): first lower the denoising steps (down to ``min_steps``), then the chunk
  size (down to ``min_chunk``). Repeating frames is the engine's last resort, not the policy's.
* load below ``low`` for ``recover_after`` chunks in a row (headroom): raise again, in the reverse
  order (chunk size first, then steps), and only if the load predicted after the raise stays below ``high``.
* after any change the smoothed load restarts from the next measurement and no other change is made for
  ``cooldown`` chunks: the hysteresis that stops it flapping.

Sans-I/O: the policy only reads the injected clock, so tests drive it with a fake one.

Usage::

    policy = ComputePolicy(fps=25, max_steps=4, min_steps=1, max_chunk=3, min_chunk=1)
    policy.chunk_started()
    frames = gen.next_chunk(..., steps=policy.steps, chunk_frames=policy.chunk)
    policy.chunk_finished(len(frames))   # may change policy.steps / policy.chunk

:class:`ComputeMemory` keeps the level that last held real time (per device, model and sizes) in a small JSON
file, so the next start begins there instead of at full compute::

    memory = ComputeMemory(ComputeMemory.default_path(), key=compute_key(...))
    policy.set_level(*(memory.recall() or (policy.min_steps, policy.min_chunk)))
    memory.remember(policy.steps, policy.chunk)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ComputeMemory", "ComputePolicy", "ComputeStats"]

log = logging.getLogger(__name__)


@dataclass
class ComputeStats:
    chunks: int = 0
    lowered: int = 0
    raised: int = 0
    last_seconds: float = 0.0
    last_load: float = 0.0


class ComputePolicy:
    """Chooses denoising steps and chunk size per chunk (see module docstring)."""

    def __init__(self, *, fps: float, max_steps: int, min_steps: int, max_chunk: int, min_chunk: int,
                 high: float = 0.9, low: float = 0.6, smoothing: float = 0.5, recover_after: int = 4,
                 cooldown: int = 2, clock: Callable[[], float] = time.perf_counter) -> None:
        if not 1 <= min_steps <= max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}, {max_steps}")
        if not 1 <= min_chunk <= max_chunk:
            raise ValueError(f"need 1 <= min_chunk <= max_chunk, got {min_chunk}, {max_chunk}")
        if not 0 < low < high:
            raise ValueError(f"need 0 < low < high, got {low}, {high}")
        self.fps = fps
        self.max_steps, self.min_steps = max_steps, min_steps
        self.max_chunk, self.min_chunk = max_chunk, min_chunk
        self.high, self.low = high, low
        self.smoothing = smoothing
        self.recover_after = recover_after
        self.cooldown = cooldown
        self._clock = clock
        self.steps = max_steps
        self.chunk = max_chunk
        self.load: float | None = None  # smoothed generation time / real-time budget
        self.stats = ComputeStats()
        self._started: float | None = None
        self._calm = 0  # consecutive chunks under `low`
        self._hold = 0  # chunks left before another change

    @property
    def behind(self) -> bool:
        return self.load is not None and self.load > self.high

    @property
    def level(self) -> tuple[int, int]:
        """(steps, chunk) now."""
        return self.steps, self.chunk

    def set_level(self, steps: int, chunk: int) -> None:
        """Start (or restart) at ``steps`` and ``chunk``, clamped to the allowed range; the smoothed load
        restarts from the next measurement."""
        self.steps = max(self.min_steps, min(self.max_steps, int(steps)))
        self.chunk = max(self.min_chunk, min(self.max_chunk, int(chunk)))
        self.load = None
        self._calm = 0
        self._hold = 0

    def chunk_started(self) -> None:
        self._started = self._clock()

    def chunk_discarded(self) -> None:
        """Forget the chunk begun by :meth:`chunk_started` (e.g. the first one, which pays the warm-up)."""
        self._started = None

    def chunk_finished(self, frames: int) -> None:
        """Record the chunk begun by :meth:`chunk_started` (``frames`` video frames) and adapt."""
        if self._started is None:
            raise RuntimeError("chunk_finished() without chunk_started()")
        seconds = self._clock() - self._started
        self._started = None
        self.observe(seconds, frames)

    def observe(self, seconds: float, frames: int) -> None:
        """Record one chunk of ``frames`` video frames that took ``seconds`` to generate, and adapt."""
        budget = frames / self.fps
        load = seconds / budget if budget > 0 else float("inf")
        self.load = load if self.load is None else self.smoothing * load + (1 - self.smoothing) * self.load
        self.stats.chunks += 1
        self.stats.last_seconds, self.stats.last_load = seconds, load
        self._calm = self._calm + 1 if self.load < self.low else 0
        if self._hold > 0:
            self._hold -= 1
            return
        if self.load > self.high:
            self._lower()
        elif self._calm >= self.recover_after:
            self._raise()

    def _changed(self, what: str) -> None:
        log.info("compute %s steps=%d chunk=%d load=%.2f", what, self.steps, self.chunk, self.load or 0.0)
        self.load = None
        self._calm = 0
        self._hold = self.cooldown

    def _lower(self) -> None:
        if self.steps > self.min_steps:
            self.steps -= 1
        elif self.chunk > self.min_chunk:
            self.chunk -= 1
        else:
            return  # at the floor: the engine repeats frames if it must
        self.stats.lowered += 1
        self._changed("lowered")

    def _raise(self) -> None:
        assert self.load is not None
        if self.chunk < self.max_chunk:
            predicted = self.load  # per-frame cost roughly constant in chunk size
            if predicted < self.high:
                self.chunk += 1
            else:
                return
        elif self.steps < self.max_steps:
            predicted = self.load * (self.steps + 1) / self.steps
            if predicted < self.high:
                self.steps += 1
            else:
                return
        else:
            return
        self.stats.raised += 1
        self._changed("raised")


class ComputeMemory:
    """The compute level (steps, chunk) that last held real time, per ``key``, in a small JSON file.

    ``key`` names what the cost depends on (device, threads, model, sizes, fps: see ``backend.app``); a file
    that cannot be read or written is ignored with a debug line (it is only a head start)."""

    def __init__(self, path: Path | None, key: str = "", *, keep: int = 32) -> None:
        self.path, self.key, self.keep = path, key, keep

    @staticmethod
    def default_path() -> Path:
        """``$XDG_CACHE_HOME/liveidol/compute.json`` (``~/.cache/liveidol/compute.json``)."""
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "liveidol" / "compute.json"

    def _read(self) -> dict[str, list[int]]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.debug("compute memory unreadable path=%s error=%s", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def recall(self) -> tuple[int, int] | None:
        level = self._read().get(self.key)
        if (isinstance(level, list) and len(level) == 2 and all(isinstance(v, int) and v >= 1 for v in level)):
            return level[0], level[1]
        return None

    def remember(self, steps: int, chunk: int) -> None:
        if self.path is None:
            return
        data = self._read()
        data.pop(self.key, None)
        data[self.key] = [int(steps), int(chunk)]  # newest last; the oldest keys go first
        data = dict(list(data.items())[-self.keep:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.debug("compute memory not written path=%s error=%s", self.path, exc)
