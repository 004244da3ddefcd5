"""End to end with a real OBS Studio under Xvfb: `liveidol obs setup` adds the LiveIdol source, the
source shows exactly the frames the backend served, the placeholder while the backend is down, and
new frames after it restarts on the same port; its audio reaches OBS's mixer.

The backend is ``obs_fake_backend.FakeBackend``, a loopback server speaking docs/protocol.md exactly
(real websockets + msgpack), so served frames are known byte for byte.  OBS runs with obs-websocket
password auth on, to prove setup's wrong-password error and that no password reaches the logs.
Skipped only when ``obs``/``Xvfb`` are missing and CI is not 'true'; in CI a missing OBS fails.
"""

from __future__ import annotations

import base64
import logging
import re
import secrets
import signal
import threading
import time
from dataclasses import replace

import numpy as np
import obsws_python as obsws
import pytest

from backend.config import ObsConfig
from obs_plugin import _stream
from obs_plugin.setup import INPUT_KIND, ObsSetupError, run_setup, setup_obs
from tests.obs.obs_fake_backend import FakeBackend
from tests.obs.obs_harness import ObsProcess, decode_png, free_port, require_obs, running_obs
from tests.obs.obs_real_backend import RealBackend

pytestmark = pytest.mark.obs

PASSWORD = "pw-" + secrets.token_hex(8)
CANVAS = (640, 360)
FRAME = (320, 180)
MATCH = 2.0        # mean abs error (0..255) for "this is that image"; OBS here is pixel-exact (0.0)
DIFFERENT = 20.0   # and at least this far from anything else


@pytest.fixture(scope="module")
def obs(tmp_path_factory):
    require_obs("the OBS end-to-end test")
    with running_obs(tmp_path_factory.mktemp("obs"), width=CANVAS[0], height=CANVAS[1], password=PASSWORD) as obs:
        yield obs


def screenshot(client: obsws.ReqClient, name: str = "LiveIdol", size: tuple[int, int] = FRAME) -> np.ndarray:
    data = client.get_source_screenshot(name, "png", size[0], size[1], -1).image_data
    w, h, ch, px = decode_png(base64.b64decode(data.split(",", 1)[1]))
    assert (w, h, ch) == (*size, 4)
    return np.frombuffer(px, np.uint8).reshape(h, w, 4)


def rgba(data: bytes, size: tuple[int, int] = FRAME) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(size[1], size[0], 4)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a[..., :3].astype(np.int16) - b[..., :3].astype(np.int16)).mean())


def wait_for_image(client, predicate, what, timeout=10.0, size=FRAME):
    deadline = time.monotonic() + timeout
    while True:
        img = screenshot(client, size=size)
        if predicate(img):
            return img
        if time.monotonic() > deadline:
            raise AssertionError(f"OBS did not show {what} within {timeout} s")
        time.sleep(0.05)


def test_setup_errors_are_one_clear_line(obs, caplog):
    proc, _ = obs
    caplog.set_level(logging.DEBUG)
    good = ObsConfig(host="127.0.0.1", port=proc.ws_port, password=PASSWORD)
    with pytest.raises(ObsSetupError, match="wrong password"):
        setup_obs(replace(good, password="not-" + PASSWORD), stream_url="ws://127.0.0.1:1/stream")
    with pytest.raises(ObsSetupError, match="requires a password"):
        setup_obs(replace(good, password=""), stream_url="ws://127.0.0.1:1/stream")
    with pytest.raises(ObsSetupError, match=f"not reachable at 127.0.0.1:{free_port()}|not reachable"):
        setup_obs(replace(good, port=free_port()), stream_url="ws://127.0.0.1:1/stream")
    with pytest.raises(ObsSetupError, match="no scene 'Nope'"):
        setup_obs(replace(good, scene="Nope"), stream_url="ws://127.0.0.1:1/stream")
    proc_client = proc.client()
    try:
        proc_client.create_input("Scene", "Taken", "color_source_v3", {"color": 0xFF0000FF}, True)
    finally:
        proc_client.disconnect()
    with pytest.raises(ObsSetupError, match="source named 'Taken' of kind 'color_source_v3'"):
        setup_obs(replace(good, source_name="Taken"), stream_url="ws://127.0.0.1:1/stream")
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


