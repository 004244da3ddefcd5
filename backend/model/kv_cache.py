"""KV caches of the causal DiT: a bounded self-attention cache (sink + rolling window) and a
cross-attention cache.

Self-attention cache semantics follow Self-Forcing's ``CausalWanSelfAttention`` exactly (github
guandeh17/Self-Forcing, ``wan/modules/causal_model.py``, commit 33593df), with counters in tokens:

* ``global_end``: absolute tokens seen; ``local_end``: how far the physical buffer is filled.
* A call for tokens ``[start, end)`` with ``n = end - start`` new tokens:
  1. eviction (local mode only, and only for a NEW chunk, ``end > global_end``, that would overflow):
     ``e = n + local_end - capacity`` tokens right after the sink are dropped, the survivors shift left;
  2. placement: the tokens go to ``[local_end + (end - global_end) - e - n, local_end + (end - global_end) - e)``,
     so a repeat call for the same chunk (``end == global_end``) overwrites the chunk's own slots and a
     new chunk appends;
  3. attention reads slots ``[0, new local_end)``; 4. the counters move on.
  Order: roll, then write, then attend.
* Keys are stored after norm + RoPE at ABSOLUTE positions and are never re-based: the sink keeps
  position 0 for good. Memory is ``capacity`` tokens per layer however long the stream runs.

Going back (the engine rolls back chunks not shown yet): :meth:`KVCache.mark` returns a :class:`KVMark`; each
chunk made after it records in the newest mark its counters and the tokens its eviction dropped (a chunk's
worth, not a copy of the cache); :meth:`KVCache.rewind` to a mark undoes those chunks, newest first (shift the
survivors back, put the evicted tokens back, restore the counters). Exact: only copies. A mark stays valid
for another rewind; it cannot rewind across a newer mark that was dropped (its chunks' records went with it)
or a ``reset()``. Slots past ``local_end`` are not restored (nothing reads them before a pass writes them).

Usage::

    cache = KVCache(num_layers=L, heads=H, head_dim=D, frame_tokens=T, sink_frames=1, window_frames=8)
    step = cache.roll(cache.plan(start_token, n_tokens))  # once per forward pass: evict in every layer at once
    k_all, v_all = cache.write(layer, step, k, v)      # in every layer: write, return slots to attend
    cache.commit(step)                                 # after the last layer
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace

import torch

__all__ = ["CacheError", "CacheStep", "CrossAttentionCache", "KVCache", "KVMark"]


class CacheError(RuntimeError):
    """A call that the cache cannot place (out of order, too large, or past a full global cache)."""


@dataclass(frozen=True)
class CacheStep:
    """Where one forward pass's tokens go. All values in tokens."""

    start: int  # absolute position of the first new token
    end: int  # absolute end (start + n)
    write_start: int  # physical slot of the first new token (after eviction)
    write_end: int  # physical end == new local_end
    evict: int  # tokens dropped right after the sink before writing


@dataclass
class _Undo:
    """One chunk made after a mark: the counters before and after its passes, and what its eviction dropped
    (``(k, v)``, each ``(num_layers, B, evict, H, D)``), if anything."""

    before: tuple[int, int]
    after: tuple[int, int]
    evicted: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)


@dataclass(eq=False)
class KVMark:
    """A point :meth:`KVCache.rewind` can go back to (see the module docstring)."""

    ends: tuple[int, int]
    undo: list[_Undo] = field(default_factory=list, repr=False)
    broken: bool = False  # a reset, or a newer mark dropped with its records: cannot rewind any more


