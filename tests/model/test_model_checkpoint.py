"""Checkpoints: our safetensors (with embedded config), Wan / Self-Forcing layouts, clear errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.cli import _parse_set
from backend.model import checkpoint as ckpt
from backend.model.checkpoint import CheckpointError, load_weights, save_checkpoint
from backend.model.dit import EXTRA_PREFIXES, CausalDiT
from backend.model.generator import Conditions, Generator
from tests.model.model_kit import micro_config, random_weights


def _frames(gen: Generator) -> np.ndarray:
    gen.reset(np.full((16, 32, 4), 200, np.uint8), Conditions())
    return gen.next_chunk(Conditions(action="wave"), mouth=np.linspace(0, 1, 8))


def test_save_and_load_roundtrip(tmp_path) -> None:
    cfg = micro_config()
    weights = random_weights(cfg)
    gen = Generator(cfg, weights=weights)
    path = save_checkpoint(tmp_path / "m.safetensors", gen.dit, gen.autoencoder, cfg, dtype=torch.float32)
    loaded = Generator(dataclasses.replace(cfg, checkpoint=str(path)))
    assert np.array_equal(_frames(gen), _frames(loaded))
    small = save_checkpoint(tmp_path / "m16.safetensors", gen.dit, gen.autoencoder, cfg)  # bf16 by default
    assert small.stat().st_size < 0.6 * path.stat().st_size
    assert load_file(small)["dit.head.head.weight"].dtype == torch.bfloat16
    Generator(dataclasses.replace(cfg, checkpoint=str(small)))  # loads and casts


def test_config_mismatch_says_what_differs(tmp_path) -> None:
    cfg = micro_config()
    gen = Generator(cfg, weights=random_weights(cfg))
    path = save_checkpoint(tmp_path / "m.safetensors", gen.dit, gen.autoencoder, cfg)
    other = dataclasses.replace(cfg, checkpoint=str(path), dit=dataclasses.replace(cfg.dit, rope_theta=500.0))
    with pytest.raises(CheckpointError, match=r"model\.dit\.rope_theta: checkpoint 10000\.0, config 500\.0"):
        Generator(other)
    # a deeper (grown) checkpoint: the error names the --set that loads it, and that --set does
    deeper = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, num_layers=cfg.dit.num_layers + 1))
    gen = Generator(deeper, weights=random_weights(deeper))
    path = save_checkpoint(tmp_path / "deep.safetensors", gen.dit, gen.autoencoder, deeper)
    with pytest.raises(CheckpointError) as info:
        Generator(dataclasses.replace(cfg, checkpoint=str(path)))
    hint = str(info.value).rpartition("(to load it: ")[2].rstrip(")")
    assert hint == f"--set model.dit.num_layers={cfg.dit.num_layers + 1}"
    (key, value), = _parse_set([hint.removeprefix("--set ")]).items()  # as the CLI reads it
    assert key == "model.dit.num_layers"
    loaded = dataclasses.replace(cfg, checkpoint=str(path), dit=dataclasses.replace(cfg.dit, num_layers=value))
    assert len(Generator(loaded).dit.blocks) == cfg.dit.num_layers + 1


def test_a_checkpoint_from_before_the_prediction_record_predicts_flow(tmp_path) -> None:
    """A checkpoint whose config does not record model.dit.prediction (written before it existed) was made
    predicting flow: it loads with flow and is refused, with the --set that loads it, under x0."""
    cfg = micro_config()
    gen = Generator(cfg, weights=random_weights(cfg))
    path = save_checkpoint(tmp_path / "m.safetensors", gen.dit, gen.autoencoder, cfg)
    weights = load_weights(str(path))
    assert weights.config["dit"]["prediction"] == "flow"
    del weights.config["dit"]["prediction"]
    ckpt.check_config(weights, cfg)
    x0 = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, prediction="x0"))
    with pytest.raises(CheckpointError, match=r"prediction: checkpoint 'flow', config 'x0' .*prediction=\"flow\""):
        ckpt.check_config(weights, x0)


def test_bad_checkpoints_name_file_key_and_shapes(tmp_path) -> None:
    cfg = micro_config()
    flat = random_weights(cfg)
    bad = dict(flat)
    bad["dit.blocks.0.ffn.0.weight"] = torch.zeros(3, 32)
    path = tmp_path / "shape.safetensors"
    save_file(bad, str(path))
    with pytest.raises(CheckpointError, match=r"shape\.safetensors: dit key blocks\.0\.ffn\.0\.weight has shape "
                                              r"\(3, 32\) in the checkpoint but \(64, 32\) in the model"):
        Generator(dataclasses.replace(cfg, checkpoint=str(path)))
    missing = {k: v for k, v in flat.items() if k != "dit.head.head.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing\.safetensors: dit keys missing .*head\.head\.bias"):
        Generator(dataclasses.replace(cfg, checkpoint=str(tmp_path / "missing.safetensors")))
    extra = {**flat, "dit.blocks.9.ffn.0.weight": torch.zeros(1)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected dit keys .*blocks\.9\.ffn\.0\.weight"):
        Generator(dataclasses.replace(cfg, checkpoint=str(tmp_path / "extra.safetensors")))
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a readable safetensors file"):
        load_weights(str(tmp_path / "junk.safetensors"))
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_weights(str(tmp_path / "nope.safetensors"))


def test_builtin_missing_tells_how_to_get_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ckpt, "BUILTIN_PATH", tmp_path / "liveidol-small.safetensors")
    with pytest.raises(CheckpointError, match="trained in a separate step"):
        load_weights("builtin")
    assert load_weights("random") is None


def test_self_forcing_pt_and_bare_wan_keys(tmp_path) -> None:
    """A Self-Forcing .pt (generator_ema, 'model.' prefix) and a bare Wan state dict load; our
    extra modules, absent from both, stay at zero."""
    cfg = micro_config()
    wan = {k[4:]: v for k, v in random_weights(cfg).items()
           if k.startswith("dit.") and not k[4:].startswith(EXTRA_PREFIXES)}
    torch.save({"generator": {f"model.{k}": torch.zeros_like(v) for k, v in wan.items()},
                "generator_ema": {f"model.{k}": v for k, v in wan.items()}, "critic": {}}, tmp_path / "sf.pt")
    gen = Generator(dataclasses.replace(cfg, checkpoint=str(tmp_path / "sf.pt")))
    state = gen.dit.state_dict()
    assert torch.equal(state["blocks.1.self_attn.q.weight"], wan["blocks.1.self_attn.q.weight"])  # the EMA copy
    assert not state["cond_embedding.action.weight"].any() and not state["control_embedding.weight"].any()
    assert not state["cond_modulation.weight"].any()
    save_file(wan, str(tmp_path / "wan.safetensors"))
    gen2 = Generator(dataclasses.replace(cfg, checkpoint=str(tmp_path / "wan.safetensors")))
    assert torch.equal(gen2.dit.state_dict()["head.head.weight"], wan["head.head.weight"])
    torch.save({"critic": {}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt: expected a state dict"):
        load_weights(str(tmp_path / "bad.pt"))


def test_random_init_is_training_ready() -> None:
    cfg = micro_config()
    gen = Generator(cfg)
    state = gen.dit.state_dict()
    assert not state["cond_embedding.emotion.weight"].any() and not state["control_embedding.bias"].any()
    assert not state["cond_modulation.weight"].any() and not state["cond_modulation.bias"].any()
    w = state["blocks.0.self_attn.q.weight"]
    assert 0.05 < w.std() < 0.5 and torch.isfinite(w).all()
    dit = CausalDiT(cfg.dit)
    ckpt.init_dit_(dit, generator=torch.Generator().manual_seed(cfg.seed))
    assert all(torch.equal(a, b) for a, b in zip(dit.state_dict().values(), state.values()))  # seeded
    meta = json.loads(ckpt.config_metadata(cfg.dit, cfg.autoencoder))
    assert meta["dit"]["dim"] == 32 and meta["autoencoder"]["temporal_factor"] == 4


@pytest.mark.parametrize(("name", "data", "expected"), [
    ("random.pt", bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
     "random.pt: not a loadable torch checkpoint: the weights-only unpickler refused it"),
    ("zip.pt", b"PK\x03\x04junk", "zip.pt: not a loadable torch checkpoint: PytorchStreamReader failed reading zip"),
    ("empty.pt", b"", "empty.pt: not a loadable torch checkpoint: the file ends early (empty or cut short)"),
    ("random.safetensors", bytes(range(256)) * 8, "random.safetensors: not a readable safetensors file: "),
])
def test_junk_checkpoints_are_one_line(tmp_path, name: str, data: bytes, expected: str) -> None:
    """torch.load's message for a random .pt ran to five lines (issue 16, point 3)."""
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_weights(str(tmp_path / name))
    message = str(info.value)
    assert "\n" not in message and expected in message and len(message) < 300, message
