"""Lip sync: the speech's loudness envelope, one mouth-openness value per video frame."""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["mouth_envelope"]


def mouth_envelope(pcm: np.ndarray, sample_rate: int, fps: float, *, floor_db: float = -45.0) -> np.ndarray:
    """Mouth openness in [0, 1] for each video frame covered by ``pcm``.

    ``pcm``: (samples,) or (samples, channels) float in [-1, 1]. Frame i covers samples
    [i * sr / fps, (i + 1) * sr / fps). Loudness is RMS in dB mapped linearly from ``floor_db``
    (closed) to the clip's peak frame (open), then smoothed with a fast-attack / slower-release filter
    so the mouth does not chatter.
    """
    if pcm.ndim == 2:
        pcm = pcm.mean(axis=1)
    if sample_rate <= 0 or fps <= 0:
        raise ValueError(f"sample_rate and fps must be positive, got {sample_rate} and {fps}")
    n_frames = int(np.ceil(len(pcm) * fps / sample_rate))
    if n_frames == 0:
        return np.zeros(0, dtype=np.float32)
    edges = (np.arange(n_frames + 1) * sample_rate / fps).astype(np.int64)
    edges[-1] = len(pcm)
    rms = np.array([np.sqrt(np.mean(np.square(pcm[a:b], dtype=np.float64))) if b > a else 0.0
                    for a, b in itertools.pairwise(edges)])
    db = 20.0 * np.log10(np.maximum(rms, 1e-9))
    top = max(float(db.max()), floor_db + 1.0)
    level = np.clip((db - floor_db) / (top - floor_db), 0.0, 1.0)
    out = np.empty_like(level)
    prev = 0.0
    for i, v in enumerate(level):
        prev = v if v > prev else prev + 0.5 * (v - prev)  # attack at once, release over ~2 frames
        out[i] = prev
    return out.astype(np.float32)
