"""The video autoencoder at tiny sizes on CPU: shapes, ranges, streaming == whole clip, pixel helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.config import AutoencoderConfig, ConfigError
from backend.model.autoencoder import (
    AutoencoderError,
    StreamingDecoder,
    VideoAutoencoder,
    to_uint8_hwc,
    upscale,
)

TINY = AutoencoderConfig(latent_channels=8, spatial_factor=8, temporal_factor=4, width=16,
                         native_width=64, native_height=32)


@pytest.fixture
def ae() -> VideoAutoencoder:
    torch.manual_seed(0)
    return VideoAutoencoder(TINY).eval()


def test_default_config_param_budget() -> None:
    ae = VideoAutoencoder(AutoencoderConfig())
    assert ae.hires is not None and ae.mid is not None
    detail = sum(p.numel() for p in ae.hires.parameters())
    mid = sum(p.numel() for p in ae.mid.parameters())
    n = sum(p.numel() for p in ae.parameters()) - detail - mid
    # The shipped checkpoint (<= 32 MB) leaves ~1.5M parameters (3 MB at fp16) for the encoder and the native
    # decoder, and as much again for the detail decoders (the mid one, the CPU's, is the smaller).
    assert 500_000 < n < 1_500_000, n
    assert 300_000 < detail < 1_500_000, detail
    assert 100_000 < mid < detail, mid
    assert ae.hires_size == (960, 540)
    assert ae.mid_size == ae.frame_size("mid") == (480, 270)
    assert ae.frame_size() == (256, 144)
    assert ae.latent_mean.shape == ae.latent_std.shape == (16,)
    assert {"latent_mean", "latent_std"} <= set(ae.state_dict())


def test_encode_decode_shapes_and_ranges(ae: VideoAutoencoder) -> None:
    video = torch.rand(2, 8, 4, 32, 64)
    with torch.no_grad():
        z = ae.encode(video)
        assert z.shape == (2, 2, 8, 4, 8)
        assert torch.isfinite(z).all()
        out = ae.decode(z)
    assert out.shape == (2, 8, 4, 32, 64)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_decode_other_sizes_than_native(ae: VideoAutoencoder) -> None:
    with torch.no_grad():
        out = ae.decode(torch.randn(1, 3, 8, 2, 6))
    assert out.shape == (1, 12, 4, 16, 48)


def test_latent_normalisation_buffers_are_applied(ae: VideoAutoencoder) -> None:
    video = torch.rand(1, 4, 4, 32, 64)
    with torch.no_grad():
        raw = ae.encode_raw(video)
        ae.latent_mean.fill_(0.5)
        ae.latent_std.fill_(2.0)
        z = ae.encode(video)
        torch.testing.assert_close(z, (raw - 0.5) / 2.0)
        # decode undoes the normalisation: same pixels as decoding the raw latents
        torch.testing.assert_close(ae.decode(z), ae.decode_raw(raw))


def test_streaming_equals_whole_clip(ae: VideoAutoencoder) -> None:
    torch.manual_seed(1)
    z = torch.randn(2, 7, 8, 4, 8)
    with torch.no_grad():
        whole = ae.decode(z)
    dec = ae.decoder_stream()
    assert isinstance(dec, StreamingDecoder)
    dec.reset()
    parts = [dec.step(z[:, i:j]) for i, j in ((0, 1), (1, 3), (3, 4), (4, 7))]
    assert [p.shape[1] for p in parts] == [4, 8, 4, 12]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=1e-5)
    assert dec.frames_decoded == 7


def test_decode_is_causal_in_time(ae: VideoAutoencoder) -> None:
    torch.manual_seed(3)
    z = torch.randn(1, 4, 8, 4, 8)
    z2 = z.clone()
    z2[:, 2] += 1.0  # change latent frame 2 only
    with torch.no_grad():
        a, b = ae.decode(z), ae.decode(z2)
    diff = (a - b).abs().amax(dim=(0, 2, 3, 4))  # per video frame
    assert diff[:8].max() == 0  # frames of latent frames 0-1 are untouched
    assert diff[8:12].min() > 1e-4 and diff[12:16].min() > 1e-4  # frame 2, and frame 3 through its context


def test_streaming_context_matters_and_reset_forgets(ae: VideoAutoencoder) -> None:
    torch.manual_seed(2)
    z = torch.randn(1, 2, 8, 4, 8)
    dec = ae.decoder_stream()
    dec.step(z[:, :1])
    continued = dec.step(z[:, 1:])
    dec.reset()
    fresh = dec.step(z[:, 1:])  # no context: latent 1 is its own previous frame
    assert (continued - fresh).abs().max() > 1e-4  # the previous latent frame feeds the decoder
    with torch.no_grad():
        torch.testing.assert_close(fresh, ae.decode(z[:, 1:]))


def test_streaming_rejects_a_chunk_that_does_not_continue(ae: VideoAutoencoder) -> None:
    dec = ae.decoder_stream()
    dec.step(torch.randn(1, 1, 8, 4, 8))
    with pytest.raises(AutoencoderError, match="does not continue the stream"):
        dec.step(torch.randn(2, 1, 8, 4, 8))
    with pytest.raises(AutoencoderError, match="does not continue the stream"):
        dec.step(torch.randn(1, 1, 8, 4, 6))
    dec.reset()
    assert dec.step(torch.randn(2, 1, 8, 4, 6)).shape == (2, 4, 4, 32, 48)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 8, 3, 32, 64), "4 \\(RGBA\\) channels"),
        ((2, 6, 4, 32, 64), "T=6 must be a positive multiple of temporal_factor=4"),
        ((2, 0, 4, 32, 64), "T=0"),
        ((2, 8, 4, 30, 64), "30x64 must be multiples of spatial_factor=8"),
        ((8, 4, 32, 64), "expected 5 dims"),
    ],
)
def test_encode_rejects_bad_shapes(ae: VideoAutoencoder, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(AutoencoderError, match=match):
        ae.encode(torch.rand(shape))


def test_encode_rejects_integer_video(ae: VideoAutoencoder) -> None:
    with pytest.raises(AutoencoderError, match="floating-point"):
        ae.encode(torch.zeros(1, 4, 4, 32, 64, dtype=torch.uint8))


@pytest.mark.parametrize("shape", [(1, 2, 7, 4, 8), (1, 0, 8, 4, 8), (2, 8, 4, 8)])
def test_decode_rejects_bad_latents(ae: VideoAutoencoder, shape: tuple[int, ...]) -> None:
    with pytest.raises(AutoencoderError, match="decode\\(latents\\)"):
        ae.decode(torch.randn(shape))
    with pytest.raises(AutoencoderError, match=r"StreamingDecoder\.step"):
        ae.decoder_stream().step(torch.randn(shape))


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"spatial_factor": 6}, "spatial_factor = 6"),
        ({"spatial_factor": 1}, "spatial_factor = 1"),
        ({"native_height": 40}, "native_height = 40"),  # 40 % 16 != 0
        ({"native_width": 72}, "native_width = 72"),
    ],
)
def test_bad_config_is_named(changes: dict[str, int], key: str) -> None:
    cfg = AutoencoderConfig(**{**TINY.__dict__, **changes})
    with pytest.raises(ConfigError, match=key):
        VideoAutoencoder(cfg)


def test_default_native_size_is_valid() -> None:
    cfg = AutoencoderConfig()
    assert (cfg.native_width, cfg.native_height) == (256, 144)
    assert cfg.native_width % (2 * cfg.spatial_factor) == 0 and cfg.native_height % (2 * cfg.spatial_factor) == 0


# ---------------------------------------------------------------------------------------------
# upscale / to_uint8_hwc
# ---------------------------------------------------------------------------------------------


def _white_disc_on_black_transparent(size: int = 32) -> torch.Tensor:
    """A white opaque anti-aliased disc; the transparent background has RGB black (the fringe trap)."""
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dist = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2).sqrt()
    alpha = (size / 3 - dist + 0.5).clamp(0, 1)
    rgb = torch.where(alpha > 0, torch.ones(3, size, size), torch.zeros(3, size, size))
    return torch.cat([rgb, alpha[None]], dim=0)[None]  # (1, 4, H, W)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_upscale_has_no_dark_fringe(mode: str) -> None:
    frame = _white_disc_on_black_transparent()
    out = upscale(frame, (120, 90), mode=mode)
    assert out.shape == (1, 4, 90, 120)
    assert out.min() >= 0.0 and out.max() <= 1.0
    a, rgb = out[0, 3], out[0, :3]
    edge = (a > 0.05) & (a < 0.95)
    assert edge.sum() > 20  # there is an anti-aliased rim
    assert rgb[:, a > 0.5].min() > 0.98
    assert rgb[:, edge].min() > 0.98  # even semi-transparent rim pixels stay white
    # a naive (straight-alpha) resample does get the dark fringe: the test can fail
    naive = torch.nn.functional.interpolate(frame, size=(90, 120), mode=mode, align_corners=False)
    assert naive[0, :3][:, edge].min() < 0.9


def test_upscale_keeps_alpha_and_downscales_with_antialias() -> None:
    frame = _white_disc_on_black_transparent(64)
    up = upscale(frame, (256, 256))
    down = upscale(frame, (16, 16))
    assert down.shape == (1, 4, 16, 16)
    # coverage (mean alpha) is preserved by resampling
    for out in (up, down):
        assert abs(out[0, 3].mean().item() - frame[0, 3].mean().item()) < 0.01
    torch.testing.assert_close(upscale(frame, (64, 64)), frame)  # same size: identity


@pytest.mark.parametrize(
    ("frames", "size", "match"),
    [
        (torch.rand(1, 3, 8, 8), (16, 16), "RGBA"),
        (torch.rand(4, 8, 8), (16, 16), "expected 4 dims"),
        (torch.rand(1, 4, 8, 8), (16, 0), "positive integers"),
        (torch.rand(1, 4, 8, 8), (16,), "positive integers"),
        (torch.rand(1, 4, 8, 8), (16.0, 16), "positive integers"),
    ],
)
def test_upscale_rejects_bad_input(frames: torch.Tensor, size: tuple[int, ...], match: str) -> None:
    with pytest.raises(AutoencoderError, match=match):
        upscale(frames, size)  # type: ignore[arg-type]


def test_upscale_rejects_unknown_mode_and_takes_numpy_sizes() -> None:
    frames = torch.rand(1, 4, 8, 8)
    with pytest.raises(AutoencoderError, match="upscale\\(mode\\)"):
        upscale(frames, (16, 16), mode="nearest")
    assert upscale(frames, (np.int64(12), np.int32(10))).shape == (1, 4, 10, 12)


def test_to_uint8_hwc() -> None:
    frames = torch.zeros(2, 4, 3, 5)
    frames[0, 0, 1, 2] = 1.0
    frames[1, 3, 2, 4] = 0.5
    frames[1, 1, 0, 0] = 1.7  # out of range: clamped
    frames[1, 2, 0, 0] = -0.3
    arr = to_uint8_hwc(frames)
    assert isinstance(arr, np.ndarray)
    assert arr.shape == (2, 3, 5, 4) and arr.dtype == np.uint8 and arr.flags["C_CONTIGUOUS"]
    assert arr[0, 1, 2, 0] == 255
    assert arr[1, 2, 4, 3] == 128
    assert arr[1, 0, 0, 1] == 255 and arr[1, 0, 0, 2] == 0
    assert int(arr.sum()) == 255 + 128 + 255


def test_to_uint8_hwc_rejects_bad_shape() -> None:
    with pytest.raises(AutoencoderError, match="to_uint8_hwc"):
        to_uint8_hwc(torch.rand(2, 3, 4, 4))


@pytest.mark.parametrize("which,size", [("hires", (48, 24)), ("mid", (40, 20))])
def test_detail_decoder_renders_the_same_latents_larger(which: str, size: tuple[int, int]) -> None:
    cfg = AutoencoderConfig(width=8, native_width=64, native_height=32, hires_factors=(2, 3), mid_factors=(5,))
    torch.manual_seed(0)
    ae = VideoAutoencoder(cfg).eval()
    assert ae.hires_size == (48, 24) and ae.mid_size == (40, 20)  # 8x4 latent grid x 6, x 5
    assert ae.frame_size(which) == size
    video = torch.rand(1, 8, 4, 32, 64)
    with torch.no_grad():
        z = ae.encode(video)
        big = ae.decode(z, which=which)
        small = ae.decode(z)
    assert small.shape == (1, 8, 4, 32, 64)
    assert big.shape == (1, 8, 4, size[1], size[0])
    assert 0.0 <= float(big.min()) and float(big.max()) <= 1.0
    # streaming equals the whole clip for the detail decoders too
    dec = ae.decoder_stream(which=which)
    dec.reset()
    parts = torch.cat([dec.step(z[:, :1]), dec.step(z[:, 1:])], dim=1)
    torch.testing.assert_close(parts, big)


@pytest.mark.parametrize("which", ["hires", "mid"])
def test_detail_decoder_absent_is_a_clear_error(which: str) -> None:
    bare = VideoAutoencoder(AutoencoderConfig(width=8, native_width=64, native_height=32, hires_factors=(),
                                              mid_factors=()))
    assert bare.hires is None and bare.mid is None and bare.hires_size is None and bare.mid_size is None
    with pytest.raises(AutoencoderError, match=f"{which}_factors is empty"):
        bare.decoder_stream(which=which)
    with pytest.raises(AutoencoderError, match=f"{which}_factors is empty"):
        bare.decode(torch.zeros(1, 1, 16, 4, 8), which=which)
    with pytest.raises(AutoencoderError, match="expected one of 'native', 'mid', 'hires'"):
        bare.decode(torch.zeros(1, 1, 16, 4, 8), which="huge")


@pytest.mark.parametrize("factors", [(0,), (3, -5)])
def test_bad_detail_factors_are_a_config_error_naming_the_key(factors: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match=r"model\.autoencoder\.mid_factors = \[.*expected one or more positive"):
        VideoAutoencoder(AutoencoderConfig(width=8, native_width=64, native_height=32, mid_factors=factors))


def test_upscale_uint8_has_no_dark_fringe_and_matches_the_float_path() -> None:
    """The CPU path (uint8, colour bled into transparent pixels first): the disc's rim stays white where a plain
    straight-alpha uint8 resample turns it dark, and the frame composited over grey matches the float path."""
    from backend.model.autoencoder import upscale_uint8_hwc

    frame = _white_disc_on_black_transparent()
    out = upscale_uint8_hwc(frame, (120, 90))
    assert out.dtype == torch.uint8 and out.shape == (1, 90, 120, 4) and out.is_contiguous()
    a, rgb = out[0, ..., 3].float() / 255, out[0, ..., :3].float() / 255
    edge = (a > 0.05) & (a < 0.95)
    assert edge.sum() > 20
    assert rgb[edge].min() > 0.97
    plain = torch.nn.functional.interpolate((frame * 255).round().to(torch.uint8), size=(90, 120), mode="bicubic",
                                            antialias=True)
    assert plain[0, :3].float().div(255)[:, edge].min() < 0.9  # without the bleed it is dark: the test can fail
    ref = upscale(frame, (120, 90))[0].permute(1, 2, 0)

    def over_grey(x: torch.Tensor) -> torch.Tensor:
        return x[..., :3] * x[..., 3:] + 0.5 * (1 - x[..., 3:])

    diff = (over_grey(out[0].float() / 255) - over_grey(ref)).abs()
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.1
    same = upscale_uint8_hwc(frame, (32, 32))  # same size: quantized only
    assert torch.equal(same[0, ..., 3], (frame[0, 3] * 255 + 0.5).clamp(0, 255).to(torch.uint8))
    with pytest.raises(AutoencoderError, match="RGBA"):
        upscale_uint8_hwc(torch.zeros(1, 3, 8, 8), (16, 16))


def test_box_sum_is_the_window_sum_with_zeros_outside() -> None:
    from backend.model.autoencoder import _box_sum

    x = torch.rand(2, 4, 9, 13)
    ref = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=True) * 25
    torch.testing.assert_close(_box_sum(x, 5), ref)
    assert _box_sum(x, 5)[0, 0, 0, 0] == pytest.approx(float(x[0, 0, :3, :3].sum()), rel=1e-6)  # a corner: 3x3 inside
