"""The fast DiT step's pieces that run on a CPU: the split pass (what is compiled and graphed on CUDA),
the in-place eviction, FP8 linears (emulated: the FP8 kernel needs a GPU), block-sparse attention,
per-stage timing. The compiled kernels and CUDA graphs themselves need a GPU: tests/gpu/perf_run.py
checks them there (frames of the compiled, graphed generator against eager ones)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backend.config import DiTSizes
from backend.model.accel import FastDiT
from backend.model.attention import SdpaAttention, SparseAttention
from backend.model.dit import CausalDiT
from backend.model.fp8 import Fp8Linear, quantize_blocks_
from backend.model.generator import Conditions, Generator, GeneratorError
from backend.model.kv_cache import CrossAttentionCache, KVCache
from tests.model.model_kit import micro_config, random_weights

SIZES = DiTSizes(dim=32, ffn_dim=64, num_heads=2, num_layers=3, text_dim=16, text_len=8, num_controls=0)


def _stream(call, *, chunks: int = 4) -> tuple[list[torch.Tensor], KVCache]:
    """Chunks of 2 frames through a 1+4-frame cache (evicting from the third on), 3 passes each, with two
    cross caches taking turns (as action guidance does)."""
    kv = KVCache(num_layers=3, heads=2, head_dim=16, frame_tokens=4, sink_frames=1, window_frames=4)
    crosses = (CrossAttentionCache(3), CrossAttentionCache(3))
    g = torch.Generator().manual_seed(1)
    ctxs = (torch.randn(1, 8, 16, generator=g), torch.randn(1, 8, 16, generator=g))
    outs = []
    with torch.inference_mode():
        call(torch.randn(1, 16, 1, 4, 4, generator=g), torch.zeros(1, 1), ctxs[0], 0, kv, crosses[0])  # the sink
        for c in range(chunks):
            x = torch.randn(1, 16, 2, 4, 4, generator=g)
            for i, t in enumerate((1000.0, 500.0, 0.0)):
                outs.append(call(x, torch.full((1, 2), t), ctxs[i % 2], 1 + 2 * c, kv, crosses[i % 2]))
    return outs, kv


def _dit() -> CausalDiT:
    torch.manual_seed(0)
    dit = CausalDiT(SIZES).eval()
    nn.init.normal_(dit.head.head.weight, std=0.1)  # a non-zero output
    return dit


def test_split_pass_equals_the_model() -> None:
    dit = _dit()
    ref, ref_kv = _stream(lambda x, t, c, f0, kv, xc: dit(x, t, c, start_frame=f0, cache=kv, cross_cache=xc))
    fast = FastDiT(dit)  # compile and graphs need CUDA: force the split path they run
    fast.active = True
    got, got_kv = _stream(lambda x, t, c, f0, kv, xc: fast(x, t, c, start_frame=f0, cache=kv, cross_cache=xc))
    assert ref_kv.local_end == ref_kv.capacity and (got_kv.global_end, got_kv.local_end) == (
        ref_kv.global_end, ref_kv.local_end)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(got_kv.k, ref_kv.k, atol=0, rtol=0)
    assert any(o.abs().max() > 0 for o in got)


def test_inactive_fast_dit_is_the_model_itself() -> None:
    dit = _dit()
    fast = FastDiT(dit)  # no compile, no graphs: a plain forward
    assert not fast.active and fast.graph_count == 0
    ref, _ = _stream(lambda x, t, c, f0, kv, xc: dit(x, t, c, start_frame=f0, cache=kv, cross_cache=xc), chunks=2)
    got, _ = _stream(lambda x, t, c, f0, kv, xc: fast(x, t, c, start_frame=f0, cache=kv, cross_cache=xc), chunks=2)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_roll_evicts_every_layer_in_place_like_write() -> None:
    """roll() then write() leaves the same cache as write() evicting layer by layer, without new buffers."""
    def fill(cache: KVCache, use_roll: bool) -> None:
        for c in range(5):
            step = cache.plan(3 * c * 2, 3 * 2)
            if use_roll:
                step = cache.roll(step)
                assert step.evict == 0
            for layer in range(2):
                val = torch.full((1, 6, 1, 1), float(100 * layer + c))
                cache.write(layer, step, val, -val)
            cache.commit(step)

    a = KVCache(num_layers=2, heads=1, head_dim=1, frame_tokens=2, sink_frames=1, window_frames=5)
    b = KVCache(num_layers=2, heads=1, head_dim=1, frame_tokens=2, sink_frames=1, window_frames=5)
    ptr = b.k.data_ptr()
    fill(a, use_roll=False)
    fill(b, use_roll=True)
    assert b.k.data_ptr() == ptr
    assert torch.equal(a.k, b.k) and torch.equal(a.v, b.v)
    assert b.k[1, 0, :, 0, 0].tolist() == [100] * 2 + [103] * 4 + [104] * 6  # the sink, frames 10-14


def test_fp8_linear_is_close_to_dense_and_swaps_the_block_linears() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 96)
    x = torch.randn(5, 7, 64)
    q = Fp8Linear(lin)  # on a CPU: the same e4m3 numbers, multiplied in float32
    assert q.weight.dtype == torch.float8_e4m3fn and q.scale.shape == (1, 96)
    with torch.no_grad():
        ref, out = lin(x), q(x)
    err = float((out - ref).norm() / ref.norm())
    assert 1e-4 < err < 0.08, err  # e4m3 has 3 mantissa bits: a few percent, never exact
    with pytest.raises(ValueError, match="multiples of 16"):
        Fp8Linear(nn.Linear(30, 32))
    dit = CausalDiT(DiTSizes(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, text_len=8))
    assert quantize_blocks_(dit) == 2 * 8  # q k v o, cross q o, ffn in and out
    assert isinstance(dit.blocks[0].ffn[2], Fp8Linear) and isinstance(dit.blocks[0].cross_attn.k, nn.Linear)


def test_fp8_is_refused_clearly_where_it_cannot_run() -> None:
    cfg = micro_config(linears="fp8")
    with pytest.raises(GeneratorError, match=r"linears = 'fp8' needs model\.dtype bfloat16 on a CUDA GPU"):
        Generator(cfg, weights=random_weights(cfg))


def test_sparse_attention_attends_exactly_the_picked_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 2, 16, generator=g) for n in (70, 300, 300))  # partial last blocks on purpose
    dense = SdpaAttention()(q, k, v)
    torch.testing.assert_close(SparseAttention(1.0, block=32, compile=False)(q, k, v), dense)
    sp = SparseAttention(0.3, block=32, compile=False)
    out = sp(q, k, v)
    mask = sp.block_mask(q.transpose(1, 2), k.transpose(1, 2)).to_dense()  # (1, H, 3, 10) picked blocks
    assert mask.shape == (1, 2, 3, 10) and bool((mask.sum(-1) == 3).all())  # ceil(0.3 * 10) blocks per row
    allowed = mask.repeat_interleave(32, 2)[:, :, :70].repeat_interleave(32, 3)[..., :300].bool()
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           attn_mask=allowed).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert float((out - dense).norm() / dense.norm()) > 0.05  # it is an approximation


def test_stage_timer_splits_a_chunk_into_its_stages() -> None:
    from backend.model.generator import StageTimer

    cfg = micro_config()
    gen = Generator(cfg, weights=random_weights(cfg))
    gen.reset(None, Conditions())
    gen.timer = StageTimer(cuda=False)
    for _ in range(2):
        gen.next_chunk(Conditions(action="wave"))
    laps = gen.timer.laps
    assert set(laps) == {"dit", "cache", "decode", "upscale", "host_copy"}
    assert all(len(v) == 2 and min(v) >= 0 for v in laps.values())
