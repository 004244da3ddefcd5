"""The camera sources: the real obsws-python client against the loopback obs-websocket v5 server (with the
real SHA-256 authentication), data URL decoding, and one-line errors for what goes wrong."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import simplejpeg

from backend.cli import build_parser
from backend.config import PerceptionConfig
from backend.perception.camera import CameraError, DeviceCamera, ObsCamera, decode_data_url

from .conftest import picture
from .obs_ws_server import ObsWsServer, _fit


def test_obs_camera_grabs_the_source_scaled_and_authenticated():
    rgb = picture("faces/happy_1.jpg")  # 320 x 320
    with ObsWsServer(source="Cam", password="pw") as server:
        server.show("face", rgb)
        cam = ObsCamera("127.0.0.1", server.port, "pw", "Cam", size=128)
        try:
            got = cam.grab()
            assert got.shape == (128, 128, 3) and got.dtype == np.uint8
            small = _fit(rgb, 128, 128).astype(np.int16)
            assert np.abs(got.astype(np.int16) - small).mean() < 12  # the same picture, through JPEG twice
            assert server.requests == ["GetSourceScreenshot"]
        finally:
            cam.close()


def test_obs_camera_errors_name_what_and_where():
    with ObsWsServer(source="Cam", password="pw") as server:
        server.show("face", picture("faces/happy_1.jpg"))
        with pytest.raises(CameraError, match=r"OBS source 'Other': screenshot failed .*code 600"):
            ObsCamera("127.0.0.1", server.port, "pw", "Other").grab()
        with pytest.raises(CameraError, match=rf"OBS at 127.0.0.1:{server.port}: cannot connect"):
            ObsCamera("127.0.0.1", server.port, "wrong", "Cam", timeout=2.0).grab()
        port = server.port
    with pytest.raises(CameraError, match="cannot connect to obs-websocket"):
        ObsCamera("127.0.0.1", port, "", "Cam", timeout=2.0).grab()
    with pytest.raises(CameraError, match=r"perception\.obs_source is empty"):
        ObsCamera("127.0.0.1", port, "", "")


def test_decode_data_url():
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, 12:] = 200
    url = "data:image/jpg;base64," + base64.b64encode(simplejpeg.encode_jpeg(rgb, colorspace="RGB")).decode()
    out = decode_data_url(url)
    assert out.shape == (16, 24, 3) and abs(int(out[0, 20, 0]) - 200) < 8
    with pytest.raises(CameraError, match="expected a base64 data URL"):
        decode_data_url("hello")
    with pytest.raises(CameraError, match="bad base64"):
        decode_data_url("data:image/jpg;base64,@@@")
    with pytest.raises(CameraError, match="not a JPEG"):
        decode_data_url("data:image/jpg;base64," + base64.b64encode(b"nope").decode())


def test_device_camera_that_is_not_there():
    pytest.importorskip("cv2")
    with pytest.raises(CameraError, match="camera device 97: cannot open it"):
        DeviceCamera(97).grab()


def test_opening_the_models_leaves_the_environment_alone():
    """opencv points Qt and the library path at itself on import; a real OBS started afterwards (tests/obs,
    and anything the backend runs) would load its Qt plugin and abort. The perception imports undo that."""
    import os
    import subprocess
    import sys

    code = ("import os, json; before = dict(os.environ); "
            "from backend.perception.landmarks import _import_mediapipe; _import_mediapipe(); "
            "from backend.perception.camera import DeviceCamera; DeviceCamera(0); "
            "print(json.dumps(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))))")
    pytest.importorskip("mediapipe")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_serve_camera_flag():
    from backend.cli import _config

    args = build_parser().parse_args(["serve", "--camera", "Webcam"])
    cfg = _config(args, **{"perception.enabled": True if args.camera is not None else None,
                           "perception.obs_source": args.camera or None})
    assert cfg.perception == PerceptionConfig(enabled=True, obs_source="Webcam")
    assert build_parser().parse_args(["serve", "--camera"]).camera == ""
    assert build_parser().parse_args(["serve"]).camera is None
