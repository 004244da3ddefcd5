"""The latent critic of the DiT stages (`train dit|selfforcing --critic`): its heads, its balance, and the stage."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import pytest
import torch

from backend.model.dit import CausalDiT
from backend.training.critic import LatentCritic, adaptive_weight, hinge_critic_loss, token_weights
from tests.model.model_kit import micro_config, random_weights
from tests.training.test_train_dit import _exported


def test_block_features_are_the_blocks_the_training_pass_runs() -> None:
    """The last block's features, through the head, are forward_train's output: the critic reads the same
    network the generator trains."""
    from backend.training.train import block_causal_mask

    cfg = micro_config()
    dit = CausalDiT(cfg.dit)
    dit.load_state_dict({k[4:]: v for k, v in random_weights(cfg, seed=3, std=0.1).items() if k.startswith("dit.")})
    b, f, h, w = 2, 5, 4, 4
    x = torch.randn(b, cfg.dit.in_dim, f, h, w)
    t = torch.rand(b, f) * 1000
    ctx = dit.build_context(torch.tensor([1, 2]), torch.tensor([0, 1]))
    kw = {"controls": torch.rand(b, f, cfg.dit.num_controls), "frame_pos": torch.arange(f),
          "attn_mask": block_causal_mask(2, 1, 8, False)}  # [reference, 2 context, 2 noisy]
    feats = dit.block_features(x, t, ctx, **kw)
    assert len(feats) == cfg.dit.num_layers
    grid = (f, h // cfg.dit.patch_size[1], w // cfg.dit.patch_size[2])
    assert feats[0].shape == (b, f * grid[1] * grid[2], cfg.dit.dim)
    e = dit._embed(x, t, kw["controls"], ctx)[1]
    torch.testing.assert_close(dit.finish(feats[-1], e, grid, x, t), dit.forward_train(x, t, ctx, **kw))


def test_the_critic_learns_what_a_command_should_look_like() -> None:
    """Features that are real for one action and fake for another are told apart only through the projection
    term: the same features, the action decides. A critic without the action tables could not separate them."""
    cfg = micro_config()
    torch.manual_seed(0)
    critic = LatentCritic(cfg.dit)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    b, f, t, d = 8, 2, 6, cfg.dit.dim
    pose = torch.randn(d)

    def feats(raised: torch.Tensor) -> list[torch.Tensor]:  # raised (B,): whether the "hands" are drawn
        x = torch.randn(b, f, t, d) + raised.view(b, 1, 1, 1) * pose
        return [x] * cfg.dit.num_layers

    weights = torch.full((b, f, t), 1.0 / (b * f * t))
    emotions = torch.zeros(b, f, dtype=torch.long)
    for _ in range(150):  # the world: action 2 raises the hands, action 1 does not; the fake does the opposite
        acts = torch.randint(1, 3, (b,))
        real = critic(feats((acts == 2).float()), acts.view(b, 1).expand(b, f), emotions)
        fake = critic(feats((acts == 1).float()), acts.view(b, 1).expand(b, f), emotions)
        loss = hinge_critic_loss(real, fake, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acts = torch.tensor([1, 2] * 4)
    with torch.no_grad():
        real = critic(feats((acts == 2).float()), acts.view(b, 1).expand(b, f), emotions).mean()
        fake = critic(feats((acts == 1).float()), acts.view(b, 1).expand(b, f), emotions).mean()
    assert real > 0.5 and fake < -0.5


def test_adaptive_weight_balances_the_two_gradients() -> None:
    last = torch.nn.Parameter(torch.randn(3, 4))
    x = torch.randn(4)
    rec, adv = (last @ x).square().sum(), 0.25 * (last @ x).sum()
    expected = (2 * (last @ x)[:, None] * x).norm() / (0.25 * x.expand(3, 4)).norm()
    assert adaptive_weight(rec, adv, last) == pytest.approx(min(10.0, expected.item()), rel=1e-5)
    (rec + adv).backward()  # the graphs are kept for the step's own backward
    assert last.grad is not None


def test_token_weights_follow_the_loss_cells_and_skip_a_rollouts_frames() -> None:
    regions = torch.ones(1, 3, 4, 4)
    regions[0, :, :2, :2] = 5.0  # the face in the top-left token
    w = token_weights(regions, torch.tensor([[1.0, 3.0, 1.0]]), (2, 2), first_frame=1)
    assert w.shape == (1, 3, 4) and w.sum().item() == pytest.approx(1.0)
    assert torch.all(w[0, 0] == 0)
    assert w[0, 1, 0] == pytest.approx(5 * w[0, 1, 1].item()) and w[0, 1, 1] == pytest.approx(3 * w[0, 2, 1].item())


def test_the_dit_stage_trains_with_a_critic_and_resumes_it(tmp_path, caplog) -> None:
    from backend.training.train import Run, import_stage, run_stage, train_dit_stage

    cfg, _, _, path = _exported(tmp_path)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(path)))
    run = Run(tmp_path / "run")
    import_stage(cfg, run)
    before = run.load_weights("dit_model.safetensors")
    assert before is not None
    with caplog.at_level(logging.INFO):
        train_dit_stage(cfg, run, time.monotonic() + 5.0, torch.device("cpu"), selfforcing=False, context_lag=2,
                        peak_lr=2e-4, critic=True)
    step = json.loads((run.path / "dit_state.json").read_text())["step"]
    assert step > 123
    saved = run.load("critic.pt")
    assert saved is not None and saved["step"] == step and saved["optimizer"]["state"]  # the heads trained
    after = run.load_weights("dit_model.safetensors")
    assert after is not None and any(not torch.equal(before[k], after[k]) for k in before)
    assert "latent critic: 2 heads" in caplog.text  # one a block of the micro DiT
    caplog.clear()
    with caplog.at_level(logging.INFO):  # a second call resumes the heads
        train_dit_stage(cfg, run, time.monotonic() + 2.0, torch.device("cpu"), selfforcing=True, critic=True,
                        critic_weight=2.0)
    assert "(resumed)" in caplog.text and "weight 2.00" in caplog.text
    with pytest.raises(SystemExit, match="--critic-weight must be in"):
        train_dit_stage(cfg, run, time.monotonic() + 1.0, torch.device("cpu"), selfforcing=False, critic=True,
                        critic_weight=0.0)
    from backend.cli import main

    with pytest.raises(SystemExit, match="--critic-weight is for the dit and selfforcing stages with --critic"):
        main(["train", "dit", "--critic-weight", "2", "--run", str(run.path)])  # the CLI's flag, without --critic
    torch.save({"model": {"norms.0.weight": torch.ones(3)}, "optimizer": {}, "step": 1}, run.path / "critic.pt")
    with pytest.raises(SystemExit, match=r"critic\.pt: not this model's critic"):
        train_dit_stage(cfg, run, time.monotonic() + 1.0, torch.device("cpu"), selfforcing=False, critic=True)
    with pytest.raises(SystemExit, match="--critic is for the hires, dit and selfforcing stages, not distill"):
        run_stage(cfg, "distill", Path(run.path), minutes=0.01, critic=True)
