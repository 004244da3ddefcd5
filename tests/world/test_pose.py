"""The pose library: every action's trajectory does what it says, switches are smooth, scores rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.actions import ACTIONS, action
from backend.world.pose import (
    ARM_FORE,
    NOSE,
    POSE_INDEX,
    POSE_PARAMS,
    REST_POSE,
    action_scores,
    random_script,
    simulate,
    skeleton,
)

FPS = 25.0
START = 10


def play(name: str, emotion: str = "neutral", n: int = 90, seed: int = 1, **kw):
    return simulate([(0, "idle", "neutral"), (START, name, emotion)], n, seed=seed, **kw)


def mid(name: str) -> slice:
    """Frames from 40 % to 70 % of the action's duration after it starts."""
    d = action(name).duration_s * FPS
    return slice(START + int(0.4 * d), START + int(0.7 * d))


def col(poses: torch.Tensor, name: str) -> torch.Tensor:
    return poses[:, POSE_INDEX[name]]


def test_deterministic_for_a_seed_and_varies_across_seeds():
    a, pa = play("wave", seed=3)
    b, pb = play("wave", seed=3)
    c, _ = play("wave", seed=4)
    assert torch.equal(a, b) and torch.equal(pa, pb)
    assert not torch.equal(a, c)
    assert a.shape == (90, len(POSE_PARAMS)) and a.dtype == torch.float32


def test_wave_raises_right_hand_above_shoulder_and_oscillates():
    poses, _ = play("wave")
    sk = skeleton(poses)
    m = mid("wave")
    assert (sk.r_hand[m, 1] < sk.r_shoulder[m, 1] - 10).all()  # y is down: hand well above the shoulder
    assert (sk.l_hand[m, 1] > sk.l_shoulder[m, 1]).all()        # the left arm stays down
    elbow = col(poses, "r_elbow")[m]
    assert elbow.std() > 0.15                                   # oscillates
    signs = torch.sign(elbow - elbow.mean())
    assert (signs[1:] != signs[:-1]).sum() >= 2                 # goes back and forth


def test_heart_brings_both_hands_to_the_chest_centre():
    poses, _ = play("heart")
    sk = skeleton(poses)
    m = mid("heart")
    centre = (sk.r_hand[m] + sk.l_hand[m]) / 2
    assert ((centre[:, 0] - 128).abs() < 8).all()
    assert ((centre[:, 1] > 82) & (centre[:, 1] < 105)).all()   # between the shoulders and the belly
    assert ((sk.l_hand[m, 0] - sk.r_hand[m, 0]).abs() < 24).all()
    assert (col(poses, "r_heart")[m] > 0.9).all() and (col(poses, "l_heart")[m] > 0.9).all()


def test_like_is_a_thumbs_up_with_the_right_hand():
    poses, _ = play("like")
    m = mid("like")
    assert (col(poses, "r_thumb")[m] > 0.9).all() and (col(poses, "l_thumb")[m] < 0.1).all()


def test_touch_nose_puts_the_right_index_finger_on_the_nose():
    poses, _ = play("touch_nose")
    sk = skeleton(poses)
    m = mid("touch_nose")
    d = (sk.r_hand - sk.r_elbow) / ARM_FORE
    tip = sk.r_hand + 10.0 * d
    dist = torch.linalg.vector_norm(tip[m] - torch.tensor(NOSE), dim=-1)
    assert (dist < 9.0).all(), dist
    assert (col(poses, "r_point")[m] > 0.9).all()


def test_blink_closes_both_eyes_twice():
    poses, _ = play("blink", seed=2)
    seg = slice(START, START + int(action("blink").duration_s * FPS))
    for eye in ("eye_open_l", "eye_open_r"):
        closed = (col(poses, eye)[seg] < 0.1).int()
        assert int((closed[1:] - closed[:-1] == 1).sum()) == 2, closed


