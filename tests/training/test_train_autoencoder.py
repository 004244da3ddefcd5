"""Training the video autoencoder on synthetic disc clips, on CPU, at a tiny width and size."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from backend.config import AutoencoderConfig
from backend.model.autoencoder import VideoAutoencoder
from backend.training.train_autoencoder import (
    DEFAULT_WEIGHTS,
    disc_clips,
    evaluate_autoencoder,
    fit_latent_stats,
    reconstruction_losses,
    train_autoencoder,
)

H, W, T = 32, 64, 8
TINY = AutoencoderConfig(latent_channels=8, spatial_factor=4, temporal_factor=4, width=16,
                         native_width=W, native_height=H)


def _model(seed: int = 0) -> VideoAutoencoder:
    torch.manual_seed(seed)
    return VideoAutoencoder(TINY)


def _eval_loss(ae: VideoAutoencoder, video: torch.Tensor) -> float:
    """Plain reconstruction error: alpha-weighted RGB L1 + alpha L1."""
    with torch.no_grad():
        recon = ae.decode(ae.encode(video))
        terms = reconstruction_losses(recon, video)
    return float(terms["rgb_l1"] + terms["alpha"])


def test_disc_clips_are_valid_rgba_with_motion() -> None:
    clips = disc_clips(H, W, T)
    a = clips(3, torch.Generator().manual_seed(0))
    b = clips(3, torch.Generator().manual_seed(0))
    c = clips(3, torch.Generator().manual_seed(1))
    assert a.shape == (3, T, 4, H, W) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)  # the generator decides everything
    assert not torch.equal(a, c)
    alpha = a[:, :, 3]
    assert ((alpha > 0) & (alpha < 1)).any()  # anti-aliased rims
    assert (alpha == 0).any() and (alpha == 1).any()  # transparent background, opaque discs
    assert (a[:, 0] - a[:, -1]).abs().amax(dim=(1, 2, 3)).min() > 0.5  # every clip moves
    assert (a[:, :, :3] * (alpha[:, :, None] == 0)).abs().max() == 0  # no colour under alpha 0


def test_losses_are_zero_for_a_perfect_reconstruction() -> None:
    video = disc_clips(H, W, T)(2, torch.Generator().manual_seed(0))
    terms = reconstruction_losses(video, video)
    for name in ("rgb_l1", "rgb_l2", "alpha", "edge", "latent"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-7), name
    worse = reconstruction_losses(video.flip(-1), video)
    assert worse["alpha"] > 0.01 and worse["edge"] > 0.001
    with pytest.raises(ValueError, match="recon shape"):
        reconstruction_losses(video[:, :4], video)


def test_training_lowers_reconstruction_loss(caplog: pytest.LogCaptureFixture) -> None:
    ae = _model()
    clips = disc_clips(H, W, T)
    held_out = clips(4, torch.Generator().manual_seed(999))
    before = _eval_loss(ae, held_out)
    metrics_before = evaluate_autoencoder(ae, clips, 1, batch=4)
    with caplog.at_level(logging.INFO, logger="backend.training.train_autoencoder"):
        state = train_autoencoder(ae, clips, 80, lr=3e-3, batch=4, log_every=20, warmup=5)
    after = _eval_loss(ae, held_out)
    assert after < before / 2, (before, after)
    assert state["step"] == 80 and state["stopped"] == "steps"
    assert [row["step"] for row in state["losses"]] == [20, 40, 60, 80]
    assert state["losses"][-1]["total"] < state["losses"][0]["total"] / 1.5
    assert any("ae step=80" in r.getMessage() for r in caplog.records)
    assert not ae.training  # returned in eval mode
    metrics = evaluate_autoencoder(ae, clips, 1, batch=4)
    assert metrics["psnr_premult"] > metrics_before["psnr_premult"] + 3.0, (metrics_before, metrics)
    assert metrics["alpha_l1"] < metrics_before["alpha_l1"] / 2
    assert metrics["stream_max_diff"] < 1e-4


def test_resume_continues_the_step_count_and_matches_uninterrupted() -> None:
    clips = disc_clips(16, 32, 4)
    kw = dict(lr=3e-3, batch=2, log_every=3, warmup=2, schedule_steps=6)
    s_full = train_autoencoder(_model(1), clips, 6, **kw)

    resumed = _model(1)
    s_half = train_autoencoder(resumed, clips, 3, **kw)
    assert s_half["step"] == 3
    other = _model(7)  # a different init: model weights and optimiser moments come from the state
    s_rest = train_autoencoder(other, clips, 6, state=s_half, **kw)
    assert s_rest["step"] == 6
    assert [row["step"] for row in s_rest["losses"]] == [3, 6]
    # same clips (the generator is seeded by step), same optimiser state: same weights as one run
    for k, v in s_rest["model"].items():
        torch.testing.assert_close(v, s_full["model"][k], msg=k, atol=1e-6, rtol=1e-5)
    for got, want in zip(s_rest["losses"], s_full["losses"], strict=True):
        assert got == pytest.approx(want, rel=1e-4)
    # a state saved without the optimiser (smaller file) still resumes, with fresh moments
    slim = {k: v for k, v in s_half.items() if k != "optimizer"}
    s_slim = train_autoencoder(_model(7), clips, 6, state=slim, **kw)
    assert s_slim["step"] == 6 and s_slim["optimizer"]["state"]
    assert not torch.allclose(s_slim["model"]["decoder.net.0.weight"], s_full["model"]["decoder.net.0.weight"])
    # the state is a snapshot: training on from it does not change it
    before = {k: v.clone() for k, v in s_half["model"].items()}
    train_autoencoder(resumed, clips, 5, state=s_half, **kw)
    for k, v in before.items():
        torch.testing.assert_close(s_half["model"][k], v)


def test_default_factors_train_with_latent_noise_and_custom_weights() -> None:
    cfg = AutoencoderConfig(latent_channels=8, spatial_factor=8, temporal_factor=4, width=8,
                            native_width=32, native_height=16)
    torch.manual_seed(0)
    ae = VideoAutoencoder(cfg)
    state = train_autoencoder(ae, disc_clips(16, 32, 8), 2, batch=2, log_every=1, latent_noise=0.1,
                              weights={"edge": 0.0, "rgb_l2": 2.0})
    assert [row["step"] for row in state["losses"]] == [1, 2]
    for row in state["losses"]:
        w = {**DEFAULT_WEIGHTS, "edge": 0.0, "rgb_l2": 2.0}
        parts = sum(w[k] * row[k] for k in DEFAULT_WEIGHTS)
        assert row["total"] == pytest.approx(parts, rel=1e-5)  # the weights were applied (edge off)
        assert row["edge"] > 0


def test_deadline_stops_cleanly_and_can_resume() -> None:
    clips = disc_clips(16, 32, 4)
    ae = _model()
    state = train_autoencoder(ae, clips, 50, batch=2, deadline=time.monotonic() - 1.0)
    assert state["step"] == 0 and state["stopped"] == "deadline" and state["losses"] == []
    state = train_autoencoder(ae, clips, 2, batch=2, state=state)
    assert state["step"] == 2 and state["stopped"] == "steps"


def test_fit_latent_stats_normalises_latents() -> None:
    ae = _model()
    clips = disc_clips(H, W, T)
    mean, std = fit_latent_stats(ae, clips, n_batches=3, batch=2)
    assert mean.shape == std.shape == (TINY.latent_channels,)
    torch.testing.assert_close(ae.latent_mean, mean)
    assert not torch.allclose(std, torch.ones_like(std))  # the untouched buffers would be 1
    with torch.no_grad():
        z = ae.encode(clips(4, torch.Generator().manual_seed(12345)))  # the first fitting batch's seed
    per_channel = z.transpose(0, 2).reshape(TINY.latent_channels, -1)
    assert per_channel.mean(1).abs().max() < 0.5
    assert (per_channel.std(1) - 1).abs().max() < 0.5


def test_bad_clip_source_is_named() -> None:
    def wrong(batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(batch + 1, 4, 4, 16, 32, generator=generator)

    with pytest.raises(ValueError, match=r"clips\(2, generator\) returned \(3, 4, 4, 16, 32\)"):
        train_autoencoder(_model(), wrong, 1, batch=2)


def test_divergence_fails_loudly() -> None:
    def broken(batch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.full((batch, 4, 4, 16, 32), float("nan"))

    with pytest.raises(FloatingPointError, match=r"diverged.*step=2"):
        train_autoencoder(_model(), broken, 4, batch=1, log_every=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": -1}, "steps=-1"),
        ({"steps": 2, "batch": 0}, "batch=0"),
        ({"steps": 2, "weights": {"perceptual": 1.0}}, "unknown loss terms"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train_autoencoder(_model(), disc_clips(16, 32, 4), **kwargs)
    with pytest.raises(ValueError, match="n_batches=0"):
        fit_latent_stats(_model(), disc_clips(16, 32, 4), 0)
