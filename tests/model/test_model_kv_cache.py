"""The bounded self-attention KV cache: placement, overwrite, eviction after the sink, bounds."""

from __future__ import annotations

import pytest
import torch

from backend.model.kv_cache import CacheError, CrossAttentionCache, KVCache

T = 6  # tokens per frame, as the tiny fixtures


def _frames(first: int, n: int) -> torch.Tensor:
    """K/V whose every token carries its absolute frame index: (1, n*T, 1, 1)."""
    return torch.arange(first, first + n).repeat_interleave(T).float().view(1, n * T, 1, 1)


def _slots(cache: KVCache) -> list[int]:
    """Frame index held by each filled 6-token slot of layer 0."""
    k = cache.k[0, 0, :cache.local_end, 0, 0].view(-1, T)
    assert (k == k[:, :1]).all()
    return k[:, 0].long().tolist()


def _chunk(cache: KVCache, first: int, n: int, repeats: int = 5) -> None:
    """Every denoising step and the t=0 pass call the same chunk: the last write wins."""
    for r in range(repeats):
        step = cache.plan(first * T, n * T)
        marker = _frames(first, n) if r == repeats - 1 else torch.full((1, n * T, 1, 1), -1.0)
        k, _v = cache.write(0, step, marker, marker)
        assert k.shape[1] == step.write_end  # attends to every filled slot, its own tokens included
        cache.commit(step)


def test_rolling_trace_matches_reference_readme() -> None:
    cache = KVCache(num_layers=1, heads=1, head_dim=1, frame_tokens=T, sink_frames=1, window_frames=4)
    assert cache.capacity == 30
    expected = [(18, 18, [0, 1, 2]), (36, 30, [0, 2, 3, 4, 5]), (54, 30, [0, 5, 6, 7, 8]), (72, 30, [0, 8, 9, 10, 11])]
    for c, (g_end, l_end, slots) in enumerate(expected):
        _chunk(cache, 3 * c, 3)
        assert (cache.global_end, cache.local_end) == (g_end, l_end)
        assert _slots(cache) == slots


def test_memory_constant_over_a_long_stream() -> None:
    cache = KVCache(num_layers=2, heads=2, head_dim=4, frame_tokens=T, sink_frames=1, window_frames=3)
    nbytes = cache.nbytes
    for c in range(5000):  # 10,000 latent frames = 40,000 video frames at 4x
        _chunk(cache, 2 * c, 2, repeats=1)
        assert cache.nbytes == nbytes
    assert _slots(cache) == [0, 9997, 9998, 9999]
    assert cache.global_end == 10_000 * T


def test_global_mode_is_fixed_and_raises_when_full() -> None:
    cache = KVCache(num_layers=1, heads=1, head_dim=1, frame_tokens=T, window_frames=None, capacity_frames=6)
    _chunk(cache, 0, 3)
    _chunk(cache, 3, 3)
    assert _slots(cache) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(CacheError, match="outside the cache"):
        cache.plan(6 * T, 3 * T)


def test_bad_calls_are_refused_clearly() -> None:
    cache = KVCache(num_layers=1, heads=1, head_dim=1, frame_tokens=T, sink_frames=1, window_frames=2)
    with pytest.raises(CacheError, match="does not fit"):
        cache.plan(0, 3 * T)  # 3 frames > window of 2
    _chunk(cache, 0, 2)
    _chunk(cache, 2, 2)
    with pytest.raises(CacheError, match="ends before"):
        cache.plan(0, 2 * T)  # only the latest chunk may be recomputed


def test_reset_clears() -> None:
    cache = KVCache(num_layers=1, heads=1, head_dim=1, frame_tokens=T, sink_frames=1, window_frames=2)
    _chunk(cache, 0, 2)
    cache.reset()
    assert (cache.global_end, cache.local_end, cache.filled_frames) == (0, 0, 0)
    assert not cache.k.any()


def test_cross_attention_cache() -> None:
    cross = CrossAttentionCache(2)
    assert cross.get(0) is None and not cross.filled
    cross.put(0, torch.ones(1, 3, 1, 2), torch.zeros(1, 3, 1, 2))
    cross.put(1, torch.ones(1, 3, 1, 2), torch.zeros(1, 3, 1, 2))
    assert cross.filled and cross.nbytes == 4 * 6 * 4
    cross.reset()
    assert cross.get(1) is None and cross.nbytes == 0


