"""The detail decoder: trained against the world drawn at its size, exported, chosen by the generator."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import pytest
import torch

from backend.config import Config
from backend.model.autoencoder import VideoAutoencoder
from backend.model.checkpoint import load_weights
from backend.model.generator import Conditions, Generator, GeneratorError
from backend.training.train import Run, export_stage, import_stage, train_hires_stage
from tests.model.model_kit import micro_config, random_weights


def _seeded_run(tmp_path, cfg: Config) -> Run:
    run = Run(tmp_path / "run")
    ae = VideoAutoencoder(cfg.model.autoencoder)
    state = {k: v for k, v in ae.state_dict().items() if not k.startswith("hires.")}  # a run from before it
    run.save("autoencoder.pt", {"ae_state": state})
    w = random_weights(cfg.model, seed=1, std=0.05)
    dit = {k[4:]: v for k, v in w.items() if k.startswith("dit.")}
    run.save_weights("dit_model.safetensors", dit)
    run.save_weights("dit_ema.safetensors", dit)
    (run.path / "dit_state.json").write_text(json.dumps({"step": 5, "sf_step": 0}))
    return run


def test_hires_stage_trains_resumes_exports_and_the_generator_draws_with_it(tmp_path, caplog, monkeypatch) -> None:
    cfg = Config(model=micro_config())
    run = _seeded_run(tmp_path, cfg)
    with caplog.at_level(logging.INFO, logger="backend.training.train"):
        train_hires_stage(cfg, run, time.monotonic() + 6.0, torch.device("cpu"))
    first = run.load("hires.pt")
    assert first is not None and first["step"] >= 1
    assert any("seeded from the native decoder" in r.getMessage() for r in caplog.records)
    # the trunk started as the native decoder's (same shapes at the latent grid); the resumed call goes on
    # with the patch critic (its start moved to where the first call stopped)
    import backend.training.train as train

    monkeypatch.setattr(train, "HIRES_GAN_START", first["step"])
    train_hires_stage(cfg, run, time.monotonic() + 4.0, torch.device("cpu"), critic=True)  # resumes, not re-seeded
    second = run.load("hires.pt")
    assert second["step"] > first["step"]
    assert any(v.abs().sum() > 0 for v in second["disc"].values())
    critic = train.PatchDiscriminator()
    critic.load_state_dict(second["disc"])  # the critic is saved with the run and resumes with it
    path = tmp_path / "m.safetensors"
    export_stage(cfg, run, path)
    weights = load_weights(str(path))
    assert weights.autoencoder is not None and any(k.startswith("hires.") for k in weights.autoencoder)
    assert weights.config["training"]["hires_step"] == run.load("hires.pt")["step"]

    mcfg = dataclasses.replace(cfg.model, checkpoint=str(path), decoder="hires", output_width=48, output_height=24)
    gen = Generator(mcfg)
    assert gen.which_decoder == "hires" and gen.decoded_size == (48, 24)
    gen.reset(np.zeros((16, 32, 4), np.uint8), Conditions())
    frames = gen.next_chunk(Conditions(action="wave"))
    assert frames.shape == (8, 24, 48, 4)
    # 'auto' on the CPU keeps the cheaper native decoder (upscaled)
    assert Generator(dataclasses.replace(mcfg, decoder="auto")).which_decoder == "native"

    # a new run imported from that export carries the trained detail decoder on
    cfg2 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(path)))
    run2 = Run(tmp_path / "run2")
    import_stage(cfg2, run2)
    assert run2.load("hires.pt")["step"] == run.load("hires.pt")["step"]


def test_hires_asked_of_a_checkpoint_without_it_is_a_clear_error(tmp_path) -> None:
    cfg = Config(model=micro_config())
    run = _seeded_run(tmp_path, cfg)
    path = tmp_path / "old.safetensors"
    export_stage(cfg, run, path)  # no hires stage: the export has no detail decoder
    assert not any(k.startswith("hires.") for k in load_weights(str(path)).autoencoder or {})
    with pytest.raises(GeneratorError, match="has no hires decoder weights"):
        Generator(dataclasses.replace(cfg.model, checkpoint=str(path), decoder="hires"))
    assert Generator(dataclasses.replace(cfg.model, checkpoint=str(path), decoder="auto")).which_decoder == "native"


def test_the_autoencoder_and_detail_decoder_stages_draw_their_clips_in_the_configured_framings(tmp_path,
                                                                                             monkeypatch) -> None:
    """model.framings = half and whole: the autoencoder stage's batches and the detail decoder's come in both
    framings, and each decoder batch draws its input and its target in the same one (the real renderer runs; the
    wrapper only notes what it was asked)."""
    import backend.training.train as train
    from backend.training.train import train_autoencoder_stage

    asked: list[tuple[str, tuple[int, int]]] = []
    real = train.render_clips

    def noting(specs, size, tf, device, *, labels=True, framing="half"):
        asked.append((framing, size))
        return real(specs, size, tf, device, labels=labels, framing=framing)

    monkeypatch.setattr(train, "render_clips", noting)
    cfg = Config(model=micro_config(framings=("half", "whole")))
    train_autoencoder_stage(cfg, Run(tmp_path / "ae"), time.monotonic() + 3.0, torch.device("cpu"))
    assert {f for f, _ in asked} == {"half", "whole"}
    asked.clear()
    run = _seeded_run(tmp_path, cfg)
    train_hires_stage(cfg, run, time.monotonic() + 4.0, torch.device("cpu"))
    pairs = list(zip(asked[0::2], asked[1::2]))  # (input at the native size, target at the decoder's)
    assert len(pairs) >= 4 and all(a[0] == b[0] and a[1] != b[1] for a, b in pairs)
    assert {a[0] for a, _ in pairs} == {"half", "whole"}
