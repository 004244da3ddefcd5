"""The numpy polyphase resampler: accurate in band, no aliasing, right length and dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.voice.resample import resample


def tone(freq: float, rate: int, seconds: float = 0.5) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate).astype(np.float32)


@pytest.mark.parametrize(("src", "dst"), [(22050, 48000), (24000, 48000), (48000, 16000), (16000, 48000),
                                          (44100, 16000)])
def test_in_band_tone_is_preserved(src: int, dst: int) -> None:
    y = resample(tone(440.0, src), src, dst)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == math.ceil(int(src * 0.5) * dst / src)
    ref = tone(440.0, dst, len(y) / dst)[: len(y)]
    edge = dst // 50  # the filter's ramp at both ends
    assert np.abs(y[edge:-edge] - ref[edge:-edge]).max() < 1e-3  # same phase: no delay


def test_downsampling_removes_tones_above_the_new_nyquist() -> None:
    y = resample(tone(10000.0, 48000), 48000, 16000)  # 10 kHz cannot exist at 16 kHz: must vanish
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 1e-3
    passed = resample(tone(6000.0, 48000), 48000, 16000)  # 6 kHz is below 8 kHz: must pass
    assert np.sqrt(np.mean(passed[200:-200] ** 2)) > 0.69


def test_stereo_and_same_rate_and_errors() -> None:
    st = np.stack([tone(440, 24000), -tone(440, 24000)], axis=1)
    y = resample(st, 24000, 48000)
    assert y.shape == (24000, 2)
    np.testing.assert_allclose(y[:, 0], -y[:, 1], atol=1e-6)
    x = tone(440, 16000)
    same = resample(x, 16000, 16000)
    np.testing.assert_array_equal(same, x)
    assert same is not x
    with pytest.raises(ValueError, match="rates must be positive"):
        resample(x, 0, 16000)
    with pytest.raises(ValueError, match="shape"):
        resample(np.zeros((2, 2, 2)), 16000, 8000)
