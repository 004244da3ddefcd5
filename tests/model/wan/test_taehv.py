"""TAEHV against the public reference (tests/fixtures/taehv_ref, made by its make_fixture.py).

The tiny-width reference in float32: one-shot decode, chunk-by-chunk streaming decode and encode
equal the reference's outputs (which are NTCHW in [0, 1]; ours are (B, C, T, H, W) in [-1, 1]); the
full-size module has exactly the keys and shapes of ``taew2_1.pth`` (meta device).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.model.wan.taehv import TAEHV, StreamingTAEHVDecoder, TAEHVConfig, TAEHVError, load_taehv
from backend.model.wan.weights import WeightsError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "taehv_ref"
TOL: dict[str, Any] = {"atol": 1e-4, "rtol": 1e-4}


def tiny_config() -> TAEHVConfig:
    tc = json.loads((FIXTURES / "tiny_taehv.json").read_text())["tiny_config"]
    return TAEHVConfig(latent_channels=tc["latent_channels"], encoder_width=tc["encoder_width"],
                       decoder_widths=tuple(tc["decoder_widths"]),
                       encoder_time_downscale=tuple(tc["encoder_time_downscale"]),
                       decoder_time_upscale=tuple(tc["decoder_time_upscale"]),
                       decoder_space_upscale=tuple(tc["decoder_space_upscale"]))


def ours(ntchw: torch.Tensor) -> torch.Tensor:
    """The reference's NTCHW in [0, 1] -> our (B, C, T, H, W) in [-1, 1]."""
    return ntchw.permute(0, 2, 1, 3, 4) * 2 - 1


@pytest.fixture(scope="module")
def tae() -> TAEHV:
    return load_taehv(FIXTURES / "tiny_taehv.safetensors", dtype=torch.float32, cfg=tiny_config())


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "tiny_taehv_io.safetensors")


def latents(io: dict[str, torch.Tensor]) -> torch.Tensor:
    return io["latents"].permute(0, 2, 1, 3, 4)  # (2, 16, 5, 4, 6)


def test_decode_matches_reference(tae: TAEHV, io: dict[str, torch.Tensor]) -> None:
    video = tae.decode(latents(io))
    assert video.shape == (2, 3, 17, 32, 48)  # 5 latent frames -> 1 + 4*4, like the Wan VAE
    torch.testing.assert_close(video, ours(io["decode.video"]), **TOL)
    torch.testing.assert_close(tae.decode(latents(io), clamp=False), ours(io["decode.raw"]), **TOL)


@pytest.mark.parametrize("chunks", [(1, 1, 1, 1, 1), (3, 2), (1, 4), (2, 3)])
def test_streaming_decode_chunk_by_chunk_matches_reference(tae: TAEHV, io: dict[str, torch.Tensor],
                                                           chunks: tuple[int, ...]) -> None:
    dec = StreamingTAEHVDecoder(tae, clamp=False)
    z, start, outs = latents(io), 0, []
    for i, t in enumerate(chunks):
        frames = dec.step(z[:, :, start:start + t])
        assert frames.shape == (2, 3, 4 * t - 3 if i == 0 else 4 * t, 32, 48)
        outs.append(frames)
        start += t
    assert dec.latent_frames == 5
    assert dec.flush().shape == (2, 3, 0, 32, 48)
    torch.testing.assert_close(torch.cat(outs, dim=2), ours(io["decode.raw"]), **TOL)
    dec.reset()  # a new stream: trimmed again, no memory of the old one
    torch.testing.assert_close(dec.step(z), ours(io["decode.raw"]), **TOL)


def test_encode_matches_reference(tae: TAEHV, io: dict[str, torch.Tensor]) -> None:
    z = tae.encode(ours(io["video"]))  # 9 frames, padded to 12 with the last frame
    assert z.shape == (1, 16, 3, 4, 6)
    torch.testing.assert_close(z, io["encode.latents"].permute(0, 2, 1, 3, 4), **TOL)