def test_obs_shows_stream_placeholder_and_recovers(obs, capsys):
    proc, client = obs
    cfg = ObsConfig(host="127.0.0.1", port=proc.ws_port, password=PASSWORD)
    backend = FakeBackend(width=FRAME[0], height=FRAME[1], fps=25.0)
    backend.start()
    try:
        # 1. `liveidol obs setup` adds the source in a new scene, fitted to the canvas.
        assert run_setup(cfg, "obs_plugin/liveidol_source.py", backend.url, "", True) == 0
        printed = capsys.readouterr().out
        assert "added source 'LiveIdol' in scene 'LiveIdol Scene' (new scene)" in printed
        assert PASSWORD not in printed
        assert client.get_current_program_scene().current_program_scene_name == "LiveIdol Scene"
        item = client.get_scene_item_id("LiveIdol Scene", "LiveIdol").scene_item_id
        tf = client.get_scene_item_transform("LiveIdol Scene", item).scene_item_transform
        assert (tf["boundsType"], tf["boundsWidth"], tf["boundsHeight"]) == ("OBS_BOUNDS_SCALE_INNER", *map(float, CANVAS))
        assert client.get_input_settings("LiveIdol").input_kind == INPUT_KIND
        # Running setup again updates the same source instead of adding a second one.
        again = setup_obs(cfg, stream_url=backend.url, create_scene=True)
        assert (again.created_source, again.created_scene, again.scene_item_id) == (False, False, item)

        # 2. Frames flow: the source shows one of the frames just served, pixel for pixel.
        placeholder = rgba(_stream.placeholder_rgba(*FRAME))
        black = np.zeros_like(placeholder)

        def served_match(img, frames):
            return min(mae(img, rgba(d)) for d in frames)

        t0 = time.monotonic()
        img = wait_for_image(client, lambda im: served_match(im, backend.frames) < MATCH, "a served frame")
        first_frame_s = time.monotonic() - t0
        assert mae(img, placeholder) > DIFFERENT and mae(img, black) > DIFFERENT
        assert (img[..., 3] == 255).all()
        recent = {bytes(d) for _, _, d in list(backend.served)[-12:]}
        assert served_match(img, recent) < MATCH  # a recent frame, not a stale one
        seen = set()
        deadline = time.monotonic() + 3
        while len(seen) < 4 and time.monotonic() < deadline:
            im = screenshot(client)
            seen |= {i for i, d in enumerate(backend.frames) if mae(im, rgba(d)) < MATCH}
        assert len(seen) >= 4, f"the picture did not keep changing: frames {seen}"

        # 3. Audio reaches OBS: the source's volume meter moves with the backend's tone.
        peaks = []
        events = obsws.EventClient(host="127.0.0.1", port=proc.ws_port, password=PASSWORD, subs=1 << 16)
        got = threading.Event()

        def on_input_volume_meters(data):
            for inp in data.inputs:
                if inp["inputName"] == "LiveIdol" and inp["inputLevelsMul"]:
                    peaks.append(max(ch[1] for ch in inp["inputLevelsMul"]))
                    if len(peaks) >= 10:
                        got.set()

        events.callback.register(on_input_volume_meters)
        try:
            assert got.wait(5), "no volume meter events for LiveIdol"
        finally:
            events.disconnect()
        assert max(peaks) > 0.05, f"LiveIdol audio peaks {peaks}"

        # 4. Backend down: the placeholder (with its alpha) replaces the last frame.
        backend.stop()
        img = wait_for_image(client, lambda im: mae(im, placeholder) < MATCH, "the placeholder")
        assert abs(int(img[..., 3].mean()) - 204) <= 1

        # 5. Backend back on the same port with different frames: the source recovers by itself.
        backend2 = FakeBackend(port=backend.port, width=FRAME[0], height=FRAME[1], fps=25.0, mirror=True)
        backend2.start()
        try:
            img = wait_for_image(client, lambda im: served_match(im, backend2.frames) < MATCH,
                                 "a frame of the restarted backend", timeout=15)
            assert served_match(img, backend.frames) > DIFFERENT

            # 6. Removing the source ends its connection (the script stops its thread).
            assert backend2.active == 1
            client.remove_input("LiveIdol")
            deadline = time.monotonic() + 5
            while backend2.active and time.monotonic() < deadline:
                time.sleep(0.02)
            assert backend2.active == 0, "the removed source still reads the stream"
        finally:
            backend2.stop()
    finally:
        backend.stop()

    # 7. Closing OBS stops it; the script unloads cleanly and logged what it received.  (The source was removed
    # first. Stopped by SIGINT, OBS 29 segfaulted in Qt after the unload in 7 of 118 stops and deadlocked in 2:
    # it closes from inside its signal handler (tests/obs/x11.py); closed by its window it did neither in 60.
    # A crash after the script has unloaded is OBS's own teardown, so it is still accepted; one before is not.)
    client.disconnect()
    rc = proc.stop()
    log = proc.obs_log()
    assert "[liveidol] LiveIdol script unloaded" in log, f"the script did not unload: {proc.stopped_how}"
    assert rc == 0 or rc == -signal.SIGSEGV, proc.stopped_how
    assert proc.stopped_how.startswith("closed OBS's window 'OBS "), proc.stopped_how  # not the SIGINT fallback
    assert "Traceback" not in log and PASSWORD not in log
    fps = [float(x) for x in re.findall(r"session ended frames=\d+ audio_chunks=\d+ seconds=[\d.]+ fps=([\d.]+)", log)]
    assert fps and max(fps) > 20, f"frame rate received in OBS: {fps}"
    print(f"first frame after setup {first_frame_s:.2f} s; fps received in OBS per session {fps}")