def test_nod_moves_pitch_and_shake_moves_yaw():
    nod, _ = play("nod")
    shake, _ = play("shake_head")
    seg = slice(START, START + 40)
    assert np.ptp(col(nod, "head_pitch")[seg].numpy()) > 0.25
    assert np.ptp(col(nod, "head_yaw")[seg].numpy()) < 0.1
    assert np.ptp(col(shake, "head_yaw")[seg].numpy()) > 0.6


def test_bow_bends_and_returns_to_idle():
    poses, progress = play("bow", n=120)
    assert (col(poses, "body_bow")[mid("bow")] > 0.9).all()
    end = START + int(action("bow").duration_s * FPS)
    assert col(poses, "body_bow")[end + 10:].abs().max() < 0.02   # back to idle after it ends
    assert progress[end - 1] > 0.95 and progress[end] == 0.0          # idle starts a new progress


def test_other_actions_show_their_main_parameter():
    expect = {"racket": ("racket", 0.95, 1), "angry": ("brow_anger", 0.8, 1), "angry ": ("mouth_smile", -0.5, -1),
              "smile": ("eye_smile", 0.95, 1), "smile ": ("eye_open_l", 0.15, -1),
              "surprise": ("mouth_round", 0.9, 1), "surprise ": ("eye_open_r", 1.2, 1)}
    for key, (param, bound, sign) in expect.items():
        poses, _ = play(key.strip())
        v = col(poses, param)[mid(key.strip())]
        reached = v.max() if sign > 0 else v.min()  # a random idle blink may pass by
        assert (reached - bound) * sign > 0, (key, param, v)
    racket, _ = play("racket")
    sk = skeleton(racket)
    assert (sk.r_hand[mid("racket"), 1] < sk.head[mid("racket"), 1] + 5).all()  # raised to head height


def test_talk_follows_the_mouth_envelope():
    env = (0.5 + 0.5 * np.sin(np.arange(90) * 0.7)).astype(np.float32)
    poses, _ = simulate([(0, "talk", "neutral")], 90, seed=0, mouth=env)
    assert np.allclose(col(poses, "mouth_open").numpy(), env, atol=1e-6)
    babble, _ = simulate([(0, "talk", "neutral")], 90, seed=0)
    assert col(babble, "mouth_open").std() > 0.1                  # without an envelope it babbles
    waving, _ = simulate([(0, "wave", "neutral")], 90, seed=0, mouth=env)
    assert (col(waving, "mouth_open") >= torch.from_numpy(env) - 1e-6).all()  # speech overlaps gestures


def test_idle_breathes_and_blinks_at_random():
    a, progress = simulate([(0, "idle", "neutral")], 250, seed=5)
    b, _ = simulate([(0, "idle", "neutral")], 250, seed=6)
    assert np.ptp(col(a, "breath").numpy()) > 1.5
    closed_a = (col(a, "eye_open_l") < 0.2).nonzero().flatten()
    closed_b = (col(b, "eye_open_l") < 0.2).nonzero().flatten()
    assert len(closed_a) > 0 and len(closed_b) > 0
    assert not torch.equal(closed_a, closed_b)                      # random blink times
    assert (col(a, "eye_open_l") > 0.9).float().mean() > 0.8       # mostly open
    period = int(action("idle").duration_s * FPS)
    assert progress[period] == 0.0 and progress[period - 1] > 0.95  # loop actions wrap


