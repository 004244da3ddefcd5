"""The Wan-tier generator at a tiny size: the avatar as the cache's sink, prompt switches, rollback, decoders."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.actions import ACTIONS
from backend.model.generator import Conditions, GeneratorError
from backend.model.kv_cache import CrossAttentionCache, KVCache
from backend.model.wan.generator import WanGenerator, build_wan_generator
from backend.model.wan.prompts import PromptTemplates
from tests.model.wan.wan_kit import TEXT_LEN, TINY_TAEHV, TINY_VAE, tiny_model_config

REF = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)  # any size: resized to 48x32


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wan")


@pytest.fixture(scope="module")
def gen(root: Path) -> Iterator[WanGenerator]:
    g = build_wan_generator(tiny_model_config(root), PromptTemplates(), vae_cfg=TINY_VAE, taehv_cfg=TINY_TAEHV)
    yield g
    g.close()


def _cond(gen: WanGenerator, text: str, action: str = "idle") -> Conditions:
    assert gen.prompts is not None
    return Conditions(action=action, text=gen.prompts.encode_now(text))


def test_the_avatar_is_the_vae_encoded_sink_for_the_whole_stream(gen: WanGenerator) -> None:
    gen.reset(REF, _cond(gen, "a young woman waves"))
    ft = gen.frame_tokens
    sink_k = gen.kv.k[:, :, :ft].clone()  # (layers, B, tokens, H, D)
    # the sink is latent frame 0 of the Wan VAE's encoding of the image, written by a t=0 pass at position 0
    latent = gen.vae.encode(gen._reference_video(REF))  # (1, 16, 1, h, w)
    kv = KVCache(num_layers=gen.cfg.dit.num_layers, heads=gen.cfg.dit.num_heads, head_dim=gen.dit.head_dim,
                 frame_tokens=ft, sink_frames=1, window_frames=3)
    with torch.inference_mode():
        gen.dit(latent, torch.zeros(1, 1), gen._context, start_frame=0, cache=kv, cross_cache=CrossAttentionCache(2))
    torch.testing.assert_close(kv.k[:, :, :ft], sink_k)
    for _ in range(4):  # 8 latent frames through a 3-frame window: the window rolls, the sink stays
        frames = gen.next_chunk(_cond(gen, "a young woman waves"))
        assert frames.shape == (8, 32, 48, 4) and frames.dtype == np.uint8 and (frames[..., 3] == 255).all()
    assert gen.state.latent_frames_made == 8 and gen.kv.filled_frames == 4
    assert torch.equal(gen.kv.k[:, :, :ft], sink_k)


def test_another_avatar_changes_the_video(gen: WanGenerator) -> None:
    gen.reset(REF, _cond(gen, "a young woman waves"))
    a = gen.next_chunk(_cond(gen, "a young woman waves"))
    gen.reset(255 - REF, _cond(gen, "a young woman waves"))
    b = gen.next_chunk(_cond(gen, "a young woman waves"))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1


def test_a_prompt_switch_refreshes_cross_attention_at_the_next_chunk(gen: WanGenerator) -> None:
    first, second = _cond(gen, "a young woman waves"), _cond(gen, "the idol bows to the audience")
    gen.reset(REF, first)
    gen.next_chunk(first)
    k_first = gen.cross._k[0]
    gen.next_chunk(first)
    assert gen.cross._k[0] is k_first  # same prompt: the cached K/V are reused
    gen.next_chunk(second)
    assert second.text is not None
    expected_ctx = torch.cat([second.text, torch.zeros(TEXT_LEN - second.text.shape[0], second.text.shape[1])])
    torch.testing.assert_close(gen._context[0], expected_ctx)  # Wan's zero padding to text_len
    blk = gen.dit.blocks[0].cross_attn
    k = blk.norm_k(blk.k(gen.dit.text_embedding(expected_ctx[None]))).view(1, TEXT_LEN, 2, -1)
    torch.testing.assert_close(gen.cross._k[0], k)


@pytest.mark.parametrize("decoder", ["taehv", "vae"])
def test_rollback_replays_the_same_frames(root: Path, decoder: str) -> None:
    g = build_wan_generator(tiny_model_config(root, decoder=decoder), PromptTemplates(), vae_cfg=TINY_VAE,
                            taehv_cfg=TINY_TAEHV)
    try:
        c = _cond(g, "a young woman waves")
        g.reset(REF, c)
        g.next_chunk(c)
        snap = g.snapshot()
        a1, a2 = g.next_chunk(c), g.next_chunk(_cond(g, "she nods", "nod"))
        g.restore(snap)
        b1, b2 = g.next_chunk(c), g.next_chunk(_cond(g, "she nods", "nod"))
        assert np.array_equal(a1, b1) and np.array_equal(a2, b2)
        assert a1.shape == (8, 32, 48, 4)
    finally:
        g.close()


def test_prompt_conditions_never_wait_for_the_text_encoder(gen: WanGenerator) -> None:
    make = gen.conditions_factory()
    old = make("idle", "neutral", "a calm idol")
    assert gen.prompts is not None
    encoder, gate = gen.prompts.encoder, threading.Event()
    real = encoder.embed

    def gated(prompt: str) -> torch.Tensor:
        assert gate.wait(30)
        return real(prompt)

    encoder.embed = gated  # type: ignore[method-assign]
    try:
        switched = make("idle", "neutral", "a brand new prompt nobody asked before")
        assert switched.text is old.text  # answered at once with the old prompt
        gate.set()
        assert gen.prompts.wait_idle(30)
        now = make("idle", "neutral", "a brand new prompt nobody asked before")
        assert now.text is not old.text and make.current_text == "a brand new prompt nobody asked before"
        # every action's prompt at this emotion was prefetched meanwhile: a command finds its embedding ready
        assert all(gen.prompts.ready(gen.templates.text(a.name, "neutral")) for a in ACTIONS)
    finally:
        encoder.embed = real  # type: ignore[method-assign]
    make("wave", "happy", "a brand new prompt nobody asked before")  # a one-shot action plays its template
    assert gen.prompts.wait_idle(30)
    assert make("wave", "happy", "a brand new prompt nobody asked before").action == "wave"
    assert make.current_text == ("A young virtual idol raises her right hand and waves at the camera, looking happy "
                                 "and cheerful. Medium shot, plain studio background, soft light, she looks into "
                                 "the camera.")


def test_bad_input_is_refused_with_one_line(gen: WanGenerator) -> None:
    with pytest.raises(GeneratorError, match="needs a text embedding"):
        gen.next_chunk(Conditions(action="wave"))
    with pytest.raises(GeneratorError, match=r"expected \(1 <= L <= 16, 32\)"):
        gen.next_chunk(Conditions(text=torch.zeros(3, 8)))
    with pytest.raises(GeneratorError, match="reference image"):
        gen.reset(REF.astype(np.float32), _cond(gen, "x"))  # type: ignore[arg-type]
    gen.reset(REF, _cond(gen, "a young woman waves"))  # the stream goes on
    assert gen.next_chunk(_cond(gen, "a young woman waves")).shape[0] == 8


def test_the_tier_takes_the_attention_settings_and_reports_compilation(root: Path) -> None:
    """`model.attention = "sparse"` keeps `model.sparse_keep` in this tier too, and the state says whether the
    cached step runs compiled (never on the CPU)."""
    g = build_wan_generator(tiny_model_config(root, attention="sparse", sparse_keep=0.5), PromptTemplates(),
                            vae_cfg=TINY_VAE, taehv_cfg=TINY_TAEHV)
    try:
        assert getattr(g.dit.attention, "keep", None) == 0.5
        assert g.state.compiled is False
    finally:
        g.close()


def test_a_chunk_interrupted_mid_way_and_remade_equals_a_clean_run(gen: WanGenerator) -> None:
    """The engine's restart at a command: the chunk stops between two passes (its denoising passes have
    written its cache slots already), the snapshot before it comes back, and the chunk made again under the
    new prompt is the one a clean run makes, and so are the chunks after it."""
    from backend.model.generator import ChunkInterrupted

    a, b, z = _cond(gen, "she waves"), _cond(gen, "she sings"), _cond(gen, "she bows")
    gen.reset(REF, a)
    gen.next_chunk(a)
    clean_snap = gen.snapshot()
    clean = np.concatenate([gen.next_chunk(z) for _ in range(3)])
    gen.restore(clean_snap)
    checks: list[int] = []

    def stop() -> bool:  # asked before each pass: one runs (the previous chunk's cache pass ran already), the next stops
        checks.append(1)
        return len(checks) > 1

    gen.interrupt = stop
    snap = gen.snapshot()
    k_before = gen.kv.k.clone()
    with pytest.raises(ChunkInterrupted):
        gen.next_chunk(b)
    gen.interrupt = None
    assert len(checks) == 2 and gen.kv.k.ne(k_before).any()  # a pass ran and wrote the chunk's slots
    gen.restore(snap)
    again = np.concatenate([gen.next_chunk(z) for _ in range(3)])
    assert np.array_equal(again, clean)


def test_decode_on_a_second_stream_falls_back_in_line_on_a_cpu_with_the_same_frames(root: Path) -> None:
    """``start_chunk`` (the engine's overlapped path) hands back pending frames; on a CPU there is no second
    stream, the frames come back done, and several chunks started before any is read equal ``next_chunk``'s
    one by one (on CUDA the same comparison runs in the GPU script: /work/brief/gpu/wan-live.sh)."""
    cfg = tiny_model_config(root)
    assert cfg.wan.decode_stream  # on by default, and ignored on a CPU
    one = build_wan_generator(cfg, PromptTemplates(), vae_cfg=TINY_VAE, taehv_cfg=TINY_TAEHV)
    two = build_wan_generator(cfg, PromptTemplates(), vae_cfg=TINY_VAE, taehv_cfg=TINY_TAEHV)
    try:
        assert one.decode_stream is None
        texts = ["she waves", "she waves", "she sings", "she bows"]
        one.reset(REF, _cond(one, texts[0]))
        two.reset(REF, _cond(two, texts[0]))
        started = [one.start_chunk(_cond(one, t)) for t in texts]
        assert all(p.done() for p in started) and [p.count for p in started] == [8] * 4
        serial = [two.next_chunk(_cond(two, t)) for t in texts]
        for p, frames in zip(started, serial, strict=True):
            assert np.array_equal(p.result(), frames)
    finally:
        one.close()
        two.close()


def test_the_cache_pass_stops_at_the_last_blocks_kv_and_runs_at_the_next_chunk_with_the_same_frames(
        gen: WanGenerator) -> None:
    """The pass after a chunk's last step only writes the cache: it skips the last block's attention, FFN and
    the head; and it runs at the start of the next chunk's making (``defer_cache_pass``). Frames and cache equal
    those of the whole pass at the chunk's end, chunk after chunk (the window rolling, prompts switching), and
    after a snapshot's rewind (the same frames again)."""
    a, b = _cond(gen, "she waves"), _cond(gen, "she nods", "nod")
    runs = []
    for full, defer in ((True, False), (False, False), (False, True), (True, True)):
        gen.full_cache_pass, gen.defer_cache_pass = full, defer
        try:
            gen.reset(REF, a)
            frames = [gen.next_chunk(a if i % 3 else b) for i in range(5)]  # 2-latent chunks, a 3-frame window
            snap = gen.snapshot()
            frames += [gen.next_chunk(b), gen.next_chunk(a)]
            gen.restore(snap)
            frames += [gen.next_chunk(b), gen.next_chunk(a)]
            gen._run_pending_pass()  # the last chunk's context into the cache, to compare the caches
            runs.append((np.concatenate(frames), gen.kv.k.clone(), gen.kv.v.clone()))
        finally:
            gen.full_cache_pass, gen.defer_cache_pass = False, True
    fa, ka, va = runs[0]
    for fb, kb, vb in runs[1:]:
        assert np.array_equal(fa, fb) and torch.equal(ka, kb) and torch.equal(va, vb)
    assert np.array_equal(fa[-16:], fa[-32:-16])  # after the rewind: the same two chunks again


@pytest.mark.parametrize("stop_at", [1, 2, 3])
def test_a_chunk_stopped_before_or_after_the_previous_chunks_cache_pass_is_remade_as_a_clean_run(
        gen: WanGenerator, stop_at: int) -> None:
    """Stopped at its first check (the previous chunk's deferred cache pass not run), its second (that pass ran:
    it stands, the rewind keeps it) or its third (a denoising pass ran too): the remade chunks equal a clean run."""
    from backend.model.generator import ChunkInterrupted

    a, b, z = _cond(gen, "she waves"), _cond(gen, "she sings"), _cond(gen, "she bows")
    gen.reset(REF, a)
    gen.next_chunk(a)
    gen.next_chunk(a)
    clean = np.concatenate([gen.next_chunk(z) for _ in range(3)])
    gen.reset(REF, a)
    gen.next_chunk(a)
    gen.next_chunk(a)
    snap = gen.snapshot()
    assert snap.pending is not None  # the second chunk's cache pass waits for the next chunk
    checks: list[int] = []
    gen.interrupt = lambda: checks.append(1) is None and len(checks) >= stop_at
    with pytest.raises(ChunkInterrupted):
        gen.next_chunk(b)
    gen.interrupt = None
    assert snap.flushed[0] == (stop_at > 1)
    gen.restore(snap)
    assert (gen._pending_pass is None) == (stop_at > 1)
    assert np.array_equal(np.concatenate([gen.next_chunk(z) for _ in range(3)]), clean)


def test_the_cache_pass_runs_one_block_short_at_the_next_chunk(gen: WanGenerator) -> None:
    calls: list[str] = []
    blocks = list(gen.dit.blocks)
    hooks = [blk.register_forward_hook(lambda *_: calls.append("block")) for blk in blocks]
    hooks.append(gen.dit.head.register_forward_hook(lambda *_: calls.append("head")))
    try:
        c = _cond(gen, "she waves")
        gen.reset(REF, c)
        gen.next_chunk(c, steps=2)
        calls.clear()
        gen.next_chunk(c, steps=2)
    finally:
        for h in hooks:
            h.remove()
    n = len(blocks)
    assert calls == ["block"] * (n - 1) + (["block"] * n + ["head"]) * 2  # the previous cache pass, two steps