# -- rewinding to a mark (the engine's roll-back of chunks not shown) ------------------------------

def _passes(cache: KVCache, start_frame: int, frames: int, passes: int, seed: int) -> None:
    """One chunk of ``passes`` passes, as the generator makes it: the first rolls, every pass writes every layer."""
    g = torch.Generator().manual_seed(seed)
    n = frames * cache.frame_tokens
    for _ in range(passes):
        step = cache.roll(cache.plan(start_frame * cache.frame_tokens, n))
        for layer in range(cache.num_layers):
            k = torch.randn(1, n, 2, 3, generator=g)
            cache.write(layer, step, k, -k)
        cache.commit(step)


def _state(cache: KVCache) -> tuple:
    """What a pass reads: the counters and the filled slots."""
    end = cache.local_end
    return cache.global_end, end, cache.k[:, :, :end].clone(), cache.v[:, :, :end].clone()


def _same(a: tuple, b: tuple) -> bool:
    return a[:2] == b[:2] and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_rewind_to_a_mark_undoes_the_chunks_since_exactly(frames: int) -> None:
    cache = KVCache(num_layers=2, heads=2, head_dim=3, frame_tokens=4, sink_frames=1, window_frames=4)
    f = 0
    for i in range(3):  # filling, then full: the next chunks evict (1 to 3 frames, partly or wholly)
        _passes(cache, f, frames, 2, seed=i)
        f += frames
    marks, states = [], []
    for i in range(4):
        marks.append(cache.mark())
        states.append(_state(cache))
        _passes(cache, f + i * frames, frames, 3, seed=10 + i)
    end = _state(cache)
    cache.rewind(marks[1])  # three chunks undone, newest first
    assert _same(_state(cache), states[1])
    _passes(cache, f + frames, frames, 3, seed=11)  # the same chunk again: the same cache
    _passes(cache, f + 2 * frames, frames, 3, seed=12)
    marks[3] = cache.mark()
    _passes(cache, f + 3 * frames, frames, 3, seed=13)
    assert _same(_state(cache), end)
    cache.rewind(marks[1])  # a mark stays valid for another rewind
    assert _same(_state(cache), states[1])
    cache.rewind(marks[0])
    assert _same(_state(cache), states[0])
    with pytest.raises(CacheError, match="cannot rewind"):
        cache.rewind(marks[2])  # rewound past it


def test_an_interrupted_chunk_rewinds_and_a_chunk_without_a_mark_is_undone_with_the_marks_passes() -> None:
    cache = KVCache(num_layers=1, heads=2, head_dim=3, frame_tokens=4, sink_frames=1, window_frames=2)
    for i in range(3):
        _passes(cache, i, 1, 1, seed=i)
    mark = cache.mark()
    before = _state(cache)
    _passes(cache, 3, 1, 2, seed=7)  # two of its passes ran, then it stopped
    cache.rewind(mark)
    assert _same(_state(cache), before)
    _passes(cache, 3, 1, 2, seed=8)
    _passes(cache, 4, 1, 2, seed=9)  # two chunks after one mark: both undone
    cache.rewind(mark)
    assert _same(_state(cache), before)
    cache.rewind(mark)  # nothing made since: nothing to undo
    assert _same(_state(cache), before)


def test_a_mark_cannot_rewind_across_a_dropped_newer_mark_or_a_reset() -> None:
    cache = KVCache(num_layers=1, heads=2, head_dim=3, frame_tokens=4, sink_frames=1, window_frames=2)
    for i in range(3):
        _passes(cache, i, 1, 1, seed=i)
    old = cache.mark()
    _passes(cache, 3, 1, 1, seed=3)
    newer = cache.mark()
    _passes(cache, 4, 1, 1, seed=4)
    del newer  # its chunk's record went with it
    _passes(cache, 5, 1, 1, seed=5)
    with pytest.raises(CacheError, match="cannot rewind"):
        cache.rewind(old)
    mark = cache.mark()
    cache.reset()
    with pytest.raises(CacheError, match="cannot rewind"):
        cache.rewind(mark)
