"""The Wan2.1 VAE against the public reference (tests/fixtures/wan_vae_ref, made by its make_fixture.py).

Tiny random config in float32: the encoder, the whole-sequence decode and the chunk-by-chunk streaming
decode equal the reference's outputs at atol/rtol 1e-4; the full-size module has exactly the keys and
shapes of ``Wan2.1_VAE.pth`` (built on the meta device); a wrong file is refused naming its keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.model.wan.vae import StreamingWanDecoder, WanVAE, WanVAEConfig, WanVAEError, load_wan_vae
from backend.model.wan.weights import WeightsError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "wan_vae_ref"
TOL: dict[str, Any] = {"atol": 1e-4, "rtol": 1e-4}


def tiny_config() -> WanVAEConfig:
    tc = json.loads((FIXTURES / "tiny_vae.json").read_text())["tiny_config"]
    assert tc["attn_scales"] == [] and tc["dropout"] == 0.0
    return WanVAEConfig(base_dim=tc["dim"], z_dim=tc["z_dim"], dim_mult=tuple(tc["dim_mult"]),
                        num_res_blocks=tc["num_res_blocks"], temporal_downsample=tuple(tc["temperal_downsample"]))


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return load_wan_vae(FIXTURES / "tiny_vae.safetensors", cfg=tiny_config())  # the real loader: meta + assign


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "tiny_vae_io.safetensors")


def test_public_latent_statistics(io: dict[str, torch.Tensor]) -> None:
    cfg = WanVAEConfig()
    torch.testing.assert_close(torch.tensor(cfg.latent_mean), io["latent_mean"], atol=0, rtol=0)
    torch.testing.assert_close(torch.tensor(cfg.latent_std), io["latent_std"], atol=0, rtol=0)
    assert (cfg.spatial_factor, cfg.temporal_factor) == (8, 4)


def test_encode_matches_reference(vae: WanVAE, io: dict[str, torch.Tensor]) -> None:
    mu = vae.encode(io["video"])  # (1, 3, 9, 32, 48) -> (1, 16, 3, 4, 6)
    assert mu.shape == (1, 16, 3, 4, 6)
    torch.testing.assert_close(mu, io["encode.mu"], **TOL)


def test_whole_decode_matches_reference(vae: WanVAE, io: dict[str, torch.Tensor]) -> None:
    raw = vae.decode(io["latents"], clamp=False)
    assert raw.shape == (2, 3, 13, 32, 48)  # 4 latent frames -> 1 + 4*3 video frames
    torch.testing.assert_close(raw, io["decode.video"], **TOL)
    torch.testing.assert_close(vae.decode(io["latents"]), io["decode.video"].clamp(-1, 1), **TOL)
    torch.testing.assert_close(vae.decode(io["encode.mu"], clamp=False), io["roundtrip.video"], **TOL)


@pytest.mark.parametrize(("chunks", "per_pass"), [((1, 1, 1, 1), None), ((1, 3), None), ((3, 1), None),
                                                  ((2, 2), None), ((4,), 1), ((4,), 2), ((1, 3), 2)])
def test_streaming_decode_chunk_by_chunk_matches_reference(vae: WanVAE, io: dict[str, torch.Tensor],
                                                           chunks: tuple[int, ...], per_pass: int | None) -> None:
    dec = StreamingWanDecoder(vae, clamp=False, frames_per_pass=per_pass)
    latents, start, outs = io["latents"], 0, []
    for i, t in enumerate(chunks):
        frames = dec.step(latents[:, :, start:start + t])
        assert frames.shape == (2, 3, 1 + 4 * (t - 1) if i == 0 else 4 * t, 32, 48)
        outs.append(frames)
        start += t
    assert dec.latent_frames == 4
    assert dec.flush().shape == (2, 3, 0, 32, 48)
    torch.testing.assert_close(torch.cat(outs, dim=2), io["decode.video"], **TOL)


def test_reset_starts_a_new_stream_and_the_state_stays_bounded(vae: WanVAE, io: dict[str, torch.Tensor]) -> None:
    dec = StreamingWanDecoder(vae, clamp=False)
    z = io["latents"]
    dec.step(z[:, :, :2])
    dec.step(z[:, :, 2:])
    size = dec.cache.nbytes
    for _ in range(3):  # a long stream: the feature cache does not grow
        dec.step(z[:, :, 2:])
    assert dec.cache.nbytes == size > 0
    dec.reset()
    torch.testing.assert_close(dec.step(z), io["decode.video"], **TOL)


def test_stream_refuses_another_shape_and_bad_input(vae: WanVAE, io: dict[str, torch.Tensor]) -> None:
    dec = StreamingWanDecoder(vae)
    with pytest.raises(WanVAEError, match="flush"):
        dec.flush()
    dec.step(io["latents"][:, :, :1])
    with pytest.raises(WanVAEError, match=r"does not continue the stream.*reset\(\)"):
        dec.step(io["latents"][:1, :, 1:2])
    with pytest.raises(WanVAEError, match=r"expected latents \(B, 16, t, h, w\)"):
        dec.step(torch.zeros(2, 8, 1, 4, 6))
    with pytest.raises(WanVAEError, match="1 \\+ 4k frames"):
        vae.encode(io["video"][:, :, :8])
    with pytest.raises(WanVAEError, match="multiples of 8"):
        vae.encode(io["video"][:, :, :, :30])


def test_config_is_checked() -> None:
    with pytest.raises(WanVAEError, match="temporal_downsample needs 3"):
        WanVAEConfig(temporal_downsample=(True, True))
    with pytest.raises(WanVAEError, match="z_dim=8"):
        WanVAEConfig(z_dim=8)


def _key_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (FIXTURES / name).read_text().splitlines():
        key, shape = line.split("\t")
        rows.append((key, tuple(json.loads(shape))))
    return rows


def test_full_size_keys_and_shapes_are_wan2_1_vae_pth() -> None:
    expected = _key_shapes("key_shapes_wan2.1_vae.txt")
    assert len(expected) == 194
    with torch.device("meta"):
        vae = WanVAE.from_config()
    ours = [(k, tuple(v.shape)) for k, v in vae.state_dict().items()]
    assert ours == expected
    assert sum(p.numel() for p in vae.parameters()) == 126_892_531


def test_loader_names_missing_unexpected_and_misshaped_keys(tmp_path: Path) -> None:
    state = load_file(FIXTURES / "tiny_vae.safetensors")
    state.pop("decoder.head.2.bias")
    state["decoder.extra.weight"] = torch.zeros(1)
    state["conv2.weight"] = torch.zeros(16, 16, 1, 1, 2)
    bad = tmp_path / "bad_vae.safetensors"
    save_file(state, str(bad))
    with pytest.raises(WeightsError) as info:
        load_wan_vae(bad, cfg=tiny_config())
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and msg.startswith("Wan VAE:")
    assert "1 missing: decoder.head.2.bias" in msg
    assert "1 unexpected: decoder.extra.weight" in msg
    assert "1 mis-shaped (file vs model): conv2.weight (16, 16, 1, 1, 2) vs (16, 16, 1, 1, 1)" in msg


def test_loader_reads_the_public_pth_format(tmp_path: Path, io: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "Wan2.1_VAE.pth"  # the public file is a plain torch-saved state dict
    torch.save(load_file(FIXTURES / "tiny_vae.safetensors"), path)
    vae = load_wan_vae(path, cfg=tiny_config(), dtype=torch.float64)
    assert next(vae.parameters()).dtype == torch.float64
    torch.testing.assert_close(vae.decode(io["latents"].double(), clamp=False), io["decode.video"].double(), **TOL)
    with pytest.raises(WeightsError, match="no weights file at"):
        load_wan_vae(tmp_path / "absent.pth")
    with pytest.raises(WeightsError, match="does not fit the model"):
        load_wan_vae(path)  # tiny weights into the full-size config


def test_snapshot_and_restore_roll_the_stream_back(vae: WanVAE, io: dict[str, torch.Tensor]) -> None:
    dec = StreamingWanDecoder(vae, clamp=False)
    z = io["latents"]
    first = dec.step(z[:, :, :2])
    snap = dec.snapshot()
    expected = dec.step(z[:, :, 2:])
    dec.step(torch.randn_like(z[:, :, 2:]))  # a chunk that gets thrown away
    dec.restore(snap)
    again = dec.step(z[:, :, 2:])
    torch.testing.assert_close(again, expected, atol=0, rtol=0)
    torch.testing.assert_close(torch.cat([first, again], dim=2), io["decode.video"], **TOL)
    assert dec.latent_frames == 4
