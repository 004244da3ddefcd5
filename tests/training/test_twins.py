"""Emotion twins: the same clip under other emotions, and the DiT loss that weighs the difference of their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.actions import EMOTION_INDEX
from backend.training.data import make_specs, twin_script
from backend.world.pose import EMOTION_FACES, POSE_INDEX


def test_twin_script_changes_every_emotion_and_keeps_the_switches() -> None:
    script = [(0, "idle", "neutral"), (12, "wave", "happy"), (40, "idle", "happy"), (52, "bow", "sad")] * 50
    script = [(i * 4, a, e) for i, (_, a, e) in enumerate(script)]
    twin = twin_script(script, np.random.default_rng(0))
    assert [(s, a) for s, a, _ in twin] == [(s, a) for s, a, _ in script]
    assert all(e != t for (_, _, e), (_, _, t) in zip(script, twin))
    moods_to_neutral = [t == "neutral" for (_, _, e), (_, _, t) in zip(script, twin) if e != "neutral"]
    assert 0.3 < np.mean(moods_to_neutral) < 0.7  # TWIN_NEUTRAL = 0.5 of them, the rest another mood
    assert {t for (_, _, e), (_, _, t) in zip(script, twin) if e == "neutral"} == set(EMOTION_INDEX) - {"neutral"}


def test_twin_specs_are_the_same_idol_and_motion_under_other_emotions() -> None:
    n = 5
    specs = make_specs(n, 48, seed=3, align=4, twins=True)
    assert len(specs) == 2 * n
    plain = make_specs(n, 48, seed=3, align=4)
    face = {k for f in EMOTION_FACES.values() for k in f}
    body = [i for k, i in POSE_INDEX.items() if k not in face]
    for i in range(n):
        a, b = specs[i], specs[n + i]
        torch.testing.assert_close(a.poses, plain[i].poses)  # the first half is the plain pool
        assert torch.equal(a.identity, b.identity) and torch.equal(a.actions, b.actions)
        torch.testing.assert_close(a.progress, b.progress)
        torch.testing.assert_close(a.mouth, b.mouth)
        torch.testing.assert_close(a.poses[:, body], b.poses[:, body])  # the same motion ...
        assert (a.emotions != b.emotions).all()  # ... under another emotion in every frame
        assert (a.poses - b.poses).abs().max() > 0.2  # which moves the face


def _residual(b: int, f: int = 3) -> torch.Tensor:
    return torch.randn(b, f, 4, 2, 3, generator=torch.Generator().manual_seed(b))


def test_dit_loss_adds_the_twins_difference() -> None:
    from backend.training.train import dit_loss

    regions = torch.ones(4, 3, 2, 3)
    regions[:, :, 0, 0] = 5.0  # the face cell
    weight = torch.tensor([[3.0, 1.0, 1.0]]).expand(4, 3)
    res = _residual(4)
    plain = dit_loss(res, regions, weight)
    # by hand: per frame the region-weighted mean square, then the frame-weighted mean
    per = (res.square() * regions.unsqueeze(2)).sum((2, 3, 4)) / (regions.sum((2, 3)) * 4)
    torch.testing.assert_close(plain, (per * weight).sum() / weight.sum())
    assert dit_loss(res, regions, weight, first_frame=1) != plain
    same = torch.cat([res[:2], res[:2]])  # twins with equal residuals: nothing to add
    torch.testing.assert_close(dit_loss(same, regions, weight, twin_weight=2.0), dit_loss(same, regions, weight))
    twin = dit_loss(res, regions, weight, twin_weight=2.0)
    diff = res[:2] - res[2:]
    extra = dit_loss(diff, regions[:2], weight[:2])
    torch.testing.assert_close(twin, plain + 2.0 * extra)
    # the twin term's gradient pushes the twins' residuals toward each other
    r = res.clone().requires_grad_(True)
    (dit_loss(r, regions, weight, twin_weight=2.0) - dit_loss(r, regions, weight)).backward()
    assert r.grad is not None
    torch.testing.assert_close(r.grad[:2], -r.grad[2:])
    assert ((r.grad[:2] * diff).sum() > 0).item()


def test_a_twin_pool_draws_pairs() -> None:
    """Real clips through a micro autoencoder: rows i and i + B/2 of a batch are twins."""
    from backend.config import Config
    from backend.model.autoencoder import VideoAutoencoder
    from backend.training.train import LatentPool
    from tests.model.model_kit import micro_config

    cfg = Config(model=micro_config())
    ae = VideoAutoencoder(cfg.model.autoencoder).eval()
    pool = LatentPool(cfg, ae, 6, seed=5, device=torch.device("cpu"), twins=True)
    assert len(pool) == 12 and pool.pairs == 6 and pool.draw_weight.shape == (6,)
    batch = pool.batch(8, torch.Generator().manual_seed(0))
    assert batch["latents"].shape[0] == 8
    assert torch.equal(batch["actions"][:4], batch["actions"][4:])
    assert torch.equal(batch["reference"][:4], batch["reference"][4:])  # the same idol
    assert (batch["emotions"][:4] != batch["emotions"][4:]).all()
    with pytest.raises(ValueError, match="odd"):
        pool.batch(5, torch.Generator())
