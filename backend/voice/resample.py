"""Sample-rate conversion: a polyphase windowed-sinc resampler in numpy (no scipy needed).

``resample(pcm, 22050, 48000)`` upsamples by L and downsamples by M (L/M = 48000/22050 reduced = 320/147)
through one Kaiser-windowed sinc low-pass that cuts at the lower of the two Nyquist rates, so downsampling
does not alias. Whole-signal only (speech clips and utterances), not block-by-block streaming.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["resample"]

_ZERO_CROSSINGS = 16  # half-width of the sinc, in periods of the lower rate
_KAISER_BETA = 8.6  # ~ -90 dB stop band
_ROLLOFF = 0.94  # cutoff as a fraction of the lower Nyquist rate
_BLOCK = 1 << 13  # output samples computed per step, bounds the (block, taps) gather


@functools.lru_cache(maxsize=16)
def _phases(up: int, down: int) -> np.ndarray:
    """(up, taps_per_phase) filter bank: ``bank[p, k] = h[p + k * up]``, h the low-pass at the upsampled rate."""
    span = max(up, down)
    half = _ZERO_CROSSINGS * span
    n = np.arange(-half, half + 1, dtype=np.float64)  # 2 * half + 1 taps, centre at index half
    cutoff = _ROLLOFF / span  # in cycles per upsampled sample * 2
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(len(n), _KAISER_BETA) * up
    taps = math.ceil(len(h) / up)
    h = np.concatenate([h, np.zeros(taps * up - len(h))])
    return np.ascontiguousarray(h.reshape(taps, up).T, dtype=np.float32)  # (up, taps)


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample float audio ``(samples,)`` or ``(samples, channels)`` from ``src_rate`` to ``dst_rate``.

    Returns float32 of ``ceil(samples * dst / src)`` samples, time-aligned with the input (no delay).
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"resample: rates must be positive, got {src_rate} -> {dst_rate}")
    x = np.asarray(pcm, dtype=np.float32)
    if x.ndim == 2:
        return np.stack([resample(x[:, c], src_rate, dst_rate) for c in range(x.shape[1])], axis=1)
    if x.ndim != 1:
        raise ValueError(f"resample: pcm must be (samples,) or (samples, channels), got shape {x.shape}")
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    if up == down or len(x) == 0:
        return x.copy()
    bank = _phases(up, down)  # (up, K)
    taps = bank.shape[1]
    centre = _ZERO_CROSSINGS * max(up, down)  # filter delay, in upsampled samples
    n_out = math.ceil(len(x) * up / down)
    pad = taps + 1
    xp = np.concatenate([np.zeros(pad, np.float32), x, np.zeros(pad, np.float32)])
    out = np.empty(n_out, dtype=np.float32)
    k = np.arange(taps)
    for start in range(0, n_out, _BLOCK):
        u = np.arange(start, min(start + _BLOCK, n_out), dtype=np.int64) * down + centre  # (B,)
        m_hi = u // up  # newest input sample under the filter
        phase = u % up
        idx = (m_hi[:, None] - k[None, :]) + pad  # (B, K) into the padded input
        out[start:start + len(u)] = np.einsum("bk,bk->b", xp[idx], bank[phase])
    return out
