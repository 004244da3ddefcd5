"""Configuration: the shipped files are true to the code; bad values give one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backend.cli import main
from backend.config import CONFIG_DIR, Config, ConfigError, default_toml, load_config


def test_default_toml_is_the_documented_defaults() -> None:
    assert (CONFIG_DIR / "default.toml").read_text() == default_toml(), (
        "configs/default.toml is stale: regenerate it with `liveidol config > configs/default.toml`")
    assert load_config() == Config()


@pytest.mark.parametrize(("text", "expected"), [
    ("[server]\nport = 70000\n", "server.port = 70000: expected an integer from 0 to 65535"),
    ("[server]\nprot = 1\n", "server.prot: unknown key (allowed here: allow_remote"),
    ("[model.dit]\ndim = 'big'\n", "model.dit.dim = 'big': expected an integer"),
    ("[model]\nattention = 'flash'\n", "model.attention = 'flash': expected one of 'auto', 'sdpa', 'sage'"),
    ("[engine]\nfps = true\n", "engine.fps = True: expected a number"),
    ("[chat.twitch]\noauth_token = 5\n", "chat.twitch.oauth_token = <hidden>: expected a string"),
    ("model = 3\n", "model = 3: expected a table"),
    ("[model]\nframings = []\n", "model.framings = []: expected one or both of 'half' and 'whole'"),
    ("[model]\nframings = ['half', 'half']\n", "model.framings = ['half', 'half']: expected one or both"),
    ("[model]\nframings = ['full']\n", "model.framings[0] = 'full': expected one of 'half', 'whole'"),
    ("[model\n", "not valid TOML"),
])
def test_bad_config_names_file_key_value_and_allowed(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message


def test_overrides_from_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 9000\n")
    cfg = load_config(path, {"server.port": 9100, "model.steps": 2})
    assert cfg.server.port == 9100 and cfg.model.steps == 2
    assert cfg.server.host == "127.0.0.1"


def test_secrets_are_not_in_repr() -> None:
    cfg = load_config(overrides={"chat.twitch.oauth_token": "oauth:supersecret"})
    assert "supersecret" not in repr(cfg)
    assert cfg.chat.twitch.oauth_token == "oauth:supersecret"


def test_cli_prints_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[engine]\nfps = 0\n")
    assert main(["config", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "engine.fps = 0: expected a number from 1.0 to 120.0" in err
    assert main(["bench", "--set", "model.steps=9"]) == 2
    assert "model.steps = 9" in capsys.readouterr().err


def test_cli_config_prints_the_default_file() -> None:
    out = subprocess.run([sys.executable, "-m", "backend.cli", "config"], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout == default_toml()


@pytest.mark.parametrize(("text", "expected"), [
    ("[engine]\nfps = nan\n", "engine.fps = nan: expected a finite number from 1.0 to 120.0"),
    ("[model]\nshift = nan\n", "model.shift = nan: expected a finite number from 0.1 to 100.0"),
    ("[director]\nuser_cooldown_s = inf\n", "director.user_cooldown_s = inf: expected a finite number >= 0.0"),
    ("[model]\ntimesteps = [1000.0, -inf]\n", "model.timesteps[1] = -inf: expected a finite number from 0.0 to 1000.0"),
    ("[model.dit]\neps = nan\n", "model.dit.eps = nan: expected a finite number >= 0.0"),
])
def test_non_finite_numbers_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    """nan passed every range check (`nan < lo` is false): engine.fps = nan served no frame (issue 16, point 1)."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {expected}"


def test_a_character_with_a_non_finite_colour_is_refused(tmp_path: Path) -> None:
    from backend.world.character import load_character

    (tmp_path / "c.toml").write_text("hair = [0.5, nan, 0.5]\n")
    with pytest.raises(ConfigError, match=r"c\.toml: hair = "):
        load_character(tmp_path / "c.toml")


def test_errors_name_the_flag_when_the_bad_value_came_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --set named default.toml, which holds no such value (issue 16, point 1)."""
    assert main(["bench", "--set", "engine.fps=nan"]) == 2
    assert capsys.readouterr().err == (
        "liveidol: error: --set engine.fps=nan: engine.fps = nan: expected a finite number from 1.0 to 120.0\n")
    assert main(["bench", "--set", "model.timesteps=[1000, inf]"]) == 2
    assert "--set model.timesteps=[1000, inf]: model.timesteps[1] = inf" in capsys.readouterr().err
    assert main(["bench", "--set", "server.prot=1"]) == 2
    assert capsys.readouterr().err.startswith("liveidol: error: --set server.prot=1: server.prot: unknown key")
    assert main(["serve", "--port", "70000"]) == 2
    assert capsys.readouterr().err == (
        "liveidol: error: command line: server.port = 70000: expected an integer from 0 to 65535\n")
    path = tmp_path / "c.toml"
    path.write_text("[engine]\nfps = inf\n")  # the file's own bad value still names the file
    assert main(["bench", "--config", str(path), "--set", "model.steps=2"]) == 2
    assert capsys.readouterr().err.startswith(f"liveidol: error: {path}: engine.fps = inf")
    with pytest.raises(SystemExit):
        main(["bench", "--seconds", "nan"])
    assert "expected a finite number, got 'nan'" in capsys.readouterr().err


@pytest.mark.parametrize(("data", "expected"), [
    (bytes(range(128, 256)) * 4, "not a text file (byte 0 is not UTF-8); expected TOML"),
    (b"\x00\x01[engine", "not valid TOML"),
    ("dir", "is a directory, not a config file"),
])
def test_unreadable_config_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               data: bytes | str, expected: str) -> None:
    """Random bytes as the config ended in a UnicodeDecodeError traceback (issue 16, point 3)."""
    path = tmp_path / "bad.toml"
    if data == "dir":
        path.mkdir()
    else:
        assert isinstance(data, bytes)
        path.write_bytes(data)
    assert main(["config", "--check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"liveidol: error: {path}: {expected}"), err


def test_every_user_error_is_a_liveidol_error() -> None:
    """One root class: the CLI catches user errors without importing the modules that raise them."""
    from backend import cli
    from backend.errors import LiveIdolError
    from backend.model.checkpoint import CheckpointError
    from backend.model.generator import GeneratorError
    from backend.remote import RemoteError
    from backend.server.auth import AuthError
    from backend.server.server import ServerError
    from backend.training.evaluate import EvalError
    from backend.voice.errors import AudioDeviceError, MissingPackageError, VoiceError
    from obs_plugin.setup import ObsSetupError

    for error in (ConfigError, cli.CliError, CheckpointError, GeneratorError, RemoteError, AuthError, ServerError,
                  EvalError, VoiceError, MissingPackageError, AudioDeviceError, ObsSetupError):
        assert issubclass(error, LiveIdolError), error
    assert issubclass(ConfigError, ValueError) and issubclass(CheckpointError, RuntimeError)  # kept for callers
    assert "importlib" not in Path(cli.__file__).read_text()


def test_cli_prints_a_checkpoint_error_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 20)
    assert main(["bench", "--seconds", "1", "--checkpoint", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"liveidol: error: {junk}: not a loadable torch checkpoint"), err