class KVCache:
    """Per-layer K/V buffers ``(num_layers, B, capacity, heads, head_dim)`` plus two counters.

    ``window_frames=None`` is the global mode of the reference: no eviction, a fixed capacity of
    ``capacity_frames`` frames; a call past it raises :class:`CacheError`. Otherwise the capacity is
    ``sink_frames + window_frames`` frames and old frames after the sink are evicted.
    """

    def __init__(self, *, num_layers: int, heads: int, head_dim: int, frame_tokens: int,
                 sink_frames: int = 1, window_frames: int | None = 8, capacity_frames: int | None = None,
                 batch: int = 1, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if frame_tokens < 1:
            raise ValueError(f"KVCache: frame_tokens must be >= 1, got {frame_tokens}")
        if window_frames is None:
            if capacity_frames is None or capacity_frames < 1:
                raise ValueError("KVCache: global mode (window_frames=None) needs capacity_frames >= 1")
            self.rolling = False
            frames = capacity_frames
            sink_frames = 0
        else:
            if window_frames < 1 or sink_frames < 0:
                raise ValueError(f"KVCache: need window_frames >= 1 and sink_frames >= 0, "
                                 f"got window_frames={window_frames} sink_frames={sink_frames}")
            self.rolling = True
            frames = sink_frames + window_frames
        self.frame_tokens = frame_tokens
        self.sink_frames = sink_frames
        self.window_frames = window_frames
        self.capacity = frames * frame_tokens
        self.sink_tokens = sink_frames * frame_tokens
        shape = (num_layers, batch, self.capacity, heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.global_end = 0
        self.local_end = 0
        self._marks: list[weakref.ref[KVMark]] = []  # oldest first; a mark lives as long as its holder keeps it
        self._evicted: tuple[torch.Tensor, torch.Tensor] | None = None  # by the roll of the chunk being placed

    # -- lifecycle ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything (the buffers are kept, not reallocated); no earlier mark can be rewound to."""
        self.global_end = 0
        self.local_end = 0
        self.k.zero_()
        self.v.zero_()
        self._break_marks(self._marks)
        self._marks, self._evicted = [], None

    @staticmethod
    def _break_marks(refs: list[weakref.ref[KVMark]]) -> None:
        for ref in refs:
            mark = ref()
            if mark is not None:
                mark.broken = True
                mark.undo = []

    def _newest_mark(self) -> KVMark | None:
        """The mark a new chunk records in. If the newest was dropped, its chunks' records went with it: the
        older marks can no longer be rewound to."""
        if self._marks and self._marks[-1]() is None:
            self._break_marks(self._marks)
            self._marks = []
        return self._marks[-1]() if self._marks else None

    # -- going back ---------------------------------------------------------------------------
    def mark(self) -> KVMark:
        """A mark of the cache now: :meth:`rewind` to it undoes every chunk made after it."""
        self._newest_mark()  # a dropped newest mark breaks the older ones before this one comes
        self._marks = [ref for ref in self._marks if ref() is not None]
        mark = KVMark((self.global_end, self.local_end))
        self._marks.append(weakref.ref(mark))
        return mark

    def rewind(self, mark: KVMark) -> None:
        """Put the cache back as it was at ``mark`` (see the module docstring); raises :class:`CacheError` when
        it cannot (a reset since, or a newer mark dropped with the records of its chunks)."""
        self._newest_mark()
        marks = [ref() for ref in self._marks]
        index = next((i for i, m in enumerate(marks) if m is mark), None)
        if index is None or mark.broken or any(m is None for m in marks[index:]):
            raise CacheError("KVCache: cannot rewind to this mark (a reset since, or a newer mark was dropped)")
        for m in reversed(marks[index:]):
            assert m is not None
            for u in reversed(m.undo):
                if (self.global_end, self.local_end) != u.after:
                    raise CacheError(f"KVCache: cannot rewind: the cache is at {self.global_end}/{self.local_end}, "
                                     f"a chunk after the mark left it at {u.after[0]}/{u.after[1]}")
                if u.evicted is not None:
                    self._unroll(u.before[1], u.evicted)
                self.global_end, self.local_end = u.before
            m.undo = []
        if (self.global_end, self.local_end) != mark.ends:
            raise CacheError(f"KVCache: rewound to {self.global_end}/{self.local_end}, the mark is at {mark.ends}")
        self._break_marks(self._marks[index + 1:])
        self._marks = self._marks[:index + 1]

    def _unroll(self, local_end: int, evicted: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Undo an eviction from a cache filled to ``local_end``: the survivors back right, the evicted back."""
        s, e = self.sink_tokens, evicted[0].shape[2]
        rolled = local_end - e - s
        for buf, kept in zip((self.k, self.v), evicted, strict=True):  # (L, B, capacity, H, D)
            i = rolled
            while i > 0:  # last piece first, pieces of at most e tokens: no piece overlaps its source
                n = min(e, i)
                buf[:, :, s + e + i - n:s + e + i].copy_(buf[:, :, s + i - n:s + i])
                i -= n
            buf[:, :, s:s + e].copy_(kept)

    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    @property
    def filled_frames(self) -> int:
        return self.local_end // self.frame_tokens

    @property
    def max_new_tokens(self) -> int:
        """Most tokens one call may add."""
        return self.capacity - self.sink_tokens if self.rolling else self.capacity

    # -- one forward pass ---------------------------------------------------------------------
    def plan(self, start: int, n: int) -> CacheStep:
        """Where a call for absolute tokens ``[start, start + n)`` writes; raises CacheError if it can't."""
        end = start + n
        if n < 1 or start < 0:
            raise CacheError(f"KVCache: bad call start={start} n={n}")
        if end < self.global_end:
            raise CacheError(f"KVCache: call for tokens [{start}, {end}) ends before the cache end "
                             f"{self.global_end}; only the latest chunk may be recomputed")
        if n > self.max_new_tokens:
            raise CacheError(f"KVCache: a call of {n} tokens does not fit a cache of {self.capacity} tokens "
                             f"({self.sink_tokens} sink); lower the chunk or raise window_frames")
        evict = 0
        if self.rolling and end > self.global_end and n + self.local_end > self.capacity:
            evict = n + self.local_end - self.capacity
        write_end = self.local_end + (end - self.global_end) - evict
        write_start = write_end - n
        if write_start < 0 or write_end > self.capacity:
            raise CacheError(f"KVCache: tokens [{start}, {end}) land at slots [{write_start}, {write_end}) "
                             f"outside the cache of {self.capacity} tokens (global mode is full)")
        return CacheStep(start=start, end=end, write_start=write_start, write_end=write_end, evict=evict)

    def roll(self, step: CacheStep) -> CacheStep:
        """Do ``step``'s eviction in every layer at once, in place; return the step with nothing left to evict.

        The survivors after the sink move left by ``evict`` tokens in pieces of at most ``evict`` tokens,
        first to last, so no piece overlaps its source and nothing is allocated (no clone)."""
        if not step.evict:
            return step
        s, e = self.sink_tokens, step.evict
        rolled = self.local_end - e - s
        if self._newest_mark() is not None:  # kept for a rewind (recorded at commit)
            self._evicted = (self.k[:, :, s:s + e].clone(), self.v[:, :, s:s + e].clone())
        for buf in (self.k, self.v):  # (L, B, capacity, H, D)
            for i in range(0, rolled, e):
                m = min(e, rolled - i)
                buf[:, :, s + i:s + i + m].copy_(buf[:, :, s + e + i:s + e + i + m])
        return replace(step, evict=0)  # the counters move at commit(), as after write()

    def write(self, layer: int, step: CacheStep, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Roll (evict), write ``k``/``v`` ``(B, n, H, D)`` for ``layer``; return the slots to attend (views)."""
        kb, vb = self.k[layer], self.v[layer]  # (B, capacity, H, D)
        n = step.write_end - step.write_start
        if step.evict and self._marks:  # evicted layer by layer, not kept: no mark can undo this chunk
            self._break_marks(self._marks)
            self._marks = []
        assert k.shape[1] == n and v.shape == k.shape, f"layer {layer}: k {tuple(k.shape)} v {tuple(v.shape)}, n={n}"
        if step.evict:
            s, e = self.sink_tokens, step.evict
            rolled = self.local_end - e - s
            kb[:, s:s + rolled] = kb[:, s + e:s + e + rolled].clone()
            vb[:, s:s + rolled] = vb[:, s + e:s + e + rolled].clone()
        kb[:, step.write_start:step.write_end] = k
        vb[:, step.write_start:step.write_end] = v
        return kb[:, :step.write_end], vb[:, :step.write_end]

    def commit(self, step: CacheStep) -> None:
        """Move the counters after every layer has written ``step``."""
        mark = self._newest_mark()
        if mark is not None and step.end > self.global_end:  # a new chunk: what a rewind needs to undo it
            mark.undo.append(_Undo((self.global_end, self.local_end), (step.end, step.write_end), self._evicted))
        self._evicted = None
        self.global_end = step.end
        self.local_end = step.write_end


class CrossAttentionCache:
    """Per-layer cross-attention K/V of the current conditioning context.

    Filled by the first forward pass after :meth:`reset`; the context is ignored while it is
    filled (as in the reference). Reset it whenever the conditions change.
    """

    def __init__(self, num_layers: int) -> None:
        self._k: list[torch.Tensor | None] = [None] * num_layers
        self._v: list[torch.Tensor | None] = [None] * num_layers

    def reset(self) -> None:
        self._k = [None] * len(self._k)
        self._v = [None] * len(self._v)

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        k, v = self._k[layer], self._v[layer]
        return None if k is None or v is None else (k, v)

    def put(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self._k[layer], self._v[layer] = k, v

    def state(self) -> tuple[list, list]:
        """What a snapshot keeps: the per-layer K/V lists (copied; the tensors are only ever replaced, never
        written in place, so they are shared)."""
        return list(self._k), list(self._v)

    def load(self, state: tuple[list, list]) -> None:
        """Back to a :meth:`state` (which stays valid for another load)."""
        self._k, self._v = list(state[0]), list(state[1])

    @property
    def filled(self) -> bool:
        return all(k is not None for k in self._k)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self._k, *self._v) if t is not None)
