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
