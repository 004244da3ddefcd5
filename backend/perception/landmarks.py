"""Face and hand landmarks from one camera picture, with the models MediaPipe's wheel carries.

``mediapipe`` 0.10.x ships its legacy Solutions models inside the package (face mesh with iris, hand
landmarks and palm detection, as ``.tflite`` files next to the code): nothing is downloaded, everything runs on
the CPU. Usage (synchronous, one thread; the perception service runs it in its own worker thread)::

    with Landmarker(max_hands=2) as marker:
        seen = marker.step(rgb)          # (H, W, 3) uint8 RGB -> Landmarks
        seen.face                        # (478, 3) float32 x, y in [0, 1] of the picture, z relative; or None
        seen.hands                       # tuple of (21, 3) arrays, same units

``video=True`` (the default) lets MediaPipe track between pictures (faster, steadier); ``video=False`` treats
every picture on its own (tests on unrelated photos).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.errors import LiveIdolError

__all__ = ["Landmarker", "Landmarks", "PerceptionUnavailable", "clean_environment"]

FACE_POINTS = 478  # 468 mesh points + 10 iris points (refine_landmarks)
HAND_POINTS = 21


class PerceptionUnavailable(LiveIdolError, RuntimeError):
    """The perception packages are missing: the message names what to install."""


@dataclass(frozen=True)
class Landmarks:
    """What the models saw in one picture. Coordinates: x, y normalised to the picture, z relative depth."""

    width: int
    height: int
    face: np.ndarray | None = field(default=None, repr=False)  # (478, 3) float32
    hands: tuple[np.ndarray, ...] = field(default=(), repr=False)  # each (21, 3) float32
    handedness: tuple[str, ...] = ()  # "Left" / "Right" per hand, as MediaPipe labels them

    @property
    def aspect(self) -> float:
        """Width / height: x and y are normalised separately, distances need this."""
        return self.width / max(1, self.height)


# opencv's import points these at its own Qt plugins and libraries; any program the process starts later
# (OBS, espeak-ng) would inherit them and may fail to start (OBS aborts loading cv2's Qt "xcb" plugin)
_CV2_ENV = ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR", "LD_LIBRARY_PATH")


@contextlib.contextmanager
def clean_environment() -> Iterator[None]:
    """Import opencv (or mediapipe, which imports it) inside this: the process environment stays as it was."""
    before = {k: os.environ.get(k) for k in _CV2_ENV}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _import_mediapipe() -> Any:
    try:
        with clean_environment():
            import mediapipe as mp
    except ImportError as exc:
        raise PerceptionUnavailable(
            "camera perception needs the 'perception' extra: pip install -e '.[perception]' "
            f"(mediapipe 0.10.14 with its bundled models) ({exc})") from exc
    if not hasattr(mp, "solutions"):
        raise PerceptionUnavailable(
            f"mediapipe {getattr(mp, '__version__', '?')} has no bundled Solutions models: "
            "install mediapipe==0.10.14 (pip install -e '.[perception]')")
    return mp


class Landmarker:
    """MediaPipe face mesh (with iris) + hands on RGB pictures. Not thread-safe: one thread drives it."""

    def __init__(self, *, max_hands: int = 2, video: bool = True, min_confidence: float = 0.5) -> None:
        mp = _import_mediapipe()
        self._face = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=not video, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence)
        self._hands = mp.solutions.hands.Hands(
            static_image_mode=not video, max_num_hands=max_hands, model_complexity=1,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence)

    def __enter__(self) -> Landmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._face.close()
        self._hands.close()

    def step(self, rgb: np.ndarray) -> Landmarks:
        """Landmarks of one (H, W, 3) uint8 RGB picture."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"Landmarker.step: expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        face_res = self._face.process(rgb)
        face = None
        if face_res.multi_face_landmarks:
            face = _points(face_res.multi_face_landmarks[0])
            assert face.shape == (FACE_POINTS, 3), f"face mesh returned {face.shape}"
        hand_res = self._hands.process(rgb)
        hands: list[np.ndarray] = []
        labels: list[str] = []
        for n, lm in enumerate(hand_res.multi_hand_landmarks or ()):
            hands.append(_points(lm))
            cls = hand_res.multi_handedness[n].classification[0] if hand_res.multi_handedness else None
            labels.append(cls.label if cls is not None else "")
        return Landmarks(w, h, face, tuple(hands), tuple(labels))


def _points(landmark_list: Any) -> np.ndarray:
    return np.array([(p.x, p.y, p.z) for p in landmark_list.landmark], dtype=np.float32)
