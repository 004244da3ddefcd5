"""A tiny Wan-tier generator for tests: every piece real, tiny, random (or the reference fixtures' weights).

* DiT: random non-zero weights written as a Self-Forcing checkpoint (``{"generator_ema": {"model.<key>": ...}}``);
* VAE / TAEHV: the weights of tests/fixtures/wan_vae_ref and taehv_ref (tiny configs of the public code);
* text: the tiny umT5 of tests/fixtures/wan_text, in the Wan repository's folder layout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from backend.config import AutoencoderConfig, DiTSizes, ModelConfig, WanConfig
from backend.model.dit import EXTRA_PREFIXES, CausalDiT
from backend.model.wan.taehv import TAEHVConfig
from backend.model.wan.text import WAN_T5_FILE
from backend.model.wan.vae import WanVAEConfig

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TINY_VAE = WanVAEConfig(base_dim=4)  # tests/fixtures/wan_vae_ref/make_fixture.py TINY
TINY_TAEHV = TAEHVConfig(encoder_width=16, decoder_widths=(32, 16, 16, 8))  # taehv_ref/make_fixture.py
TEXT_DIM, TEXT_LEN = 32, 16  # tests/fixtures/wan_text/fixture.json


def text_folder(root: Path) -> Path:
    """The tiny umT5 in Wan-AI/Wan2.1-T2V-1.3B's layout."""
    folder = root / "umt5"
    if not folder.exists():
        (folder / "google").mkdir(parents=True)
        shutil.copytree(FIXTURES / "wan_text" / "tokenizer", folder / "google" / "umt5-xxl")
        torch.save(load_file(FIXTURES / "wan_text" / "wan_t5_tiny.safetensors"), folder / WAN_T5_FILE)
    return folder


def dit_sizes() -> DiTSizes:
    return DiTSizes(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=TEXT_DIM, text_len=TEXT_LEN,
                    freq_dim=32, num_controls=0)


def self_forcing_checkpoint(root: Path, seed: int = 0) -> Path:
    """Random Wan-layout DiT weights (LiveIdol's extras left out, as in real Wan checkpoints) in Self-Forcing's file."""
    path = root / "tiny_self_forcing.pt"
    if not path.exists():
        gen = torch.Generator().manual_seed(seed)
        state = {}
        for k, v in CausalDiT(dit_sizes()).state_dict().items():
            if k.startswith(EXTRA_PREFIXES):
                continue
            offset = 1.0 if k.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")) else 0.0
            state[f"model.{k}"] = torch.randn(v.shape, generator=gen) * 0.2 + offset
        torch.save({"generator_ema": state}, path)
    return path


def tiny_model_config(root: Path, *, decoder: str = "taehv", **overrides: object) -> ModelConfig:
    base: dict[str, object] = dict(
        family="wan", checkpoint=str(self_forcing_checkpoint(root)), device="cpu", dtype="float32", steps=2,
        timesteps=(1000.0, 750.0, 500.0, 250.0), context_noise=0.0, guidance=0.0, chunk_frames=2, window_frames=3,
        sink_frames=1, output_width=48, output_height=32, dit=dit_sizes(),
        autoencoder=AutoencoderConfig(latent_channels=16, spatial_factor=8, temporal_factor=4, native_width=48,
                                      native_height=32),
        wan=WanConfig(text_encoder=str(text_folder(root)), vae=str(FIXTURES / "wan_vae_ref" / "tiny_vae.safetensors"),
                      taehv=str(FIXTURES / "taehv_ref" / "tiny_taehv.safetensors"), decoder=decoder))  # type: ignore[arg-type]
    base.update(overrides)
    return ModelConfig(**base)  # type: ignore[arg-type]
