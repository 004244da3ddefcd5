"""The causal DiT beyond the reference: unbounded RoPE positions, cache == block-causal recompute,
zero-initialised extras that leave Wan behaviour unchanged."""

from __future__ import annotations

import pytest
import torch

from backend.config import DiTSizes
from backend.model.dit import BLOCK_OUTPUTS, EXTRA_PREFIXES, CausalDiT, Rope3D, deepen_state, rope_split
from backend.model.kv_cache import CrossAttentionCache, KVCache

SIZES = DiTSizes(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, text_len=8, num_controls=5)


def _dit(seed: int = 0, std: float = 0.2) -> CausalDiT:
    dit = CausalDiT(SIZES).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if name.startswith(EXTRA_PREFIXES):
                continue  # keep the zero init of the extras
            p.copy_(torch.randn(p.shape, generator=gen) * std + (1.0 if "norm_" in name or "norm3" in name else 0.0))
    return dit


def _wan_rope_table(max_len: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Wan's ``rope_params`` table (torch.polar of a float64 outer product), for comparison."""
    def params(dim: int) -> torch.Tensor:
        freqs = torch.outer(torch.arange(max_len), 1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
        return torch.polar(torch.ones_like(freqs), freqs)
    ft, fh, fw = rope_split(head_dim)
    return [params(2 * ft), params(2 * fh), params(2 * fw)]


def test_rope_equals_wan_table_and_keeps_going() -> None:
    rope = Rope3D(64, 10000.0)
    table = _wan_rope_table(1024, 64)
    f, h, w = 3, 2, 4
    for start in (0, 500, 1021):
        cos, sin = rope.angles(start, f, h, w, torch.device("cpu"))
        ang = torch.cat([
            table[0][start:start + f].view(f, 1, 1, -1).expand(f, h, w, -1),
            table[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
            table[2][:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)
        torch.testing.assert_close(cos, ang.real, atol=1e-12, rtol=0)
        torch.testing.assert_close(sin, ang.imag, atol=1e-12, rtol=0)
    cos, sin = rope.angles(10**6, f, h, w, torch.device("cpu"))
    assert torch.isfinite(cos).all() and torch.allclose(cos**2 + sin**2, torch.ones_like(cos))


@pytest.mark.parametrize("start_frame", [1022, 1024, 10**6])
def test_chunks_past_1024_frames_run(start_frame: int) -> None:
    dit = _dit()
    x = torch.randn(1, 16, 3, 4, 4)
    kv = KVCache(num_layers=2, heads=2, head_dim=16, frame_tokens=4, sink_frames=1, window_frames=4)
    kv.global_end = start_frame * 4  # a stream that has run this long (sink and window cleared here)
    with torch.inference_mode():
        a = dit(x, torch.full((1, 3), 500.0), torch.randn(1, 8, 16), start_frame=start_frame, cache=kv)
        b = dit(x, torch.full((1, 3), 500.0), torch.randn(1, 8, 16), start_frame=start_frame)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert kv.global_end == (start_frame + 3) * 4


def test_cached_chunks_equal_block_causal_recompute() -> None:
    """Chunk k computed with the cache (clean K/V of chunks < k written by t=0 passes) equals a
    cache-free forward over [clean chunks < k at t=0, chunk k at t] with the block-causal mask."""
    dit, chunk, n_chunks = _dit(), 2, 4
    gen = torch.Generator().manual_seed(3)
    ctx = torch.randn(1, 6, 16)
    clean = torch.randn(1, 16, chunk * n_chunks, 4, 6, generator=gen)
    noisy = torch.randn(1, 16, chunk * n_chunks, 4, 6, generator=gen)
    controls = torch.rand(1, chunk * n_chunks, 5, generator=gen)
    with torch.no_grad():
        dit.control_embedding.weight.normal_(0, 0.3, generator=gen)
    kv = KVCache(num_layers=2, heads=2, head_dim=16, frame_tokens=6, window_frames=None, capacity_frames=chunk * n_chunks)
    cross = CrossAttentionCache(2)
    with torch.inference_mode():
        for c in range(n_chunks):
            sl = slice(c * chunk, (c + 1) * chunk)
            t = torch.full((1, chunk), 750.0)
            cached = dit(noisy[:, :, sl], t, ctx, start_frame=c * chunk, cache=kv, cross_cache=cross, controls=controls[:, sl])
            dit(clean[:, :, sl], torch.zeros(1, chunk), ctx, start_frame=c * chunk, cache=kv, cross_cache=cross,
                controls=controls[:, sl])
            seq = torch.cat([clean[:, :, :c * chunk], noisy[:, :, sl]], dim=2)
            ts = torch.cat([torch.zeros(1, c * chunk), t], dim=1)
            full = dit(seq, ts, ctx, controls=controls[:, :(c + 1) * chunk], causal_chunk=chunk)
            torch.testing.assert_close(cached, full[:, :, c * chunk:], atol=1e-4, rtol=1e-4)
            if c:  # the mask matters: without it the earlier frames would see the later ones
                bidir = dit(seq, ts, ctx, controls=controls[:, :(c + 1) * chunk])
                assert not torch.allclose(bidir[:, :, :c * chunk], full[:, :, :c * chunk], atol=1e-3)


def test_zero_extras_behave_like_wan() -> None:
    """With the extras at their zero init, actions, emotions and controls change nothing, and
    [action, emotion, prompt] equals the bare Wan prompt (cross-attention has no positions)."""
    dit = _dit()
    x, t = torch.randn(1, 16, 2, 4, 4), torch.full((1, 2), 600.0)
    prompt = torch.randn(1, 4, 16)
    with torch.inference_mode():
        wan = dit(x, t, prompt)
        ours = dit(x, t, dit.build_context(torch.tensor([3]), torch.tensor([2]), prompt), controls=torch.rand(1, 2, 5))
    torch.testing.assert_close(ours, wan, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        dit.cond_embedding.action.weight.normal_()
    with torch.inference_mode():
        trained = dit(x, t, dit.build_context(torch.tensor([3]), torch.tensor([2]), prompt))
    assert not torch.allclose(trained, wan, atol=1e-3)
    with torch.no_grad():  # the command also modulates every block once cond_modulation has learned
        dit.cond_modulation.weight.normal_(0.0, 0.3)
    with torch.inference_mode():
        modulated = dit(x, t, dit.build_context(torch.tensor([3]), torch.tensor([2]), prompt))
        other = dit(x, t, dit.build_context(torch.tensor([4]), torch.tensor([2]), prompt))
    assert not torch.allclose(modulated, trained, atol=1e-3)
    assert not torch.allclose(modulated, other, atol=1e-3)


def test_per_frame_timesteps_are_per_frame() -> None:
    dit = _dit()
    x = torch.randn(1, 16, 2, 4, 4)
    ctx = torch.randn(1, 8, 16)
    with torch.inference_mode():
        a = dit(x, torch.tensor([[1000.0, 0.0]]), ctx)
        b = dit(x, torch.tensor([[1000.0, 1000.0]]), ctx)
    assert not torch.allclose(a, b, atol=1e-4)


def test_an_x0_head_returns_the_flow_whose_x0_is_the_heads_own() -> None:
    """prediction = "x0": the same weights' head output is x0, returned as flow (x - x0) / max(sigma, X0_SIGMA_MIN),
    so the sampler's x - sigma * flow gives the head's x0 back at every sigma from the clamp up, in the training
    forward and the cached one alike; under bf16 autocast the head still runs in float32 (its weights' dtype)."""
    import dataclasses

    from backend.model.dit import X0_SIGMA_MIN

    flow_dit = _dit(4)
    x0_dit = CausalDiT(dataclasses.replace(SIZES, prediction="x0")).eval()
    x0_dit.load_state_dict(flow_dit.state_dict())
    x, ctx = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 8, 16)
    t = torch.tensor([[1000.0, 625.0, 10.0], [50.0, 300.0, 0.0]])
    sigma = (t / 1000).clamp(min=X0_SIGMA_MIN)[:, None, :, None, None]
    with torch.inference_mode():
        head = flow_dit(x, t, ctx)  # the flow DiT's output is what the x0 DiT's head draws
        flow = x0_dit(x, t, ctx)
        torch.testing.assert_close(flow, (x - head) / sigma)
        back = x - t[:, None, :, None, None] / 1000 * flow  # the sampler's x0
        keep = (t >= 1000 * X0_SIGMA_MIN)[:, None, :, None, None].expand_as(x)
        torch.testing.assert_close(back[keep], head[keep], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(back[~keep], head[~keep], atol=1e-2)  # below the clamp it is not
        trained = x0_dit.forward_train(x, t, ctx, controls=None, frame_pos=torch.arange(3),
                                       attn_mask=torch.ones(3, 3, dtype=torch.bool))
        torch.testing.assert_close(trained, flow, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", torch.bfloat16):
            assert x0_dit(x, t, ctx).dtype == torch.float32


@pytest.mark.parametrize("layers", [2, 3, 5])
def test_deepened_dit_computes_the_same_and_its_new_blocks_train(layers: int) -> None:
    """deepen_state: the deeper DiT's output equals the trained one's (the new blocks pass their input through),
    old blocks keep their order, each new block copies the one before it with its residual outputs at zero, and
    one training step moves those outputs (the new blocks are not dead)."""
    import dataclasses

    dit = _dit()
    with torch.no_grad():  # conditioning extras non-zero too: every path of the block is exercised
        for name, p in dit.named_parameters():
            if name.startswith(EXTRA_PREFIXES):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.2)
    state = deepen_state(dit.state_dict(), layers)
    deep = CausalDiT(dataclasses.replace(SIZES, num_layers=layers)).eval()
    deep.load_state_dict(state)  # strict: every key of the deeper model, none left over
    x, t = torch.randn(1, 16, 2, 4, 4), torch.tensor([[800.0, 300.0]])
    ctx = dit.build_context(torch.tensor([3]), torch.tensor([1]), torch.randn(1, 2, 16))
    controls = torch.rand(1, 2, 5)
    with torch.no_grad():
        torch.testing.assert_close(deep(x, t, ctx, controls=controls), dit(x, t, ctx, controls=controls),
                                   atol=1e-5, rtol=1e-5)
    fresh = [j for j in range(layers) if state[f"blocks.{j}.ffn.2.weight"].abs().sum() == 0]
    assert len(fresh) == layers - 2
    old = [j for j in range(layers) if j not in fresh]
    for i, j in enumerate(old):  # the trained blocks, in their order
        assert torch.equal(state[f"blocks.{j}.self_attn.q.weight"], dit.state_dict()[f"blocks.{i}.self_attn.q.weight"])
    for j in fresh:  # a copy of the block before it, outputs zeroed
        for k, v in state.items():
            if k.startswith(f"blocks.{j}."):
                rest = k[len(f"blocks.{j}."):]
                twin = state[f"blocks.{j - 1}.{rest}"] if (j - 1) in old else None
                if rest.startswith(BLOCK_OUTPUTS):
                    assert v.abs().sum() == 0, k
                elif twin is not None:
                    assert torch.equal(v, twin), k
    if fresh:
        deep.train()
        opt = torch.optim.SGD(deep.parameters(), lr=0.1)
        deep(x, t, ctx, controls=controls).square().mean().backward()
        opt.step()
        assert all(deep.blocks[j].ffn[2].weight.abs().sum() > 0 for j in fresh)
    with pytest.raises(ValueError, match="would drop some"):
        deepen_state(dit.state_dict(), 1)


def test_bad_context_is_named() -> None:
    dit = _dit()
    with pytest.raises(ValueError, match="at most text_len - 2 = 6"):
        dit.build_context(torch.tensor([0]), torch.tensor([0]), torch.randn(1, 7, 16))
    with pytest.raises(ValueError, match=r"expected \(B, L, 16\)"):
        dit.build_context(torch.tensor([0]), torch.tensor([0]), torch.randn(1, 2, 15))


def test_the_docstrings_say_what_the_code_does():
    """dit.py said "Two extra modules" over a list of three; kv_cache.py pointed at a file outside the
    repository (issue 16, point 6)."""
    import re
    from pathlib import Path

    import backend.model.dit as dit

    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
    (count,) = re.findall(r"(\w+) extra modules", dit.__doc__ or "")
    listed = re.findall(r"^\* ``(\w+)``", dit.__doc__ or "", re.MULTILINE)
    assert words[count.lower()] == len(EXTRA_PREFIXES) == len(listed)
    assert sorted(f"{name}." for name in listed) == sorted(EXTRA_PREFIXES)
    root = Path(dit.__file__).resolve().parents[2]
    outside = [f"{path.relative_to(root)}: {line.strip()}"
               for folder in ("backend", "obs_plugin") for path in sorted((root / folder).rglob("*.py"))
               for line in path.read_text(encoding="utf-8").splitlines() if re.search(r"/work/|/home/\w|/root/", line)]
    assert outside == []
