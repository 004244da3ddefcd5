"""The face reader (``backend.training.face_reader``): its file format, its crop, its training loop and the
template rule it feeds. How well the SHIPPED reader reads the world is in ``test_shipped_model.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from backend.actions import EMOTIONS
from backend.training.evaluate import EvalError, emotion_templates, plan_commands, recognise_face, run_eval
from backend.training.face_reader import (
    _LO,
    _SPAN,
    FACE_PARAMS,
    FACE_READER_PATH,
    READER_SIZE,
    FaceReader,
    FaceReaderError,
    face_crops,
    render_crops,
    train_face_reader,
)
from backend.training.probe import Probe, _labelled_pool
from backend.world.pose import POSE_INDEX, simulate
from tests.training.test_evaluate import micro_cfg


def test_save_load_round_trip_reads_the_same(tmp_path: Path):
    torch.manual_seed(0)
    reader = FaceReader(width=4)
    path = tmp_path / "reader.safetensors"
    reader.save(path)
    back = FaceReader.load(path)
    frames = torch.rand(3, 4, 144, 256)
    a, b = reader.predict(frames), back.predict(frames)
    assert a.shape == (3, len(FACE_PARAMS))
    assert torch.allclose(a, b, atol=2e-2)  # fp16 on disk


def test_missing_corrupt_and_foreign_files_are_refused_naming_the_file(tmp_path: Path):
    with pytest.raises(FaceReaderError, match=r"nowhere\.safetensors: face reader not found.*--face-reader"):
        FaceReader.load(tmp_path / "nowhere.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(FaceReaderError, match=r"junk\.safetensors: cannot read face reader"):
        FaceReader.load(junk)
    probe = tmp_path / "probe.safetensors"
    Probe(width=4).save(probe)
    with pytest.raises(FaceReaderError, match=r"probe\.safetensors: not a LiveIdol face reader.*liveidol-probe"):
        FaceReader.load(probe)
    # the right format, but the weights of another width
    other = tmp_path / "other.safetensors"
    FaceReader(width=4).save(other)
    state = {k: v.half() for k, v in FaceReader(width=8).state_dict().items()}
    from safetensors import safe_open

    with safe_open(str(other), framework="pt") as fh:
        meta = fh.metadata()
    save_file(state, str(other), metadata=meta)
    with pytest.raises(FaceReaderError, match=r"other\.safetensors: weights do not fit a width-4 reader"):
        FaceReader.load(other)
    # trained for another face box
    save_file(state, str(other), metadata=meta | {"face_box": "[0, 0, 1, 1]", "width": "8"})
    with pytest.raises(FaceReaderError, match=r"other\.safetensors: trained for other face parameters"):
        FaceReader.load(other)


def test_eval_names_a_bad_face_reader_before_loading_the_model(tmp_path: Path):
    junk = tmp_path / "reader.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(EvalError, match=r"reader\.safetensors"):
        run_eval(micro_cfg(), commands=2, minutes=0.0, face_reader=junk)
    with pytest.raises(EvalError, match=r"missing\.safetensors: face reader not found"):
        run_eval(micro_cfg(), commands=2, minutes=0.0, face_reader=tmp_path / "missing.safetensors")


def test_the_shipped_reader_is_the_default_and_small():
    assert FACE_READER_PATH.is_file()
    assert FACE_READER_PATH.stat().st_size <= 2 * 2**20
    assert FaceReader.load(FACE_READER_PATH).size == READER_SIZE


def test_the_crop_is_the_face_box_at_any_frame_size():
    """A frame at 960x540 and the same frame at 256x144 give nearly the same crop (the box is a fraction)."""
    from backend.world.character import identity_tensor, load_character
    from backend.world.render import render

    ident = identity_tensor([load_character("rin").identity])
    poses, _ = simulate([(0, "smile", "happy")], 20, seed=3)
    small = render(ident, poses[None, 15:16], (256, 144))[0]
    large = render(ident, poses[None, 15:16], (960, 540))[0]
    a, b = face_crops(small), face_crops(large)
    assert a.shape == b.shape == (1, 4, READER_SIZE[1], READER_SIZE[0])
    assert (a - b).abs().mean() < 0.03
    assert a[:, 3].mean() > 0.5  # the head fills most of the box
    with pytest.raises(ValueError, match=r"expected \(N, 4, H, W\)"):
        face_crops(small[:, :3])


def test_render_crops_label_the_face_of_the_rendered_pose():
    gen = torch.Generator().manual_seed(0)
    pool, _ = _labelled_pool(gen, clips=2, frames=50)
    crops, faces = render_crops(6, "native", gen, pool, autoencoder=None, fixed=None, fixed_share=0.0, batch=3)
    assert crops.dtype == torch.uint8 and crops.shape == (6, 4, READER_SIZE[1], READER_SIZE[0])
    assert faces.shape == (6, len(FACE_PARAMS))
    rows = pool.flatten(0, 1)[:, [POSE_INDEX[k] for k in FACE_PARAMS]]
    # every label is one of the pool's faces, up to the per-idol jitter of render_batch (3% of each range)
    assert all(((rows - f).abs().max(1).values < 0.2).any() for f in faces)
    with pytest.raises(ValueError, match="needs the autoencoder"):
        render_crops(4, "ae_hires", gen, pool, autoencoder=None, fixed=None, fixed_share=0.0)


def test_a_short_training_learns_something():
    """A few seconds of training on raw crops brings the loss down from the untrained reader's."""
    torch.manual_seed(0)
    reader = train_face_reader(0.1, frames=128, batch=16, width=4, clips=4)
    gen = torch.Generator().manual_seed(1)
    pool, _ = _labelled_pool(gen, clips=2, frames=60)
    crops, faces = render_crops(32, "native", gen, pool, autoencoder=None, fixed=None, fixed_share=0.0)
    untrained = FaceReader(width=4).eval()

    def error(r: FaceReader) -> float:  # mean absolute error on the crops (predict crops them again: read them direct)
        with torch.no_grad():
            z = r(crops.float() / 255)
        return float((z - (faces - _LO) / _SPAN).abs().mean())

    assert error(reader) < 0.7 * error(untrained)


