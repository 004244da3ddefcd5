"""The embedded default model: it ships, it loads, and it does what it is told (read back by the probe)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from backend.config import load_config
from backend.model.checkpoint import BUILTIN_PATH
from backend.model.generator import Conditions, Generator
from backend.training.evaluate import followed
from backend.training.probe import PROBE_PATH, Probe
from backend.world.character import load_character
from backend.world.pose import action_scores
from backend.world.reference import reference_frame


def test_shipped_files_fit_the_budget() -> None:
    assert BUILTIN_PATH.stat().st_size <= 16 * 2**20
    assert PROBE_PATH.stat().st_size <= 3 * 2**20


def _generate(action: str, chunks: int = 4) -> np.ndarray:
    cfg = load_config()
    model = dataclasses.replace(cfg.model, device="cpu", output_width=256, output_height=144)
    gen = Generator(model)  # checkpoint = "builtin": loads and checks the embedded config against configs/
    gen.reset(reference_frame(load_character("aiko"), gen.native_size), Conditions())
    for _ in range(2):
        gen.next_chunk(Conditions())
    return np.concatenate([gen.next_chunk(Conditions(action=action)) for _ in range(chunks)])


def test_a_commanded_action_shows_according_to_the_probe() -> None:
    """A bow, commanded after idle, is seen by the probe within the next 32 frames (1.3 s), and is what it sees."""
    probe = Probe.load(PROBE_PATH)
    frames = _generate("bow")
    assert frames.shape[1:] == (144, 256, 4)
    poses, _ = probe.predict(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255)
    scores = action_scores(poses)
    assert followed(scores, "bow")
    means = {name: float(s.mean()) for name, s in scores.items()}
    assert max(means, key=means.get) == "bow", means
    # the idol is there: an opaque figure on a transparent background, like the reference
    alpha = frames[..., 3].astype(np.float32) / 255
    assert 0.05 < alpha.mean() < 0.5
    assert alpha[:, :, :20].max() < 0.2  # the frame's left margin stays transparent
