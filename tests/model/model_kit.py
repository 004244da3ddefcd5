"""Shared helpers of the model tests: a micro config and random non-zero weights."""

from __future__ import annotations

import torch

from backend.config import AutoencoderConfig, DiTSizes, ModelConfig
from backend.model.autoencoder import VideoAutoencoder
from backend.model.dit import CausalDiT


def micro_config(**overrides) -> ModelConfig:
    """A micro model (runs in milliseconds on CPU) with every size from config."""
    dit = DiTSizes(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, text_len=8, num_actions=16,
                   num_emotions=8, num_controls=8)
    ae = AutoencoderConfig(width=8, native_width=32, native_height=16, spatial_factor=4, temporal_factor=4,
                           hires_factors=(2, 3), mid_factors=())  # the detail decoder draws 48x24, the output size
    base = dict(checkpoint="random", device="cpu", dtype="float32", attention="auto", chunk_frames=2,
                window_frames=4, sink_frames=1, output_width=48, output_height=24, dit=dit, autoencoder=ae)
    base.update(overrides)
    return ModelConfig(**base)


def random_weights(cfg: ModelConfig, seed: int = 0, std: float = 0.2) -> dict[str, torch.Tensor]:
    """A flat ``dit.*`` / ``autoencoder.*`` state dict with every parameter random and non-zero
    (extras included), so conditioning and controls visibly change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        dit, ae = CausalDiT(cfg.dit), VideoAutoencoder(cfg.autoencoder)  # the autoencoder keeps its own init
    flat = {f"autoencoder.{k}": v for k, v in ae.state_dict().items()}
    for k, v in dit.state_dict().items():
        offset = 1.0 if k.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")) else 0.0
        flat[f"dit.{k}"] = torch.randn(v.shape, generator=gen) * std + offset
    return flat