def test_the_rule_reads_true_faces_and_not_a_flat_one():
    """recognise_face on the world's true face parameters reads every command of a balanced plan; the same windows
    with the emotion removed (neutral) are not read as the commanded non-neutral emotion."""
    plan = plan_commands(20, frames_per_chunk=8, seed=113, balance_emotions=True)
    templates = emotion_templates(plan, seed=113)
    idx = [POSE_INDEX[k] for k in FACE_PARAMS]
    poses, _ = simulate([(0, "idle", "neutral")] + [(c.start, c.action, c.emotion) for c in plan],
                        plan[-1].start + 25, seed=113)
    got = [recognise_face(poses[c.start:c.start + c.window, idx], t) for c, t in zip(plan, templates)]
    assert got == [c.emotion for c in plan]
    flat, _ = simulate([(0, "idle", "neutral")] + [(c.start, c.action, "neutral") for c in plan],
                       plan[-1].start + 25, seed=113)
    wrong = [recognise_face(flat[c.start:c.start + c.window, idx], t) == c.emotion
             for c, t in zip(plan, templates) if c.emotion != "neutral"]
    assert wrong and not any(wrong)
    assert set(got) == set(EMOTIONS)


def test_cli_eval_passes_the_face_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    import backend.training.evaluate as evaluate
    from backend.cli import main

    seen: dict = {}
    monkeypatch.setattr(evaluate, "run_eval", lambda cfg, **kw: seen.update(kw) or {})
    assert main(["eval", "--commands", "1", "--minutes", "0", "--device", "cpu"]) == 0
    assert "face_reader" not in seen  # the shipped reader, run_eval's default
    assert main(["eval", "--commands", "1", "--minutes", "0", "--device", "cpu", "--face-reader", "r.safetensors"]) == 0
    assert seen["face_reader"] == "r.safetensors"
    assert main(["eval", "--commands", "1", "--minutes", "0", "--device", "cpu", "--face-reader", "none"]) == 0
    assert seen["face_reader"] is False
