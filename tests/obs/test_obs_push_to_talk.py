"""Push-to-talk from OBS: the source script's hotkey -> ``_stream.PushToTalk`` -> the backend's /control "ptt".

``PushToTalk`` runs against the real backend (``RealBackend``: the real Server and Engine on loopback, the
push-to-talk hook recording presses). The end-to-end test starts a real OBS Studio under Xvfb with the
script, adds the source with `liveidol obs setup` (token included) and presses the hotkey through
obs-websocket's TriggerHotkeyByName (OBS sends it as a press, no release).
"""

from __future__ import annotations

import logging
import os
import time

import pytest

from backend.config import ObsConfig
from obs_plugin import _stream
from obs_plugin.liveidol_source import HOTKEY_NAME
from obs_plugin.setup import run_setup
from tests.obs.obs_harness import ObsProcess, have_obs
from tests.obs.obs_real_backend import RealBackend

TOKEN = "obs-test-token"  # RealBackend's control token


def wait_until(predicate, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def backend():
    b = RealBackend()
    b.start()
    try:
        yield b
    finally:
        b.stop()


def test_control_url_sits_beside_the_stream() -> None:
    assert _stream.control_url("ws://127.0.0.1:8765/stream?format=rgba&audio=1") == "ws://127.0.0.1:8765/control"
    assert _stream.control_url("wss://idol.example:443/stream") == "wss://idol.example:443/control"


def test_presses_reach_the_backend_over_control(backend) -> None:
    backend.presses.clear()
    ptt = _stream.PushToTalk(backend.url, TOKEN)
    try:
        ptt.press(True)
        ptt.press(False)
        wait_until(lambda: ptt.sent == 2, "two presses accepted")
    finally:
        ptt.stop()
    assert backend.presses == [True, False] and "token" not in repr(ptt).lower()


def test_a_wrong_or_missing_token_is_a_warning(backend, caplog) -> None:
    backend.presses.clear()
    with caplog.at_level(logging.WARNING, logger=_stream.__name__):
        none = _stream.PushToTalk(backend.url, "")
        none.press(True)
        none.press(False)
        wrong = _stream.PushToTalk(backend.url, "not-the-token")
        try:
            wrong.press(True)
            wait_until(lambda: "not sent" in caplog.text, "the refusal to be logged")
        finally:
            wrong.stop()
    assert caplog.text.count("needs the control token") == 1  # once, not per press
    assert "refused the token" in caplog.text and backend.presses == []
    assert "not-the-token" not in caplog.text


@pytest.mark.obs
def test_obs_hotkey_presses_push_to_talk(tmp_path, backend) -> None:
    if not have_obs():
        if os.environ.get("CI") == "true":
            pytest.fail("OBS Studio or Xvfb is not installed, and CI=true requires the OBS end-to-end test")
        pytest.skip("needs the obs and Xvfb binaries (apt-get install obs-studio xvfb libgl1-mesa-dri)")
    backend.presses.clear()
    proc = ObsProcess(tmp_path, width=320, height=180)
    client = proc.start()
    try:
        names = client.get_hotkey_list().hotkeys
        assert HOTKEY_NAME in names, proc.obs_log()[-3000:]
        cfg = ObsConfig(host="127.0.0.1", port=proc.ws_port)
        assert run_setup(cfg, "obs_plugin/liveidol_source.py", backend.url, TOKEN, True) == 0
        client.trigger_hotkey_by_name(HOTKEY_NAME)
        wait_until(lambda: backend.presses == [True], f"the hotkey's press at the backend: {proc.obs_log()[-2000:]}")
    finally:
        client.disconnect()
        proc.stop()
    assert TOKEN not in proc.obs_log()
