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
    out = subprocess.run([sys.executable, "-m", "backend.cli", "config"], capture_output=True, text=True, check=True)
    assert out.stdout == default_toml()
