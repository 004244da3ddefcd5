"""Pictures of the streamer: screenshots of an OBS source over obs-websocket, or a local camera device.

Both are synchronous (``grab() -> (H, W, 3) uint8 RGB``, ``close()``) and are driven from the perception
worker thread only. Pictures live in memory for one analysis step: nothing is written to disk or sent anywhere
(OBS is on this machine; obs-websocket's GetSourceScreenshot returns the picture in the reply).

    cam = ObsCamera("127.0.0.1", 4455, "", "Webcam", size=480)
    rgb = cam.grab()
"""

from __future__ import annotations

import base64
import gc
import logging
import warnings
from typing import Any

import numpy as np

from backend.errors import LiveIdolError

from .landmarks import clean_environment

__all__ = ["CameraError", "DeviceCamera", "ObsCamera", "decode_data_url", "open_camera"]

log = logging.getLogger(__name__)


class CameraError(LiveIdolError, RuntimeError):
    """No picture could be had; the message names the source and why."""


def decode_data_url(data: str, *, where: str = "screenshot") -> np.ndarray:
    """``data:image/jpeg;base64,...`` (what GetSourceScreenshot returns) -> (H, W, 3) uint8 RGB."""
    import simplejpeg

    head, sep, body = data.partition(",")
    if not sep or not head.startswith("data:image/") or ";base64" not in head:
        raise CameraError(f"{where}: expected a base64 data URL of an image, got {data[:40]!r}")
    try:
        raw = base64.b64decode(body, validate=True)
    except ValueError as exc:
        raise CameraError(f"{where}: bad base64 ({exc})") from exc
    if head.startswith("data:image/jpeg") or head.startswith("data:image/jpg"):
        try:
            return simplejpeg.decode_jpeg(raw, colorspace="RGB")
        except ValueError as exc:
            raise CameraError(f"{where}: not a JPEG ({exc})") from exc
    try:
        with clean_environment():
            import cv2
    except ImportError as exc:
        raise CameraError(f"{where}: {head[5:]} needs opencv; ask for jpg") from exc
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise CameraError(f"{where}: could not decode the {head[5:]} picture")
    return np.ascontiguousarray(img[:, :, ::-1])


class ObsCamera:
    """Screenshots of one OBS source (the streamer's camera) over obs-websocket v5, as JPEG."""

    def __init__(self, host: str, port: int, password: str, source: str, *, size: int = 480,
                 timeout: float = 5.0) -> None:
        if not source:
            raise CameraError("perception.obs_source is empty: name the OBS source that shows your camera "
                              "(e.g. --set perception.obs_source=Webcam)")
        self.host, self.port, self.source, self.size, self.timeout = host, port, source, size, timeout
        self._password = password
        self._client: Any = None

    def _connect(self) -> Any:
        import obsws_python as obsws

        # obsws-python logs the password at INFO level: keep its loggers quiet while connecting
        logging.getLogger("obsws_python").setLevel(logging.WARNING)
        try:
            return obsws.ReqClient(host=self.host, port=self.port, password=self._password, timeout=self.timeout)
        except Exception as exc:
            # obsws-python leaves the socket of a refused connection open: let it go quietly now
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
            raise CameraError(f"OBS at {self.host}:{self.port}: cannot connect to obs-websocket "
                              f"({type(exc).__name__}: {exc})") from exc

    def grab(self) -> np.ndarray:
        if self._client is None:
            self._client = self._connect()
        try:
            reply = self._client.get_source_screenshot(self.source, "jpg", self.size, self.size, 80)
        except Exception as exc:
            self.close()  # reconnect on the next grab
            raise CameraError(f"OBS source {self.source!r}: screenshot failed ({type(exc).__name__}: {exc})") from exc
        return decode_data_url(reply.image_data, where=f"OBS source {self.source!r}")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            except Exception as exc:  # closing a broken connection: nothing more to do
                log.debug("obs-websocket disconnect failed: %s", exc)


class DeviceCamera:
    """A local camera device through OpenCV (``cv2.VideoCapture(index)``)."""

    def __init__(self, index: int = 0, *, size: int = 480) -> None:
        try:
            with clean_environment():
                import cv2
        except ImportError as exc:
            raise CameraError("perception.camera = 'device' needs opencv: pip install -e '.[perception]'") from exc
        self._cv2 = cv2
        self.index, self.size = index, size
        self._cap: Any = None

    def grab(self) -> np.ndarray:
        cv2 = self._cv2
        if self._cap is None:
            self._cap = cv2.VideoCapture(self.index)
            if not self._cap.isOpened():
                self._cap = None
                raise CameraError(f"camera device {self.index}: cannot open it")
        ok, frame = self._cap.read()
        if not ok or frame is None:
            self.close()
            raise CameraError(f"camera device {self.index}: no picture")
        h, w = frame.shape[:2]
        s = self.size / max(h, w)
        if s < 1.0:
            frame = cv2.resize(frame, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame[:, :, ::-1])

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


def open_camera(cfg: Any, obs: Any) -> ObsCamera | DeviceCamera:
    """The camera the ``[perception]`` section asks for (``obs``: the ``[obs]`` section, for host/port/password)."""
    import os

    if cfg.camera == "device":
        return DeviceCamera(cfg.device, size=cfg.picture_size)
    password = os.environ.get("LIVEIDOL_OBS_PASSWORD", obs.password)
    return ObsCamera(obs.host, obs.port, password, cfg.obs_source, size=cfg.picture_size)
