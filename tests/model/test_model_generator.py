"""The Generator API: shapes, determinism, causality, conditioning, bounded memory, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from backend.actions import action
from backend.model.generator import (
    EMOTION_RAMP_S,
    Conditions,
    Generator,
    GeneratorError,
    action_progress,
    control_vector,
    emotion_progress,
)
from tests.model.model_kit import micro_config, random_weights


def _ref(seed: int = 0, size: tuple[int, int] = (90, 70)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 4), dtype=np.uint8)


@pytest.fixture(scope="module")
def weights():
    return random_weights(micro_config())


def _gen(weights, **overrides) -> Generator:
    return Generator(micro_config(**overrides), weights=weights)


def _stream(gen: Generator, actions: list[str], ref=None, mouth=None) -> list[np.ndarray]:
    gen.reset(_ref() if ref is None else ref, Conditions())
    return [gen.next_chunk(Conditions(action=a), mouth=mouth) for a in actions]


def test_shapes_and_state(weights) -> None:
    gen = _gen(weights)
    assert gen.native_size == (32, 16) and gen.output_size == (48, 24) and gen.frames_per_chunk() == 8
    frames = _stream(gen, ["idle", "idle"])
    assert frames[0].shape == (8, 24, 48, 4) and frames[0].dtype == np.uint8
    st = gen.state
    assert (st.frames_made, st.latent_frames_made, st.chunks_made) == (16, 4, 2)
    assert st.cache_frames == 5 and st.attention_backend == "sdpa" and st.device == "cpu" and st.dtype == "float32"
    assert gen.next_chunk(Conditions(), steps=1, chunk_frames=3).shape == (12, 24, 48, 4)
    assert gen.state.steps == 1 and gen.state.chunk_frames == 3


def test_determinism_from_seed(weights) -> None:
    a = _stream(_gen(weights), ["idle", "wave", "wave"])
    b = _stream(_gen(weights), ["idle", "wave", "wave"])
    c = _stream(_gen(weights, seed=7), ["idle", "wave", "wave"])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])
    gen = _gen(weights)  # reset() restarts the noise: a second stream repeats the first
    first, second = _stream(gen, ["idle", "wave"]), _stream(gen, ["idle", "wave"])
    assert all(np.array_equal(x, y) for x, y in zip(first, second))


def test_causality_a_command_changes_only_later_frames(weights) -> None:
    base = _stream(_gen(weights), ["idle", "idle", "idle", "idle"])
    cmd = _stream(_gen(weights), ["idle", "idle", "wave", "wave"])
    assert np.array_equal(base[0], cmd[0]) and np.array_equal(base[1], cmd[1])
    assert not np.array_equal(base[2], cmd[2])  # the command does act, from its chunk on


def test_reference_and_mouth_condition_the_output(weights) -> None:
    a = _stream(_gen(weights), ["idle"], ref=_ref(0))
    b = _stream(_gen(weights), ["idle"], ref=_ref(1, size=(40, 200)))
    assert not np.array_equal(a[0], b[0])  # identity comes from the sink frame
    closed = _stream(_gen(weights), ["talk"], mouth=np.zeros(8))
    open_ = _stream(_gen(weights), ["talk"], mouth=np.ones(8))
    assert not np.array_equal(closed[0], open_[0])
    assert np.array_equal(closed[0], _stream(_gen(weights), ["talk"], mouth=None)[0])  # None = closed


def test_bad_input_is_refused_and_the_stream_goes_on(weights) -> None:
    gen = _gen(weights)
    gen.reset(_ref(), Conditions())
    gen.next_chunk(Conditions())
    before = gen.state
    with pytest.raises(GeneratorError, match="unknown action 'moonwalk'"):
        gen.next_chunk(Conditions(action="moonwalk"))
    with pytest.raises(GeneratorError, match="unknown emotion"):
        gen.next_chunk(Conditions(emotion="bored"))
    with pytest.raises(GeneratorError, match="mouth: 3 values, expected one per video frame = 8"):
        gen.next_chunk(Conditions(), mouth=np.zeros(3))
    with pytest.raises(GeneratorError, match="chunk_frames = 5"):
        gen.next_chunk(Conditions(), chunk_frames=5)
    with pytest.raises(GeneratorError, match="steps = 0"):
        gen.next_chunk(Conditions(), steps=0)
    with pytest.raises(GeneratorError, match=r"Conditions\.text"):
        gen.next_chunk(Conditions(text=torch.zeros(2, 3)))
    with pytest.raises(GeneratorError, match="reference image"):
        gen.reset(np.zeros((8, 8, 4), np.float32), Conditions())
    assert gen.state == before
    assert gen.next_chunk(Conditions(text=torch.randn(2, 16))).shape == (8, 24, 48, 4)


def test_memory_bounded_over_10k_frames_and_past_1024_latents() -> None:
    """>= 10,000 video frames (2,560 latent frames, past the reference's 1,024 cap) with a constant cache."""
    cfg = micro_config(chunk_frames=16, window_frames=16, steps=1, output_width=32, output_height=16)
    gen = Generator(cfg, weights=random_weights(cfg))
    gen.reset(_ref(), Conditions())
    sizes = set()
    while gen.state.frames_made < 10_240:
        out = gen.next_chunk(Conditions(action="wave" if gen.state.chunks_made % 7 == 3 else "idle"))
        if gen.state.chunks_made >= 2:
            sizes.add(gen.state.cache_bytes)
    assert gen.state.latent_frames_made >= 2_560 and gen._position > 1024
    assert len(sizes) == 1 and gen.state.cache_frames == 17
    assert out.std() > 0 and out.shape == (64, 16, 32, 4)


def test_control_vector_and_progress() -> None:
    cfg = micro_config()
    v = control_vector([0.1, 2.0, -1.0, 0.5], 0.25, cfg)
    assert v.tolist() == pytest.approx([0.1, 1.0, 0.0, 0.5, 0.25, 1.0, 0, 0])  # the emotion held all along: 1
    assert control_vector(None, 3.0, cfg, -2.0).tolist() == [0, 0, 0, 0, 1.0, 0.0, 0, 0]
    assert control_vector(None, 0.5, cfg, 0.4).tolist() == pytest.approx([0, 0, 0, 0, 0.5, 0.4, 0, 0])
    five = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, num_controls=5))
    assert control_vector(None, 0.5, five, 0.4).tolist() == [0, 0, 0, 0, 0.5]  # no room: the emotion is left out
    with pytest.raises(GeneratorError, match="3 mouth values"):
        control_vector([0, 0, 0], 0.0, cfg)
    dur = action("wave").duration_s * 25 / 4  # latent frames
    assert action_progress("wave", 0, 4) == 0.0
    assert action_progress("wave", int(dur // 2), 4) == pytest.approx(int(dur // 2) / dur)
    assert action_progress("wave", 10_000, 4) == 1.0
    period = action("idle").duration_s * 25 / 4
    assert action_progress("idle", 30, 4) == pytest.approx((30 % period) / period)
    ramp = EMOTION_RAMP_S * 25 / 4
    assert emotion_progress(0, 4) == 0.0 and emotion_progress(3, 4) == pytest.approx(3 / ramp)
    assert emotion_progress(10_000, 4) == 1.0 and emotion_progress(-5, 4) == 0.0


def test_action_progress_restarts_on_a_new_action_or_serial(weights) -> None:
    gen = _gen(weights)
    gen.reset(_ref(), Conditions())
    dur = action("wave").duration_s * 25 / 4
    gen.next_chunk(Conditions(action="wave"))
    assert gen.state.action == "wave" and gen.state.action_progress == pytest.approx(2 / dur)
    gen.next_chunk(Conditions(action="wave"))
    assert gen.state.action_progress == pytest.approx(4 / dur)
    gen.next_chunk(Conditions(action="wave", serial=1))  # the same action asked again: a new play
    assert gen.state.action_progress == pytest.approx(2 / dur)
    for _ in range(10):
        gen.next_chunk(Conditions(action="wave", serial=1))
    assert gen.state.action_progress == 1.0  # finished: the engine may go back to idle


def test_emotion_progress_ramps_after_an_emotion_change_and_rolls_back(weights) -> None:
    """The DiT's emotion control: 1 while an emotion is held (the reference shows the neutral face), 0 at the
    chunk where a new emotion starts, then up over EMOTION_RAMP_S; an action switch alone does not restart it."""
    gen = _gen(weights)
    gen.reset(_ref(), Conditions())
    ramp = EMOTION_RAMP_S * 25 / 4  # latent frames
    gen.next_chunk(Conditions(action="wave"))
    assert gen.state.emotion_progress == 1.0
    seen = []
    controls = gen._controls

    def spy(mouth, num_frames):
        out = controls(mouth, num_frames)
        seen.append(out[0, :, 5].float().tolist())
        return out

    gen._controls = spy  # type: ignore[method-assign]
    gen.next_chunk(Conditions(action="wave", emotion="sad"))
    assert seen == [pytest.approx([0.0, 1 / ramp], abs=1e-3)]  # the chunk's two latent frames: the ramp's start
    assert gen.state.emotion_progress == pytest.approx(2 / ramp)
    snap = gen.snapshot()
    gen.next_chunk(Conditions(action="heart", emotion="sad"))  # a new action, the same emotion: the ramp goes on
    assert gen.state.emotion_progress == pytest.approx(4 / ramp)
    gen.restore(snap)
    assert gen.state.emotion_progress == pytest.approx(2 / ramp)
    for _ in range(4):
        gen.next_chunk(Conditions(action="idle", emotion="sad"))
    assert gen.state.emotion_progress == 1.0
    gen.next_chunk(Conditions(action="idle", emotion="happy"))
    assert gen.state.emotion_progress == pytest.approx(2 / ramp)


def test_snapshot_restore_replays_identically() -> None:
    """The engine rolls back chunks generated ahead but not shown: restore must bring back every state."""
    from backend.model.generator import Conditions, Generator
    from tests.model.model_kit import micro_config, random_weights

    cfg = micro_config(guidance=1.0)
    gen = Generator(cfg, weights=random_weights(cfg))
    gen.reset(np.full((16, 32, 4), 200, np.uint8), Conditions())
    gen.next_chunk(Conditions(action="wave"))
    snap = gen.snapshot()
    first = [gen.next_chunk(Conditions(action="heart")), gen.next_chunk(Conditions(action="bow", emotion="happy"))]
    state_after = gen.state
    gen.restore(snap)
    again = [gen.next_chunk(Conditions(action="heart")), gen.next_chunk(Conditions(action="bow", emotion="happy"))]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert gen.state == state_after
    gen.restore(snap)  # a snapshot can be used twice; a different continuation differs
    other = gen.next_chunk(Conditions(action="like"))
    assert not np.array_equal(other, first[0])


def test_action_guidance_changes_actions_only() -> None:
    from backend.model.generator import Conditions, Generator
    from tests.model.model_kit import micro_config, random_weights

    outs = {}
    for g in (0.0, 2.0):
        cfg = micro_config(guidance=g)
        gen = Generator(cfg, weights=random_weights(cfg))
        gen.reset(np.full((16, 32, 4), 200, np.uint8), Conditions())
        outs[g] = [gen.next_chunk(Conditions(action=a)) for a in ("idle", "wave")]
    np.testing.assert_array_equal(outs[0.0][0], outs[2.0][0])  # idle: nothing to guide away from
    assert not np.array_equal(outs[0.0][1], outs[2.0][1])


def test_emotion_guidance_pushes_the_listed_emotions_away_from_neutral() -> None:
    """While a listed emotion is held, each denoising step adds w (f - f_neutral); other emotions, neutral, and w = 0
    are untouched, snapshots carry the neutral context, and an unknown emotion in the list is refused by name."""
    from backend.model.generator import Conditions, Generator, GeneratorError
    from tests.model.model_kit import micro_config, random_weights

    ref = np.full((16, 32, 4), 200, np.uint8)
    plan = [Conditions(), Conditions(emotion="angry"), Conditions(action="wave", emotion="angry"),
            Conditions(emotion="sad")]
    outs = {}
    for w in (0.0, 2.0):
        cfg = micro_config(guidance=0.0, emotion_guidance=w, emotion_guidance_for=("angry",))
        gen = Generator(cfg, weights=random_weights(cfg))
        gen.reset(ref, Conditions())
        outs[w] = [gen.next_chunk(c) for c in plan]
    np.testing.assert_array_equal(outs[0.0][0], outs[2.0][0])  # neutral: nothing pushed
    assert not np.array_equal(outs[0.0][1], outs[2.0][1])  # angry, idle
    assert not np.array_equal(outs[0.0][2], outs[2.0][2])  # angry under an action

    cfg = micro_config(guidance=1.0, emotion_guidance=2.0, emotion_guidance_for=("angry",))
    gen = Generator(cfg, weights=random_weights(cfg))
    gen.reset(ref, Conditions(emotion="angry"))
    gen.next_chunk(Conditions(action="wave", emotion="angry"))
    snap = gen.snapshot()
    first = [gen.next_chunk(Conditions(action="heart", emotion="angry")), gen.next_chunk(Conditions(emotion="sad"))]
    gen.restore(snap)
    again = [gen.next_chunk(Conditions(action="heart", emotion="angry")), gen.next_chunk(Conditions(emotion="sad"))]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)

    bad = micro_config(emotion_guidance_for=("furious", "neutral"))
    with pytest.raises(GeneratorError, match=r"model\.emotion_guidance_for: unknown 'furious', 'neutral'"):
        Generator(bad, weights=random_weights(bad))

    # per-emotion weights, as multiples of emotion_guidance: 0 leaves that emotion alone
    cfg = micro_config(guidance=0.0, emotion_guidance=2.0, emotion_guidance_for=("angry", "happy"),
                       emotion_guidance_weights=(1.0, 0.0, 3.0, 3.0))  # happy, angry, surprised, sad
    gen = Generator(cfg, weights=random_weights(cfg))
    assert gen.emotion_push == {"angry": 0.0, "happy": 2.0}
    gen.reset(ref, Conditions())
    weighted = [gen.next_chunk(c) for c in plan[:2]] + [gen.next_chunk(Conditions(emotion="happy"))]
    np.testing.assert_array_equal(weighted[1], outs[0.0][1])  # angry at weight 0: as unguided
    cfg0 = micro_config(guidance=0.0, emotion_guidance=0.0)
    gen0 = Generator(cfg0, weights=random_weights(cfg0))
    gen0.reset(ref, Conditions())
    plain = [gen0.next_chunk(c) for c in plan[:2]] + [gen0.next_chunk(Conditions(emotion="happy"))]
    assert not np.array_equal(weighted[2], plain[2])  # happy pushed
    for weights in ((1.0,), (1.0, -1.0, 1.0, 1.0), (1.0, float("nan"), 1.0, 1.0)):
        bad = micro_config(emotion_guidance_for=("angry", "happy"), emotion_guidance_weights=weights)
        with pytest.raises(GeneratorError, match=r"model\.emotion_guidance_weights: .* one finite weight >= 0 for "
                                                 r"each of happy, angry, surprised, sad"):
            Generator(bad, weights=random_weights(bad))
    even = micro_config(emotion_guidance=1.5, emotion_guidance_for=("sad",), emotion_guidance_weights=())
    assert Generator(even, weights=random_weights(even)).emotion_push == {"sad": 1.5}
    assert Generator(micro_config(), weights=random_weights(micro_config())).emotion_push == {
        "happy": 5.0, "angry": 1.0, "surprised": 1.0, "sad": 1.0}  # the defaults: every mood, happy 5


def test_generator_runs_in_bfloat16() -> None:
    """The CUDA default dtype is bfloat16: every layer must accept it (checked here on the CPU)."""
    from backend.model.generator import Conditions, Generator
    from tests.model.model_kit import micro_config, random_weights

    cfg = micro_config(dtype="bfloat16")
    gen = Generator(cfg, weights=random_weights(cfg))
    gen.reset(np.full((16, 32, 4), 200, np.uint8), Conditions())
    out = gen.next_chunk(Conditions(action="wave"), mouth=np.linspace(0, 1, gen.frames_per_chunk()))
    assert out.shape == (gen.frames_per_chunk(), 24, 48, 4) and out.dtype == np.uint8
    assert gen.state.dtype == "bfloat16"


def test_a_chunks_timing_folded_in_late_leaves_the_next_chunks_marks_alone() -> None:
    """With decode on a second stream a chunk's marks are folded in when its frames reach the host, from the
    engine's thread, while the next chunk is already marking its stages: that must not wipe them."""
    from backend.model.generator import StageTimer

    timer = StageTimer(cuda=False)
    timer.start()
    timer.lap("dit")
    first = timer.take()
    timer.start()  # the next chunk
    timer.lap("cache")
    timer.finish(first)  # the first chunk's frames arrive now
    timer.lap("dit")
    timer.finish()
    assert {k: len(v) for k, v in timer.laps.items()} == {"dit": 2, "cache": 1}


def test_the_cache_pass_stops_at_the_last_blocks_kv_with_the_same_frames_and_cache(weights) -> None:
    """The pass after a chunk's last step only writes the cache: the last block's attention output, FFN and the
    head are skipped (counted), and frames and cache equal those of the whole pass, chunk after chunk, with
    guidance and a window that rolls."""
    runs = []
    for full in (True, False):
        cfg = micro_config(guidance=0.5)
        gen = Generator(cfg, weights=weights)
        gen.full_cache_pass = full
        heads = [0]
        gen.dit.head.register_forward_hook(lambda *_, n=heads: n.__setitem__(0, n[0] + 1))
        frames = _stream(gen, ["idle", "wave", "wave", "nod", "idle", "idle"])
        runs.append((np.concatenate(frames), gen.kv.k.clone(), gen.kv.v.clone(), heads[0]))
    (fa, ka, va, heads_full), (fb, kb, vb, heads_short) = runs
    assert np.array_equal(fa, fb) and torch.equal(ka, kb) and torch.equal(va, vb)
    assert heads_full - heads_short == 7  # one head call fewer per chunk's cache pass (6) and the reset's sink pass
