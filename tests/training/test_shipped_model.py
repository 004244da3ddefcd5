"""The embedded default model: it ships, it loads, and it does what it is told (read back by the probe)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
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
    weights = BUILTIN_PATH.parent  # backend/weights: the whole folder ships in the wheel
    assert sum(f.stat().st_size for f in weights.iterdir() if f.is_file()) <= 32 * 2**20


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


def test_quality_eval_runs_on_the_shipped_weights(tmp_path) -> None:
    """`liveidol eval` with picture quality, two compute levels and a sheet, at tiny settings on the CPU: every
    figure is there and in range, world frames score clean, and the sheet PNG has one filled cell per frame."""
    from backend.training.evaluate import format_table, run_eval
    from backend.training.sheet import SHEET_TIMES, write_sheet
    from backend.world.png import read_png

    cfg = load_config(None, {"model.device": "cpu", "model.output_width": 192, "model.output_height": 108})
    r = run_eval(cfg, commands=1, minutes=0.0, seed=113, steps=[1, 2], chunks=[1], stride=6, calibration_frames=2)
    aiko = r["characters"]["aiko"]
    assert r["config"]["held_out"] and r["config"]["tuning_seeds"] == [0, 1, 2, 101, 108, 110, 115, 116, 117, 118]
    assert set(aiko["levels"]) == {"steps=1,chunk=1", "steps=2,chunk=1"}
    for level in aiko["levels"].values():
        af, q = level["action_following"], level["quality"]
        assert af["issued"] == 1 and sum(v["n"] for v in af["per_emotion"].values()) == 1
        assert 0 <= af["rate"] <= 1 and 0 <= af["emotion_rate_min"] <= 1
        o = q["overall"]
        assert q["frames_measured"] == -(-af["frames"] // 6) and "idle" in q["per_action"]
        assert o["fd"] > 0 and 0 <= o["off_palette"] <= 1 and 0 <= o["speck"] <= 1 and 0 <= o["blotch"] <= 1
        assert o["off_palette_world"] < 0.002 and o["speck_world"] == 0.0  # the world is clean by these measures
        assert 0 < o["sharpness_ratio"] < 1.0  # 256x144 decoded, upscaled: softer than the world at 192x108
    assert {"step_ratio", "worst_vs_idle", "pass", "following_ok", "emotions_ok"} <= set(aiko["targets"])
    rt = aiko["autoencoder_roundtrip"]
    assert 15 < rt["psnr"] < 60 and 0.5 < rt["ssim"] <= 1 and 0 < rt["sharpness_ratio"] < 1.5
    # the world's own 256x144 render resampled to 192x108 is nearly the world drawn there: the bound the latents miss
    uw = rt["upscaled_world"]
    assert uw["psnr"] > rt["psnr"] + 1 and uw["ssim"] > rt["ssim"] and 0.2 < uw["sharpness_ratio"] < 2
    assert r["action_following"] == aiko["levels"]["steps=1,chunk=1"]["action_following"]  # the old keys stay
    table = format_table(r)
    assert "held-out" in table and "steps=2,chunk=1" in table and "PSNR" in table and "targets" in table
    assert "sharpness" in table and "input-size render resampled" in table

    model = dataclasses.replace(cfg.model, device="cpu", output_width=192, output_height=108)
    gen = Generator(model)
    aiko_char = load_character("aiko")
    info = write_sheet(gen, aiko_char, reference_frame(aiko_char, gen.native_size), tmp_path / "sheet.png",
                       steps=(1,), actions=("blink",), cell_height=48)
    image = read_png(tmp_path / "sheet.png")
    assert list(image.shape[1::-1]) == info["size"] and image.shape[2] == 3
    assert image.shape[0] > 48 and image.shape[1] > len(SHEET_TIMES) * 20
    cells = image[-48 - 4:-4, -len(SHEET_TIMES) * 20:].astype(int)  # the right part of the only row: idol cells
    assert cells.std() > 10


def _world_readings() -> tuple[dict[str, list[bool]], list[bool]]:
    """The rules of `liveidol eval` on PERFECT video: the world's own renders (the probe's size, all three shipped
    characters, a balanced plan of 15 commands each: 3 per emotion, 9 per emotion in all; plan seed 41 is used
    nowhere else). Per emotion, whether it was read right; per command, whether its action was followed."""
    from backend.actions import EMOTIONS
    from backend.training.evaluate import (
        ALL_CHARACTERS,
        _premultiplied,
        _world_chunks,
        plan_commands,
        read_emotion,
        world_script,
    )
    from backend.world.pose import simulate

    probe = Probe.load(PROBE_PATH)
    assert probe.emotion  # the shipped probe has the emotion head the emotion rule reads
    hits: dict[str, list[bool]] = {e: [] for e in EMOTIONS}
    followed_ok: list[bool] = []
    for name in ALL_CHARACTERS:
        plan = plan_commands(15, frames_per_chunk=8, seed=41, balance_emotions=True)
        poses, _ = simulate(world_script(plan), plan[-1].start + 25, seed=41)
        character = load_character(name)
        for c in plan:
            frames = torch.cat([_premultiplied(x, torch.device("cpu")) for x in _world_chunks(
                character, poses[c.start:c.start + c.window], (256, 144), torch.device("cpu"))])
            read, ident = probe.predict(frames)
            followed_ok.append(followed(action_scores(read), c.action))
            hits[c.emotion].append(read_emotion(ident["emotion"]) == c.emotion)  # type: ignore[arg-type]
    return hits, followed_ok


@pytest.fixture(scope="module")
def world_readings() -> tuple[dict[str, list[bool]], list[bool]]:
    return _world_readings()


def test_shipped_probe_follows_the_world(world_readings) -> None:
    _, followed_ok = world_readings
    assert sum(followed_ok) / len(followed_ok) >= 0.95


def test_shipped_probe_reads_the_world_emotions_better_than_the_face_templates(world_readings) -> None:
    """The emotion head against the old rule (nearest simulated face to the trunk's face read-out), which read a
    balanced world plan at 57% on average (rin, plan seed 102: neutral 83%, happy 0%, angry 50%, surprised 83%,
    sad 67%)."""
    hits, _ = world_readings
    rates = {e: sum(v) / len(v) for e, v in hits.items()}
    assert sum(rates.values()) / len(rates) >= 0.65, rates


@pytest.fixture(scope="module")
def face_reader_readings() -> tuple[dict[str, float], list[tuple[str, str, str]]]:
    """The emotion instrument of `liveidol eval` (the shipped face reader + the template rule) on PERFECT video: the
    world's own renders at the probe's size of a balanced 15-command plan for each shipped character (3 per emotion,
    9 per emotion in all; plan seed 127 is used nowhere else). Per emotion the share read right, and the misses
    (commanded, read, action)."""
    from backend.actions import EMOTIONS
    from backend.training.evaluate import ALL_CHARACTERS
    from backend.training.face_reader import FACE_READER_PATH, FaceReader, world_emotions

    reader = FaceReader.load(FACE_READER_PATH)
    rows = [r for name in ALL_CHARACTERS for r in world_emotions(reader, name, seed=127, commands=15)["raw"]]
    rates = {e: float(np.mean([read == e for want, read, _ in rows if want == e])) for e in EMOTIONS}
    return rates, [r for r in rows if r[0] != r[1]]


def test_face_reader_reads_every_world_emotion(face_reader_readings) -> None:
    """The instrument must read the world itself right before its reading of generated frames certifies anything:
    every emotion >= 97% on ground truth. The emotion head read happy at 22% and about 80% on average on such a plan
    (seed 41); the session-6 reader ~90% (happy and angry under the smile and surprise actions, whose own face
    saturates the brows and the mouth, read as neutral). Since the world draws its emotions boldly (session 7: a
    vein mark, gloom lines and tears, sparkles, small irises) the retrained reader reads 9/9 of each here, and 238 of
    240 on plans 110 and 131 (40 commands per character; the two misses: happy and angry under the angry action)."""
    rates, misses = face_reader_readings
    assert all(r >= 0.97 for r in rates.values()), (rates, misses)


def test_the_next_model_loads_through_its_preset(tmp_path) -> None:
    """`--model liveidol-g64` names the next default idol in training (backend/weights/next/) with its finer latent
    grid: the generator loads it (its config checked against the preset's) and streams an opaque idol over a
    transparent background; under the default config the same file is refused with the key that differs."""
    from backend.cli import _preset
    from backend.model.checkpoint import CheckpointError, load_weights

    def load_weights_config(source: str) -> dict:
        weights = load_weights(source)
        assert weights is not None and weights.config is not None
        return weights.config

    preset = _preset("liveidol-g64")
    path = preset["model.checkpoint"]
    assert path.endswith("backend/weights/next/liveidol-small-g64.safetensors")
    assert BUILTIN_PATH.parent.joinpath("next", "liveidol-small-g64.safetensors").stat().st_size <= 16 * 2**20
    cfg = load_config(None, preset)
    assert (cfg.model.autoencoder.spatial_factor, cfg.model.dit.patch_size) == (4, (1, 4, 4))
    gen = Generator(dataclasses.replace(cfg.model, device="cpu", output_width=256, output_height=144))
    assert gen.dit.frame_tokens(36, 64) == Generator(dataclasses.replace(
        load_config().model, device="cpu")).dit.frame_tokens(18, 32)  # the same DiT tokens a frame
    gen.reset(reference_frame(load_character("aiko"), gen.native_size), Conditions())
    frames = np.concatenate([gen.next_chunk(Conditions(action="wave")) for _ in range(2)])
    assert frames.shape[1:] == (144, 256, 4)
    alpha = frames[..., 3].astype(np.float32) / 255
    assert 0.05 < alpha.mean() < 0.5 and alpha[:, :, :20].max() < 0.2
    with pytest.raises(CheckpointError, match="spatial_factor"):
        Generator(dataclasses.replace(load_config().model, device="cpu", checkpoint=path))
    # training goes on from it through the same preset: the run takes its DiT, decoders and step counts
    import json

    from backend.cli import main
    from backend.training.train import Run

    assert main(["train", "import", "--model", "liveidol-g64", "--run", str(tmp_path / "run")]) == 0
    trained = load_weights_config(path)["training"]
    assert json.loads((tmp_path / "run" / "dit_state.json").read_text())["step"] == trained["dit_step"] > 0
    assert {f.name for f in (tmp_path / "run").iterdir()} >= {"autoencoder.pt", "dit_ema.safetensors", "mid.pt",
                                                             "hires.pt"}
    assert gen.framings == ("half", "whole") == tuple(trained["framings"])  # session 19 trained it framed whole too
    # session 20 switched its head to x0 (backend/weights/next/README.md): the file records it, the preset says it,
    # and the way back to a flow head is the same command with the other prediction
    assert load_weights_config(path)["dit"]["prediction"] == cfg.model.dit.prediction == "x0"
    flow = ["train", "import", "--model", "liveidol-g64", "--set", "model.dit.prediction=flow"]
    with pytest.raises(SystemExit, match=r"predicts x0, model\.dit\.prediction says flow: --set model\.dit\.prediction=x0 "
                                         r"to train it on as it is, or --repredict"):
        main([*flow, "--run", str(tmp_path / "refused")])
    assert main([*flow, "--repredict", "--run", str(tmp_path / "flow")]) == 0
    head = Run(tmp_path / "flow").load_weights("dit_ema.safetensors")["head.head.weight"]
    assert not head.any() and json.loads((tmp_path / "flow" / "dit_state.json").read_text())["step"] == trained["dit_step"]


def test_the_next_models_finer_grid_keeps_more_of_the_face() -> None:
    """Why the next model exists: through the CPU's decoder at 960x540, its 64x36 latents keep more of the world
    than the shipped 32x18 ones (session 17: 27.31 against 25.63 dB for aiko, three times the sharpness)."""
    from backend.cli import _preset
    from backend.training.evaluate import autoencoder_roundtrip

    aiko = load_character("aiko")
    trips = {}
    for name, overrides in (("shipped", {}), ("next", _preset("liveidol-g64"))):
        gen = Generator(load_config(None, {**overrides, "model.device": "cpu"}).model)
        trips[name] = autoencoder_roundtrip(gen.autoencoder.float(), aiko, gen.native_size, (960, 540), which="mid")
    assert trips["next"]["decoded_size"] == [512, 288] and trips["shipped"]["decoded_size"] == [480, 270]
    assert trips["next"]["psnr"] > trips["shipped"]["psnr"] + 1.0, trips
    assert trips["next"]["sharpness_ratio"] > 2 * trips["shipped"]["sharpness_ratio"], trips
