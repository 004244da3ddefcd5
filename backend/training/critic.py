"""A latent critic for the DiT stages (`liveidol train dit|selfforcing --critic`): commit to a pose, not a mean.

Why: at sigma 1 (the 1-step sampler's only call, the CPU's level) a DiT trained on squared error predicts the mean
of what the context and the command allow. On the fine g64 grid that mean keeps the idol and loses what moves
in front of her body: session 24 measured its command carrying the prediction a seventh to a fifth of the way
along the world's motion, and the heart (hands at the chest) and touch_nose (a hand at the face) were never drawn.
An adversarial term judges the predicted clean latents against the world's instead: a chunk that the command
says shows a heart and shows none is told apart from the world and pushed toward one, whatever the mean says.

Design (latent adversarial distillation, LADD, Sauer et al. 2024; with a world "real" side as APT):

* **Backbone**: a frozen copy of the DiT (the run's EMA when the call starts), run on the same
  ``[reference, context, candidate]`` sequence and block-causal mask as the training pass, the candidate (the
  world's clean latents, or the prediction) re-noised to a critic sigma in ``CRITIC_SIGMA`` with one noise draw
  shared by the real and the fake of a row. Its features already carry the command, the emotion, the action's
  progress and the context: what a viewer would check the chunk against.
* **Heads** (:class:`LatentCritic`, the only trained part): per block a norm, a linear layer and a logit per
  token, plus a projection term (Miyato & Koyama 2018) with action and emotion tables, so a token is judged for
  this command, not for being any idol. Hinge loss.
* **The generator's side**: the DiT stage's own loss plus ``weight * lambda * adversarial``, ``lambda`` the ratio
  of the two terms' gradient norms at the head's last layer (VQGAN's adaptive weight: the critic pulls as hard as
  the squared error, however the two scale), refreshed every ``LAMBDA_EVERY`` steps and ramped in over
  ``CRITIC_RAMP`` steps of a call. Tokens are weighed like the squared error (face and hands up, the first second
  after a command up). ``CRITIC_ONE_STEP_SHARE`` of the chunks are drawn at sigma 1 on top of the stage's own
  timesteps, so the 1-step picture is what is judged most.

The heads and their optimiser are saved as ``critic.pt`` in the run, so a call resumes them; ``export`` leaves them
out (serving never runs a critic).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backend.config import DiTSizes

__all__ = ["CRITIC_ONE_STEP_SHARE", "CRITIC_RAMP", "CRITIC_SIGMA", "CRITIC_WEIGHT", "LAMBDA_EVERY", "LatentCritic",
           "adaptive_weight", "critic_checkpoint", "critic_noised", "hinge_critic_loss", "token_weights"]

CRITIC_WEIGHT = 0.5  # the adversarial term's weight beside the squared error, after the adaptive ratio (--critic-weight)
CRITIC_SIGMA = (0.3, 0.8)  # the critic's candidates are re-noised to a sigma drawn in this range (structure, not grain)
CRITIC_ONE_STEP_SHARE = 0.5  # chunks drawn at sigma 1 (the 1-step sampler's state) on top of the stage's timesteps
CRITIC_RAMP = 200  # steps of a call over which the adversarial term ramps in (the heads learn first)
LAMBDA_EVERY = 10  # steps between refreshes of the adaptive weight (two extra backward passes each)
LAMBDA_MAX = 10.0


class LatentCritic(nn.Module):
    """Heads over a DiT backbone's block features -> one logit per candidate token.

    ``forward(features, actions, emotions)``: ``features`` the backbone's per-block tokens of the candidate frames,
    each ``(B, F, T, C)``; ``actions``, ``emotions`` ``(B, F)`` long -> logits ``(B, F, T)`` (the heads' sum)."""

    def __init__(self, sizes: DiTSizes, hidden: int | None = None) -> None:
        super().__init__()
        d, h = sizes.dim, hidden or sizes.dim
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(sizes.num_layers))
        self.hidden = nn.ModuleList(nn.Linear(d, h) for _ in range(sizes.num_layers))
        self.out = nn.ModuleList(nn.Linear(h, 1) for _ in range(sizes.num_layers))
        self.action = nn.ModuleList(nn.Embedding(sizes.num_actions, h) for _ in range(sizes.num_layers))
        self.emotion = nn.ModuleList(nn.Embedding(sizes.num_emotions, h) for _ in range(sizes.num_layers))
        for table in (*self.action, *self.emotion):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, features: list[Tensor], actions: Tensor, emotions: Tensor) -> Tensor:
        if len(features) != len(self.out):
            raise ValueError(f"critic: {len(features)} feature maps for {len(self.out)} heads")
        logits: Tensor | None = None
        for i, feat in enumerate(features):
            z = F.leaky_relu(self.hidden[i](self.norms[i](feat.float())), 0.2)  # (B, F, T, h)
            cond = (self.action[i](actions) + self.emotion[i](emotions)).unsqueeze(2)  # (B, F, 1, h)
            score = self.out[i](z).squeeze(-1) + (z * cond).sum(-1) / math.sqrt(z.shape[-1])
            logits = score if logits is None else logits + score
        assert logits is not None
        return logits


def critic_noised(x0: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    """Clean latents ``x0`` (B, F, C, h, w) re-noised to ``sigma`` (B,) with ``eps``: a critic's candidate."""
    s = sigma.view(-1, 1, 1, 1, 1).to(x0.dtype)
    return (1 - s) * x0 + s * eps.to(x0.dtype)


def token_weights(regions: Tensor, frame_weight: Tensor, patch: tuple[int, int], first_frame: int = 0) -> Tensor:
    """(B, F, T) weights of the critic's tokens, summing to 1 per batch: the squared error's cell weights
    ``regions`` (B, F, h, w) averaged over each token's patch, times the per-frame ``frame_weight`` (B, F), frames
    before ``first_frame`` (a rollout's own context) left out."""
    b, f = frame_weight.shape
    cells = F.avg_pool2d(regions.float().flatten(0, 1).unsqueeze(1), patch).view(b, f, -1)  # (B, F, T)
    w = cells * frame_weight.float().unsqueeze(-1)
    w[:, :first_frame] = 0
    return w / w.sum().clamp(min=1e-8)


def hinge_critic_loss(real: Tensor, fake: Tensor, weights: Tensor) -> Tensor:
    """The critic's hinge loss on real and fake logits (B, F, T), tokens weighed by ``weights``."""
    return (F.relu(1.0 - real) * weights).sum() + (F.relu(1.0 + fake) * weights).sum()


def adaptive_weight(rec: Tensor, adv: Tensor, last: Tensor) -> float:
    """VQGAN's balance: ``|d rec / d last| / |d adv / d last|`` at the generator's last layer ``last`` (clamped to
    ``LAMBDA_MAX``), so the adversarial term pulls about as hard as the reconstruction, whatever their scales. Both
    graphs are kept for the step's backward."""
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
    return float((g_rec.norm() / (g_adv.norm() + 1e-8)).clamp(max=LAMBDA_MAX))


def critic_checkpoint(critic: LatentCritic, opt: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    """What ``critic.pt`` holds: the heads, their optimiser and the DiT step they were saved at."""
    return {"model": {k: v.cpu() for k, v in critic.state_dict().items()}, "optimizer": opt.state_dict(),
            "step": step}
