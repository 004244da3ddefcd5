"""The mid detail decoder (the CPU's: half the output size, resampled 2x): trained by `train hires --decoder mid`,
exported and imported, drawn with on a CPU when asked for ('auto' keeps 'native' there). Small real models on the CPU."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pytest
import torch

import backend.training.train as train
from backend.config import Config, ConfigError, load_config
from backend.model.autoencoder import VideoAutoencoder, upscale_uint8_hwc
from backend.model.checkpoint import load_weights
from backend.model.generator import Conditions, Generator, GeneratorError
from backend.training.data import make_specs, render_clips
from backend.training.train import (
    Run,
    _load_autoencoder,
    _seed_decoder,
    export_stage,
    import_stage,
    run_stage,
    train_hires_stage,
)
from backend.world.render import straight_alpha
from tests.model.model_kit import micro_config
from tests.training.test_train_hires import _seeded_run

OUT = (48, 24)  # the micro model's output size: the mid decoder draws half of it, as 480x270 is of 960x540


def _config() -> Config:
    # 8x4 latent grid: native 32x16, mid x3 = 24x12 (half the output), hires x6 = 48x24 (the output)
    return Config(model=micro_config(autoencoder=dataclasses.replace(micro_config().autoencoder, mid_factors=(3,))))


def _mid_loss(ae: VideoAutoencoder, cfg: Config) -> float:
    """The stage's reconstruction loss (whole frames) of the mid decoder against the world rendered at its size,
    on fixed held-out clips."""
    from backend.training.train_autoencoder import DEFAULT_WEIGHTS, reconstruction_losses

    ae_cfg = cfg.model.autoencoder
    tf = ae_cfg.temporal_factor
    specs = make_specs(4, 2 * tf, seed=777, align=tf, workers=1)
    with torch.no_grad():
        small = straight_alpha(render_clips(specs, (ae_cfg.native_width, ae_cfg.native_height), tf,
                                            torch.device("cpu"), labels=False).video)
        target = straight_alpha(render_clips(specs, ae.frame_size("mid"), tf, torch.device("cpu"), labels=False).video)
        terms = reconstruction_losses(ae.decode_raw(ae.encode_raw(small), which="mid"), target)
    return float(sum(DEFAULT_WEIGHTS[k] * v for k, v in terms.items()))


def test_mid_stage_lowers_its_loss_exports_imports_and_draws_on_the_cpu_when_asked(tmp_path, caplog, monkeypatch) -> None:
    cfg = _config()
    run = _seeded_run(tmp_path, cfg)
    start = _load_autoencoder(cfg, run, torch.device("cpu"))
    _seed_decoder(start, "mid", ("native",))  # where the stage starts: the native decoder's layers that fit
    before = _mid_loss(start, cfg)
    with caplog.at_level(logging.INFO, logger="backend.training.train"):
        train_hires_stage(cfg, run, time.monotonic() + 60.0, torch.device("cpu"), which="mid")
    assert any("mid decoder seeded from the native decoder" in r.getMessage() for r in caplog.records)
    state = run.load("mid.pt")
    assert state is not None and state["step"] == train.HIRES_TOTAL_STEPS[1]  # the CPU's whole (short) schedule
    assert run.load("hires.pt") is None  # the hires decoder was not touched
    trained = _load_autoencoder(cfg, run, torch.device("cpu"))
    after = _mid_loss(trained, cfg)
    assert after < 0.9 * before, (before, after)

    path = tmp_path / "m.safetensors"
    export_stage(cfg, run, path)
    weights = load_weights(str(path))
    assert weights.autoencoder is not None
    assert any(k.startswith("mid.") for k in weights.autoencoder)
    assert not any(k.startswith("hires.") for k in weights.autoencoder)  # never trained here: not exported
    assert weights.config["training"]["mid_step"] == state["step"]
    torch.testing.assert_close(weights.autoencoder["mid.net.0.weight"].float(),
                               trained.mid.net[0].weight.half().float())

    # on a CPU 'mid' draws with it at half the output size and resamples 2x in uint8; 'auto' takes it there too
    mcfg = dataclasses.replace(cfg.model, checkpoint=str(path), decoder="mid")
    assert Generator(dataclasses.replace(mcfg, decoder="auto")).which_decoder == "mid"
    gen = Generator(mcfg)
    assert gen.which_decoder == "mid" and gen.decoded_size == (24, 12) and gen.output_size == OUT
    decoded: list[torch.Tensor] = []
    step = gen.decoder.step
    gen.decoder.step = lambda z: decoded.append(step(z)) or decoded[-1]  # a spy: the real decoder still runs
    gen.reset(np.zeros((16, 32, 4), np.uint8), Conditions())
    frames = gen.next_chunk(Conditions(action="wave"))
    assert frames.shape == (8, OUT[1], OUT[0], 4) and frames.dtype == np.uint8
    assert decoded[-1].shape == (1, 8, 4, 12, 24)
    np.testing.assert_array_equal(frames, upscale_uint8_hwc(decoded[-1][0], OUT).numpy())
    assert Generator(dataclasses.replace(mcfg, decoder="native")).which_decoder == "native"

    # a new run imported from that export carries the trained mid decoder on, and the stage resumes it
    cfg2 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(path)))
    run2 = Run(tmp_path / "run2")
    import_stage(cfg2, run2)
    assert run2.load("mid.pt")["step"] == state["step"]
    assert run2.load("hires.pt") is None
    caplog.clear()
    monkeypatch.setattr(train, "HIRES_TOTAL_STEPS", (8000, state["step"] + 20))  # a longer schedule: it goes on
    with caplog.at_level(logging.INFO, logger="backend.training.train"):
        run_stage(cfg2, "hires", run2.path, minutes=1.0, decoder="mid")
    assert not any("seeded" in r.getMessage() for r in caplog.records)  # resumed, not re-seeded
    assert run2.load("mid.pt")["step"] == state["step"] + 20


def test_mid_asked_of_a_checkpoint_without_it_is_a_one_line_error_naming_the_file(tmp_path) -> None:
    cfg = _config()
    run = _seeded_run(tmp_path, cfg)
    path = tmp_path / "old.safetensors"
    export_stage(cfg, run, path)  # no detail stage: the export has neither detail decoder
    assert not any(k.startswith(("mid.", "hires.")) for k in load_weights(str(path)).autoencoder or {})
    mcfg = dataclasses.replace(cfg.model, checkpoint=str(path))
    with pytest.raises(GeneratorError, match="has no mid decoder weights") as err:
        Generator(dataclasses.replace(mcfg, decoder="mid"))
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert "train hires --decoder mid" in str(err.value)
    gen = Generator(dataclasses.replace(mcfg, decoder="auto"))  # loads; 'auto' falls back to the native decoder
    assert gen.which_decoder == "native" and gen.decoded_size == (32, 16)
    gen.reset(np.zeros((16, 32, 4), np.uint8), Conditions())
    assert gen.next_chunk(Conditions()).shape == (8, OUT[1], OUT[0], 4)
    # no mid decoder configured at all: a clear error too
    bare = dataclasses.replace(cfg.model, checkpoint="random", decoder="mid",
                               autoencoder=dataclasses.replace(cfg.model.autoencoder, mid_factors=()))
    with pytest.raises(GeneratorError, match="mid_factors is empty"):
        Generator(bare)


def test_mid_stage_seeds_from_the_runs_trained_hires_decoder(tmp_path, caplog) -> None:
    cfg = _config()
    run = _seeded_run(tmp_path, cfg)
    ae = VideoAutoencoder(cfg.model.autoencoder)
    assert ae.hires is not None and ae.mid is not None
    with torch.no_grad():
        for p in ae.hires.parameters():
            p.normal_()
    run.save("hires.pt", {"step": 3, "model": ae.hires.state_dict()})
    with caplog.at_level(logging.INFO, logger="backend.training.train"):
        train_hires_stage(cfg, run, time.monotonic() + 0.5, torch.device("cpu"), which="mid")
    assert any("mid decoder seeded from the hires and native decoder" in r.getMessage() for r in caplog.records)
    # the pixel-side layers (the last x3 step's 3x3 conv to tf RGBA sub-pixels) line up with the hires decoder's
    fresh = _load_autoencoder(cfg, run, torch.device("cpu"))
    assert fresh.mid is not None and fresh.hires is not None
    seeded = VideoAutoencoder(cfg.model.autoencoder)
    seeded.hires.load_state_dict(ae.hires.state_dict())
    assert _seed_decoder(seeded, "mid", ("hires", "native")) > 0
    torch.testing.assert_close(seeded.mid.net[-2].weight, ae.hires.net[-2].weight)


def test_mid_factors_and_decoder_are_checked_by_the_config() -> None:
    cfg = load_config(None, {"model.decoder": "mid", "model.autoencoder.mid_factors": [3, 5]})
    assert cfg.model.decoder == "mid" and cfg.model.autoencoder.mid_factors == (3, 5)
    assert load_config(None, {"model.autoencoder.mid_factors": []}).model.autoencoder.mid_factors == ()
    with pytest.raises(ConfigError, match=r"model\.autoencoder\.mid_factors\[0\] = 0: expected an integer"):
        load_config(None, {"model.autoencoder.mid_factors": [0, 5]})
    with pytest.raises(ConfigError, match=r"model\.decoder = 'middle': expected one of 'auto', 'native', 'mid'"):
        load_config(None, {"model.decoder": "middle"})