def test_obs_shows_the_real_backend(tmp_path):
    """The real backend (Engine + Server, tiny random generator): OBS shows what it serves and
    follows it across a restart.  A second /stream client records the served frames."""
    require_obs("the OBS end-to-end test")
    size = (64, 36)
    backend = RealBackend(width=size[0], height=size[1], fps=15.0)
    proc = ObsProcess(tmp_path, width=CANVAS[0], height=CANVAS[1])
    client = proc.start()
    try:
        backend.start()
        setup_obs(ObsConfig(host="127.0.0.1", port=proc.ws_port), stream_url=backend.url)
        placeholder = rgba(_stream.placeholder_rgba(*size), size)

        def shows_served(im):
            recent = list(backend.served)
            return bool(recent) and min(mae(im, rgba(d, size)) for _, d in recent) < MATCH

        img = wait_for_image(client, shows_served, "a frame the real backend served", size=size)
        assert mae(img, placeholder) > DIFFERENT
        backend.stop()
        wait_for_image(client, lambda im: mae(im, placeholder) < MATCH, "the placeholder", size=size)
        backend.served.clear()
        backend.start()  # same port
        wait_for_image(client, shows_served, "a frame after the backend restarted", timeout=15, size=size)
        client.remove_input("LiveIdol")
        time.sleep(0.5)  # let OBS drop the mixer widget before exit (see the Qt exit crash note above)
    finally:
        client.disconnect()
        rc = proc.stop()
        backend.stop()
    assert rc == 0, proc.stopped_how
    sessions = re.findall(r"session ended frames=(\d+) audio_chunks=(\d+) seconds=([\d.]+) fps=([\d.]+)", proc.obs_log())
    print(f"real backend sessions in OBS (frames, audio chunks, seconds, fps): {sessions}")
    assert len(sessions) == 2 and all(int(f) > 0 for f, *_ in sessions)