def test_stream_refuses_another_shape_and_bad_input(tae: TAEHV, io: dict[str, torch.Tensor]) -> None:
    dec = StreamingTAEHVDecoder(tae)
    with pytest.raises(TAEHVError, match="flush"):
        dec.flush()
    dec.step(latents(io)[:, :, :1])
    with pytest.raises(TAEHVError, match=r"does not continue the stream.*reset\(\)"):
        dec.step(latents(io)[:, :, 1:2, :2])
    with pytest.raises(TAEHVError, match=r"expected latents \(B, 16, t, h, w\)"):
        dec.step(io["latents"])  # NTCHW by mistake
    with pytest.raises(TAEHVError, match="multiples of 8"):
        tae.encode(torch.zeros(1, 3, 4, 30, 48))


def test_config_is_checked() -> None:
    with pytest.raises(TAEHVError, match="decoder_widths needs 4 entries"):
        TAEHVConfig(decoder_widths=(64, 32, 16))
    with pytest.raises(TAEHVError, match="one entry per level"):
        TAEHVConfig(decoder_time_upscale=(True, True))


def test_full_size_keys_and_shapes_are_taew2_1() -> None:
    expected = []
    for line in (FIXTURES / "key_shapes_taew2_1.txt").read_text().splitlines():
        key, shape = line.split("\t")
        expected.append((key, tuple(json.loads(shape))))
    assert len(expected) == 128
    with torch.device("meta"):
        tae = TAEHV.from_config()
    assert [(k, tuple(v.shape)) for k, v in tae.state_dict().items()] == expected
    assert sum(p.numel() for p in tae.parameters()) == 11_315_539


def test_loader_names_keys_and_fits_a_preview_decoder(tmp_path: Path, io: dict[str, torch.Tensor]) -> None:
    state = load_file(FIXTURES / "tiny_taehv.safetensors")
    path = tmp_path / "taew2_1.pth"
    torch.save(state, path)
    tae = load_taehv(path, dtype=torch.float32, cfg=tiny_config())
    torch.testing.assert_close(tae.decode(latents(io)), ours(io["decode.video"]), **TOL)
    # A cheaper preview without the last temporal upscale: the reference keeps TGrow's last-frame channels.
    preview = load_taehv(path, dtype=torch.float32, cfg=TAEHVConfig(**{
        **tiny_config().__dict__, "decoder_time_upscale": (False, True, False)}))
    assert preview.decode(latents(io)).shape == (2, 3, 9, 32, 48)  # 2 frames per latent, 1 trimmed
    bad = dict(state)
    bad.pop("decoder.1.bias")
    bad["encoder.99.weight"] = torch.zeros(1)
    bad["decoder.22.weight"] = torch.zeros(3, 8, 1, 1)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError) as info:
        load_taehv(tmp_path / "bad.safetensors", cfg=tiny_config())
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("TAEHV:") and "taew2_1" in msg
    assert "1 missing: decoder.1.bias" in msg and "1 unexpected: encoder.99.weight" in msg
    assert "decoder.22.weight (3, 8, 1, 1) vs (3, 8, 3, 3)" in msg


def test_snapshot_and_restore_roll_the_stream_back(tae: TAEHV, io: dict[str, torch.Tensor]) -> None:
    dec = StreamingTAEHVDecoder(tae, clamp=False)
    z = latents(io)
    first = dec.step(z[:, :, :2])
    snap = dec.snapshot()
    expected = dec.step(z[:, :, 2:])
    dec.step(torch.randn_like(z[:, :, 2:]))  # a chunk that gets thrown away
    dec.restore(snap)
    again = dec.step(z[:, :, 2:])
    torch.testing.assert_close(again, expected, atol=0, rtol=0)
    torch.testing.assert_close(torch.cat([first, again], dim=2), ours(io["decode.raw"]), **TOL)
    assert dec.latent_frames == 5