def test_progress_counts_frames_over_duration():
    _, progress = play("wave")
    d = int(action("wave").duration_s * FPS)
    assert progress[START] == 0.0
    assert progress[START + d // 2] == pytest.approx(0.5, abs=0.03)
    assert progress[START - 1] > 0  # idle before


@pytest.mark.parametrize("first", [a.name for a in ACTIONS])
def test_interrupting_any_action_midway_is_continuous(first: str):
    """Every action interrupted at 50 % by every other: no jump between consecutive frames.

    Bounds: 0.6 rad (or unit) per frame, about the fastest natural motion in the library (the surprise
    startle); eyes 0.7 (a blink closes in 3 frames). A naive cut jumps by more than 1 (next test).
    """
    d = int(action(first).duration_s * FPS)
    s = START + d // 2
    worst = 0.0
    for second in ACTIONS:
        poses, _ = simulate([(0, "idle", "neutral"), (START, first, "happy"), (s, second.name, "angry")], s + 30,
                            seed=7)
        jump = (poses[s - 2:s + 4, :] - poses[s - 3:s + 3, :]).abs().amax(0)
        eyes = [POSE_INDEX["eye_open_l"], POSE_INDEX["eye_open_r"]]
        assert float(jump[eyes].max()) < 0.7, (second.name, jump)
        jump[eyes] = 0
        worst = max(worst, float(jump.max()))
    assert worst < 0.6, worst


def test_a_naive_cut_would_jump():
    wave, _ = play("wave")
    s = mid("wave").start
    rest = torch.from_numpy(REST_POSE)
    assert (wave[s] - rest).abs().max() > 1.0  # what the blend has to bridge


def test_random_script_aligns_switches():
    gen = torch.Generator().manual_seed(0)
    script = random_script(400, gen, switch_every=(10, 50), align=4)
    starts = [s for s, _, _ in script]
    assert starts[0] == 0 and all(s % 4 == 0 for s in starts)
    gaps = np.diff(starts)
    assert (gaps >= 8).all() and (gaps <= 50).all()
    assert len({a for _, a, _ in script}) > 3
    again = random_script(400, torch.Generator().manual_seed(0), switch_every=(10, 50), align=4)
    assert again == script
    simulate(script, 400, seed=0)  # every random script simulates


def test_random_script_plays_a_share_of_actions_whole():
    """``full_play``: that share of the non-looping actions last their whole duration (rounded up to ``align``), so a
    training clip holds a deep bow as a viewer's command does; without it no gap exceeds ``switch_every``."""
    def long_plays(full_play: float) -> tuple[int, int]:
        script = random_script(4000, torch.Generator().manual_seed(3), switch_every=(8, 16), align=4,
                               full_play=full_play)
        gaps = np.diff([s for s, _, _ in script])
        whole = [g >= round(action(a).duration_s * FPS) for (_, a, _), g in zip(script, gaps, strict=False)
                 if not action(a).loop]
        assert all(g % 4 == 0 for g in gaps)
        return sum(whole), len(whole)

    none, n0 = long_plays(0.0)
    some, n1 = long_plays(0.35)
    assert none == 0 and n0 > 50  # switches every 8-16 frames cut every action (the shortest, blink, lasts 20)
    assert 0.25 < some / n1 < 0.45, (some, n1)
    with pytest.raises(ValueError, match="full_play"):
        random_script(100, torch.Generator().manual_seed(0), full_play=1.5)


def test_bad_script_entries_name_the_problem():
    with pytest.raises(KeyError, match="dance"):
        simulate([(0, "dance", "neutral")], 10, seed=0)
    with pytest.raises(KeyError, match="bored"):
        simulate([(0, "wave", "bored")], 10, seed=0)
    with pytest.raises(ValueError, match=r"script\[0\]"):
        simulate([(-1, "wave", "neutral")], 10, seed=0)


@pytest.mark.parametrize("name", [a.name for a in ACTIONS if a.name != "idle"])
def test_action_scores_rank_the_commanded_action_top(name: str):
    poses, _ = play(name, seed=11)
    scores = action_scores(poses)
    m = mid(name)
    means = {a: float(v[m].mean()) for a, v in scores.items()}
    best = max(means, key=means.get)
    assert best == name, means
    assert means[name] > 0.4


def test_action_scores_say_idle_when_idle():
    poses, _ = simulate([(0, "idle", "neutral")], 200, seed=3)
    scores = action_scores(poses)
    means = {a: float(v.mean()) for a, v in scores.items()}
    assert max(means, key=means.get) == "idle", means


def test_segments_label_what_simulate_plays():
    from backend.world.pose import segments

    segs = segments([(20, "wave", "happy"), (100, "talk", "neutral")], 150)
    wave_end = 20 + round(action("wave").duration_s * FPS)
    assert segs == [(0, "idle", "happy"), (20, "wave", "happy"), (wave_end, "idle", "happy"), (100, "talk", "neutral")]
