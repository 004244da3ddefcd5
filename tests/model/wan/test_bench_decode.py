"""The decode benchmark runs (tiny sizes on the CPU here; full size on a GPU: see its module docstring)."""

from __future__ import annotations

import json

import pytest
import torch

from backend.model.wan.bench_decode import bench_decode, flops_per_chunk, main
from backend.model.wan.taehv import TAEHVConfig
from backend.model.wan.vae import WanVAEConfig


@pytest.mark.parametrize("which", ["taehv", "wan-vae"])
def test_bench_decode_reports_time_and_memory(which: str) -> None:
    result = bench_decode(which, latent_hw=(4, 6), latent_frames=3, chunks=2, warmup=1, device="cpu",
                          dtype=torch.float32, vae_cfg=WanVAEConfig(base_dim=4),
                          taehv_cfg=TAEHVConfig(encoder_width=8, decoder_widths=(16, 8, 8, 8)))
    json.dumps(result)
    assert result["decoder"] == which and result["device"] == "cpu" and result["dtype"] == "float32"
    assert result["latent"] == "3x4x6" and result["output"] == "12x32x48"  # steady state: 4 frames per latent
    assert 0 < result["ms_per_chunk_p50"] <= result["ms_per_chunk_max"] and result["video_fps"] > 0
    assert result["parameters"] > 0 and result["peak_memory_mib"] > 0 and result["stream_state_mib"] > 0
    assert result["tflop_per_chunk"] > 0 and result["tflops_achieved"] > 0


def test_bench_decode_wan_vae_in_passes_of_one_latent_frame() -> None:
    result = bench_decode("wan-vae", latent_hw=(4, 6), latent_frames=3, chunks=1, warmup=1, device="cpu",
                          dtype=torch.float32, vae_cfg=WanVAEConfig(base_dim=4), frames_per_pass=1)
    assert result["frames_per_pass"] == 1 and result["output"] == "12x32x48"


def test_flops_at_960x544() -> None:
    """The full-size arithmetic of a 3-latent-frame chunk (counted on the meta device, no compute)."""
    assert 2.0e12 < flops_per_chunk("taehv", latent_hw=(68, 120), latent_frames=3) < 2.3e12
    assert 52e12 < flops_per_chunk("wan-vae", latent_hw=(68, 120), latent_frames=3) < 54.5e12


def test_bench_decode_refuses_an_unknown_decoder() -> None:
    with pytest.raises(ValueError, match="unknown decoder 'vqgan'"):
        bench_decode("vqgan", device="cpu")


def test_bench_decode_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--which", "taehv", "--device", "cpu", "--dtype", "fp32", "--latent", "2x3", "--latent-frames", "1",
          "--chunks", "1", "--warmup", "1"])
    line = json.loads(capsys.readouterr().out)
    assert line["output"] == "4x16x24" and line["parameters"] == 11_315_539  # the full-size TAEHV
