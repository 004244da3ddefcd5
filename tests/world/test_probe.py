"""The evaluation probe: a quick CPU training reads body pose and hair style back from renders."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from backend.training.probe import Probe, ProbeError, _pose_pool, render_batch, train_probe
from backend.world.character import HAIR_STYLES, IDENTITY_DIM
from backend.world.pose import POSE_INDEX, POSE_PARAMS

SIZE = (64, 36)  # tiny frames keep this CPU test fast; mouth and eyes need the native 256x144


@pytest.fixture(scope="module")
def trained() -> Probe:
    return train_probe(400, "cpu", batch=32, pool=512, size=SIZE, width=8, lr=3e-3, seed=0)


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.mark.slow
def test_quick_training_reads_pose_and_identity_better_than_chance(trained: Probe):
    gen = torch.Generator().manual_seed(123)  # held-out identities and poses
    frames, poses, ident = render_batch(96, gen, "cpu", SIZE, _pose_pool(gen, clips=4))
    pred, got = trained.predict(frames)
    assert pred.shape == (96, len(POSE_PARAMS))
    assert corr(pred[:, POSE_INDEX["body_bow"]], poses[:, POSE_INDEX["body_bow"]]) > 0.6
    assert corr(pred[:, POSE_INDEX["r_shoulder"]], poses[:, POSE_INDEX["r_shoulder"]]) > 0.3  # arm raise
    true_hair = [HAIR_STYLES[i] for i in ident[:, 18:22].argmax(-1).tolist()]
    acc = sum(a == b for a, b in zip(true_hair, got["hair_style"])) / len(true_hair)
    assert acc > 0.5  # chance is 0.25
    assert got["vector"].shape == (96, IDENTITY_DIM)


def test_save_load_round_trip_is_small_and_close(trained: Probe, tmp_path):
    path = tmp_path / "probe.safetensors"
    trained.save(path)
    assert path.stat().st_size < 1_000_000
    again = Probe.load(path)
    frames = torch.rand(3, 4, 144, 256)  # any size is resized to the probe's own
    a, ia = trained.predict(frames)
    b, ib = again.predict(frames)
    span = trained.pose_span
    assert ((a - b).abs() / span).max() < 0.01  # stored in fp16
    assert ia["hair_style"] == ib["hair_style"]


def test_native_size_probe_is_small(tmp_path):
    Probe().save(tmp_path / "p.safetensors")
    assert (tmp_path / "p.safetensors").stat().st_size < 3_000_000


def test_a_probe_of_the_old_layout_asks_for_retraining(tmp_path):
    old = tmp_path / "old.safetensors"
    save_file({"w": torch.zeros(2)}, str(old), metadata={"format": "liveidol-probe-1"})
    with pytest.raises(ProbeError, match=r"old\.safetensors.*liveidol train probe"):
        Probe.load(old)


def test_render_batch_runs_are_consecutive_poses_of_one_idol():
    gen = torch.Generator().manual_seed(5)
    pool = _pose_pool(gen, clips=2, frames=40)
    frames, poses, ident = render_batch(8, gen, "cpu", SIZE, pool, run=4)
    assert frames.shape == (8, 4, SIZE[1], SIZE[0]) and poses.shape == (8, len(POSE_PARAMS))
    assert torch.equal(ident[0], ident[3]) and not torch.equal(ident[0], ident[4])
    # one jitter offset per run: within a run frames differ by 1/25 s of motion, across runs by much more
    within = (poses[1:4] - poses[:3]).abs().mean()
    assert within < 0.5 * (poses[4] - poses[3]).abs().mean()
    with pytest.raises(ValueError, match="multiple"):
        render_batch(6, gen, "cpu", SIZE, pool, run=4)


def test_render_batch_through_the_autoencoder_gives_premultiplied_frames():
    from backend.config import AutoencoderConfig
    from backend.model.autoencoder import VideoAutoencoder

    ae = VideoAutoencoder(AutoencoderConfig(width=8, native_width=64, native_height=40,
                                            spatial_factor=4, temporal_factor=4))
    gen = torch.Generator().manual_seed(6)
    frames, _, _ = render_batch(8, gen, "cpu", (64, 40), _pose_pool(gen, clips=1, frames=20), run=4,
                                    autoencoder=ae)
    assert frames.shape == (8, 4, 40, 64)
    assert (frames[:, :3] <= frames[:, 3:] + 1e-6).all()  # premultiplied: colour never exceeds the matte
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0


def test_loading_something_else_names_the_file(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ProbeError, match=r"other\.safetensors"):
        Probe.load(other)
    with pytest.raises(ProbeError, match="missing"):
        Probe.load(tmp_path / "missing.safetensors")


def test_bad_frames_are_refused(trained: Probe):
    with pytest.raises(ValueError, match="frames"):
        trained.predict(torch.rand(2, 3, 36, 64))


def test_deadline_stops_training_early(caplog):
    import logging
    import time

    with caplog.at_level(logging.WARNING, logger="backend.training.probe"):
        probe = train_probe(10_000, "cpu", batch=4, pool=8, size=(32, 18), width=4,
                            deadline=time.monotonic() + 1.0)
    assert isinstance(probe, Probe)
    assert any("stopped at the deadline" in r.getMessage() for r in caplog.records)


def test_emotion_head_saves_loads_and_reads_probabilities(tmp_path):
    from backend.actions import EMOTIONS

    probe = Probe(width=4, size=(128, 72), emotion=True)
    probe.save(tmp_path / "e.safetensors")
    again = Probe.load(tmp_path / "e.safetensors")
    assert again.emotion
    frames = torch.rand(3, 4, 72, 128)
    _, a = probe.predict(frames)
    _, b = again.predict(frames)
    assert a["emotion"].shape == (3, len(EMOTIONS))  # type: ignore[union-attr]
    assert torch.allclose(a["emotion"].sum(-1), torch.ones(3))  # type: ignore[union-attr]
    assert (a["emotion"] - b["emotion"]).abs().max() < 0.01  # type: ignore[operator]
    assert "emotion" not in Probe(width=4, size=(128, 72)).predict(frames)[1]  # the old layout: no head


def test_emotion_labels_are_the_segment_emotion_left_out_while_blending():
    from backend.actions import EMOTIONS
    from backend.training.probe import EMOTION_SETTLE_S, _labelled_pool
    from backend.world.pose import random_script, segments

    gen = torch.Generator().manual_seed(5)
    poses, labels = _labelled_pool(gen, clips=3, frames=250)
    assert poses.shape == (3, 250, len(POSE_PARAMS)) and labels.shape == (3, 250)
    # the same draws again: the scripts behind the labels
    gen = torch.Generator().manual_seed(5)
    torch.randint(0, 2**31 - 1, (3,), generator=gen)
    script = random_script(250, gen, switch_every=(20, 60))
    segs = segments(script, 250)
    settle = round(EMOTION_SETTLE_S * 25)
    for i, (start, _a, emo) in enumerate(segs):
        end = segs[i + 1][0] if i + 1 < len(segs) else 250
        changed = i > 0 and segs[i - 1][2] != emo
        if changed:
            assert (labels[0, start:min(end, start + settle)] == -1).all()
        if end > start + settle:
            assert (labels[0, start + settle:end] == EMOTIONS.index(emo)).all()
    assert (labels >= 0).float().mean() > 0.6


def test_training_from_a_probe_keeps_its_weights_as_the_start():
    init = Probe(width=4, size=(64, 36))
    torch.nn.init.constant_(init.head.bias, 0.123)
    probe = train_probe(1, "cpu", batch=4, size=(64, 36), width=4, lr=0.0, emotion=True, clips=2, init=init)
    assert probe.emotion
    assert torch.allclose(probe.head.bias, init.head.bias)  # lr 0: exactly the inherited weights
    with pytest.raises(ValueError, match="width 4"):
        train_probe(1, "cpu", batch=4, size=(64, 36), width=8, init=init)


def test_emotion_head_training_keeps_the_base_probe_exactly():
    from backend.training.probe import train_emotion_head

    base = Probe(width=4, size=(64, 36))
    probe = train_emotion_head(base, 0.01, frames=64, clips=4, face_width=4, fixed_share=0.0)
    assert probe.emotion and probe.face_width == 4
    for k, v in base.state_dict().items():
        assert torch.equal(probe.state_dict()[k], v), k  # the trunk and its heads: the pose read-out is unchanged
    frames = torch.rand(2, 4, 36, 64)
    assert torch.equal(base.predict(frames)[0], probe.predict(frames)[0])
