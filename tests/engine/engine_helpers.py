"""Helpers for the engine tests: the real generator at a tiny size, and a stand-in for timing tests."""

from __future__ import annotations

import threading
import time

import numpy as np

from backend.config import AutoencoderConfig, DiTSizes, ModelConfig


def tiny_model_config(**kw: object) -> ModelConfig:
    """The real model at a size that runs a chunk in ~20 ms on one CPU core."""
    base = dict(checkpoint="random", device="cpu", steps=2, chunk_frames=1, window_frames=4,
                output_width=64, output_height=36,
                dit=DiTSizes(dim=32, ffn_dim=64, num_heads=2, num_layers=1, text_dim=16, freq_dim=16),
                autoencoder=AutoencoderConfig(width=8, native_width=32, native_height=16))
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def real_generator(**kw: object):
    """The real ``backend.model.generator.Generator`` at a tiny size, warmed up (first chunk is slow)."""
    from backend.model.generator import Conditions, Generator

    gen = Generator(tiny_model_config(**kw))
    gen.reset(None, Conditions())
    for steps in (1, 2, 1, 2, 1, 2):  # warm-up (kernel selection per cache length) outside timed parts
        gen.next_chunk(Conditions(), steps=steps, chunk_frames=1)
    return gen


class SlowStandIn:
    """A stand-in generator whose chunk time is set by the test (sleep), to put the engine behind real
    time on purpose -- the real model cannot be made reliably slow/fast on a shared CI machine.
    Frames encode their generated index in pixel [0, 0, 0]; snapshot/restore roll the index back."""

    def __init__(self, seconds_per_step: float = 0.0, frames_per_latent: int = 4, size: tuple[int, int] = (16, 8)):
        self.seconds_per_step = seconds_per_step
        self.tf = frames_per_latent
        self.output_size = size
        self.g = 0
        self.calls: list[dict] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def reset(self, reference_rgba, conditions) -> None:
        self.threads.add(threading.current_thread().name)
        self.g = 0

    def frames_per_chunk(self, chunk_frames=None) -> int:
        return (chunk_frames or 2) * self.tf

    def next_chunk(self, conditions, *, mouth=None, steps=None, chunk_frames=None) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        steps = steps or 4
        n = self.frames_per_chunk(chunk_frames)
        time.sleep(self.seconds_per_step * steps)
        self.calls.append({"action": conditions.action, "emotion": conditions.emotion, "steps": steps,
                           "chunk_frames": chunk_frames, "mouth": None if mouth is None else np.array(mouth), "g": self.g})
        w, h = self.output_size
        out = np.zeros((n, h, w, 4), np.uint8)
        out[:, 0, 0, 0] = (self.g + np.arange(n)) % 256
        out[..., 3] = 255
        self.g += n
        return out

    def snapshot(self) -> int:
        return self.g

    def restore(self, snap: int) -> None:
        self.g = snap

    @property
    def state(self) -> dict:
        return {"frames_made": self.g}
