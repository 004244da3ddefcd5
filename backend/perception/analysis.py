"""From landmarks to what the streamer is doing: pure functions and a small state machine, no models.

Per picture (:func:`read_face`, :func:`read_hand`, :func:`heart_hands`):

* **expression** (happy, surprised, sad, angry, neutral) from the face mesh's geometry, measured in units of
  the eye distance after undoing the head's roll: how far the mouth corners sit above the lip centre, how wide
  and open the mouth is, how open the eyes are, how high and how close together the brows are;
* **looking at the camera**: the head faces the camera (nose near the middle of the cheeks, both ways) and both
  irises sit near the middle of their eyes;
* **hand shapes**: thumbs-up (thumb out and up, the four fingers folded), open palm (four fingers out and up),
  heart hands (two hands, index tips together above thumb tips together).

Over time (:class:`Analyzer`): **wave** (an open palm raised and swung side to side: two turns of the
fingertips' sideways swing within ``window_s``, or a sweep of 0.6 hand lengths over three pictures), **nod** and **head shake** (two turns of the head's pitch or
yaw with enough swing), and the debounced per-picture signs (an expression or a hand shape counts once it held
for ``hold`` pictures in a row). :meth:`Analyzer.step` returns a :class:`Percept` per picture; its ``events``
name what just started ("wave", "thumbs_up", "heart", "nod", "head_shake", "smile", "sad", "surprised",
"angry", "present", "absent", "look").

Face mesh indices are MediaPipe's (``mediapipe/modules/face_geometry/data/canonical_face_model_uv_visualization``);
hand indices: 0 wrist, 1-4 thumb, 5-8 index, 9-12 middle, 13-16 ring, 17-20 pinky (MCP, PIP, DIP, TIP).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .landmarks import Landmarks

__all__ = [
    "EXPRESSIONS",
    "GESTURES",
    "Analyzer",
    "FaceReading",
    "HandReading",
    "Percept",
    "heart_hands",
    "read_face",
    "read_hand",
]

EXPRESSIONS = ("neutral", "happy", "surprised", "sad", "angry")
MIN_EYE_DISTANCE_PX = 40.0  # smaller faces are not read for expressions (they read as neutral)
GESTURES = ("wave", "thumbs_up", "heart", "nod", "head_shake")

# face mesh points
_EYE_R_OUT, _EYE_R_IN, _EYE_R_UP, _EYE_R_LO = 33, 133, 159, 145
_EYE_L_OUT, _EYE_L_IN, _EYE_L_UP, _EYE_L_LO = 263, 362, 386, 374
_MOUTH_R, _MOUTH_L, _LIP_UP, _LIP_LO = 61, 291, 13, 14
_BROW_R, _BROW_L = (70, 63, 105, 66, 107), (300, 293, 334, 296, 336)
_BROW_R_IN, _BROW_L_IN = 55, 285
_NOSE, _CHIN, _FOREHEAD, _CHEEK_R, _CHEEK_L = 1, 152, 10, 234, 454
_IRIS_R, _IRIS_L = 468, 473
# hand points
_WRIST, _THUMB, _INDEX, _MIDDLE, _RING, _PINKY = 0, (1, 2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12), (13, 14, 15, 16), \
    (17, 18, 19, 20)


# --------------------------------------------------------------------------------------------- face


@dataclass(frozen=True)
class FaceReading:
    """Geometry of one face, in eye distances (head roll undone), and what it reads as."""

    expression: str
    scores: dict[str, float]  # per expression, higher = more like it (0 = at its threshold)
    corner_lift: float  # mouth corners above the lip centre (+ smile, - frown)
    mouth_open: float  # inner lips apart
    mouth_width: float
    eye_open: float  # mean eyelid gap
    brow_raise: float  # brows above the upper eyelids
    brow_gap: float  # inner brow ends apart
    inner_lift: float  # inner brow ends above the outer ones (the worried brow of sadness)
    yaw: float  # nose offset from the cheeks' middle, in face widths (+ = towards the picture's right)
    pitch: float  # nose height between the eye line (0) and the chin (1)
    nose_y: float  # nose height in the picture, in eye distances (a nod moves it up and down)
    gaze: float  # how far the irises sit from the middle of their eyes (0 = centred, ~0.5 = at a corner)
    looking: bool
    center: tuple[float, float]  # nose tip in the picture, normalised
    size: float  # eye distance as a fraction of the picture width


def _pixels(points: np.ndarray, width: int, height: int) -> np.ndarray:
    return points[:, :2] * np.array([width, height], dtype=np.float32)


def read_face(lm: Landmarks) -> FaceReading | None:
    """Read the face in ``lm`` (None when there is none)."""
    if lm.face is None:
        return None
    p = _pixels(lm.face, lm.width, lm.height)
    eye_r, eye_l = p[_EYE_R_OUT], p[_EYE_L_OUT]
    iod = float(np.linalg.norm(eye_l - eye_r))
    if iod < 1e-6:
        return None
    # undo the roll: the eye line becomes the x axis, one unit = one eye distance; y grows downwards
    ux = (eye_l - eye_r) / iod
    uy = np.array([-ux[1], ux[0]], dtype=np.float32)
    origin = (eye_r + eye_l) / 2
    q = np.stack([(p - origin) @ ux, (p - origin) @ uy], axis=1) / iod  # (478, 2)

    lip_mid_y = (q[_LIP_UP, 1] + q[_LIP_LO, 1]) / 2
    corner_lift = float(lip_mid_y - (q[_MOUTH_R, 1] + q[_MOUTH_L, 1]) / 2)
    mouth_open = float(q[_LIP_LO, 1] - q[_LIP_UP, 1])
    mouth_width = float(q[_MOUTH_L, 0] - q[_MOUTH_R, 0])
    eye_open = float(((q[_EYE_R_LO, 1] - q[_EYE_R_UP, 1]) + (q[_EYE_L_LO, 1] - q[_EYE_L_UP, 1])) / 2)
    brow_r = q[list(_BROW_R), 1].mean()
    brow_l = q[list(_BROW_L), 1].mean()
    brow_raise = float(((q[_EYE_R_UP, 1] - brow_r) + (q[_EYE_L_UP, 1] - brow_l)) / 2)
    brow_gap = float(q[_BROW_L_IN, 0] - q[_BROW_R_IN, 0])
    # inner brow ends lifted above the outer ones: the "worried" brow of sadness
    inner_lift = float(((q[_BROW_R[0], 1] - q[_BROW_R[-1], 1]) + (q[_BROW_L[0], 1] - q[_BROW_L[-1], 1])) / 2)

    cheek_mid = (q[_CHEEK_R, 0] + q[_CHEEK_L, 0]) / 2
    face_w = max(1e-6, float(q[_CHEEK_L, 0] - q[_CHEEK_R, 0]))
    yaw = float((q[_NOSE, 0] - cheek_mid) / face_w)
    chin_y = max(1e-6, float(q[_CHIN, 1]))
    pitch = float(q[_NOSE, 1] / chin_y)
    gaze = _gaze(q)
    looking = abs(yaw) < 0.12 and 0.25 < pitch < 0.55 and gaze < 0.22

    # margins: > 0 means the sign is there; checked in this order (a crying squeeze before a closed-mouth
    # smile, an open "O" before a laugh)
    scores = {
        "surprised": min(mouth_open - 0.18, 0.62 - mouth_width, 0.03 - corner_lift),
        "sad": max(min(0.045 - eye_open, brow_raise - 0.24, 0.06 - mouth_open, 0.09 - corner_lift),  # crying
                   min(-0.03 - corner_lift, 0.10 - mouth_open)),  # corners down
        "happy": max(corner_lift - 0.035, min(corner_lift, mouth_width - 0.68)),
        "angry": min(0.17 - brow_raise, 0.05 - mouth_open, 0.04 - corner_lift),
    }
    expression = next((k for k, v in scores.items() if v > 0), "neutral")
    if iod < MIN_EYE_DISTANCE_PX:  # too small to read: the geometry is mostly noise (neutral faces read sad/angry)
        expression = "neutral"
    nose = lm.face[_NOSE]
    return FaceReading(expression, {k: round(v, 4) for k, v in scores.items()}, corner_lift, mouth_open,
                       mouth_width, eye_open, brow_raise, brow_gap, inner_lift, yaw, pitch, float(p[_NOSE, 1] / iod), gaze, looking,
                       (float(nose[0]), float(nose[1])), iod / lm.width)


def _gaze(q: np.ndarray) -> float:
    """Mean distance of each iris centre from the middle of its eye, in eye widths."""
    if q.shape[0] <= _IRIS_L:
        return 0.0
    out = []
    for outer, inner, up, lo, iris in ((_EYE_R_OUT, _EYE_R_IN, _EYE_R_UP, _EYE_R_LO, _IRIS_R),
                                       (_EYE_L_OUT, _EYE_L_IN, _EYE_L_UP, _EYE_L_LO, _IRIS_L)):
        width = max(1e-6, abs(q[inner, 0] - q[outer, 0]))
        mid = np.array([(q[inner, 0] + q[outer, 0]) / 2, (q[up, 1] + q[lo, 1]) / 2])
        out.append(float(np.linalg.norm((q[iris] - mid) / width)))
    return sum(out) / len(out)


# --------------------------------------------------------------------------------------------- hands


@dataclass(frozen=True)
class HandReading:
    shape: str  # "thumbs_up", "open_palm", "other"
    extended: tuple[bool, bool, bool, bool, bool]  # thumb, index, middle, ring, pinky
    up: bool  # fingers point up (the middle finger's tip above the wrist)
    center: tuple[float, float]  # palm centre, normalised
    size: float  # wrist -> middle knuckle, as a fraction of the picture width
    swing: float  # fingertips' sideways offset from the wrist, in hand sizes (a wave swings it)


def _px(hand: np.ndarray, lm: Landmarks) -> np.ndarray:
    return _pixels(hand, lm.width, lm.height)


def read_hand(lm: Landmarks, index: int) -> HandReading:
    p = _px(lm.hands[index], lm)
    wrist = p[_WRIST]
    size = max(1e-6, float(np.linalg.norm(p[_MIDDLE[0]] - wrist)))

    def out(finger: tuple[int, int, int, int]) -> bool:
        mcp, pip, _, tip = finger
        return bool(np.linalg.norm(p[tip] - wrist) > 1.15 * np.linalg.norm(p[pip] - wrist)
                    and np.linalg.norm(p[tip] - p[mcp]) > 0.55 * size)

    # the thumb is out when its tip is far from the index knuckle (folded thumbs lie against it)
    thumb_out = bool(np.linalg.norm(p[_THUMB[3]] - p[_INDEX[0]]) > 0.65 * size
                     and np.linalg.norm(p[_THUMB[3]] - wrist) > np.linalg.norm(p[_THUMB[1]] - wrist))
    fingers = tuple(out(f) for f in (_INDEX, _MIDDLE, _RING, _PINKY))
    extended = (thumb_out, fingers[0], fingers[1], fingers[2], fingers[3])
    up = bool(p[_MIDDLE[3], 1] < wrist[1] - 0.5 * size or (not any(fingers) and p[_MIDDLE[0], 1] < wrist[1]))
    knuckles = p[[_INDEX[0], _MIDDLE[0], _RING[0], _PINKY[0]]]
    thumb_dir = p[_THUMB[3]] - p[_THUMB[1]]
    thumb_up = thumb_out and thumb_dir[1] < -0.6 * float(np.linalg.norm(thumb_dir)) \
        and p[_THUMB[3], 1] < knuckles[:, 1].min() - 0.2 * size
    folded = sum(fingers) == 0 and all(
        np.linalg.norm(p[f[3]] - wrist) < 1.5 * size for f in (_INDEX, _MIDDLE, _RING, _PINKY))
    if thumb_up and folded:
        shape = "thumbs_up"
    elif sum(fingers) >= 4 and up:
        shape = "open_palm"
    else:
        shape = "other"
    centre = (p[_WRIST] + p[_INDEX[0]] + p[_PINKY[0]]) / 3
    tips = p[[_INDEX[3], _MIDDLE[3], _RING[3], _PINKY[3]]].mean(axis=0)
    swing = float((tips[0] - wrist[0]) / size)
    return HandReading(shape, extended, up, (float(centre[0] / lm.width), float(centre[1] / lm.height)),
                       size / lm.width, swing)


def heart_hands(lm: Landmarks) -> bool:
    """Two hands making a heart: index tips together on top, thumb tips together below them."""
    if len(lm.hands) < 2:
        return False
    a, b = _px(lm.hands[0], lm), _px(lm.hands[1], lm)
    size = max(1e-6, float(np.linalg.norm(a[_MIDDLE[0]] - a[_WRIST]) + np.linalg.norm(b[_MIDDLE[0]] - b[_WRIST])) / 2)
    index_gap = float(np.linalg.norm(a[_INDEX[3]] - b[_INDEX[3]]))
    thumb_gap = float(np.linalg.norm(a[_THUMB[3]] - b[_THUMB[3]]))
    wrist_gap = float(np.linalg.norm(a[_WRIST] - b[_WRIST]))
    tips_top = (a[_INDEX[3], 1] + b[_INDEX[3], 1]) / 2
    thumbs = (a[_THUMB[3], 1] + b[_THUMB[3], 1]) / 2
    return index_gap < 0.6 * size and thumb_gap < 0.8 * size and tips_top < thumbs and wrist_gap > 0.8 * size


# --------------------------------------------------------------------------------------------- over time


@dataclass(frozen=True)
class Percept:
    """What one picture showed, and which signs just started."""

    at: float  # seconds (the analyzer's clock)
    present: bool
    expression: str = "neutral"
    looking: bool = False
    hands: tuple[str, ...] = ()  # per hand: "thumbs_up", "open_palm", "other"
    heart: bool = False
    events: tuple[str, ...] = ()
    face: FaceReading | None = field(default=None, repr=False)


def _turns(values: list[float], min_swing: float) -> int:
    """Direction changes of a signal, counting only swings of at least ``min_swing`` (hysteresis)."""
    if len(values) < 3:
        return 0
    turns, direction, anchor = 0, 0, values[0]
    for v in values[1:]:
        if direction >= 0 and v < anchor - min_swing:
            turns += direction > 0
            direction, anchor = -1, v
        elif direction <= 0 and v > anchor + min_swing:
            turns += direction < 0
            direction, anchor = 1, v
        elif (direction > 0 and v > anchor) or (direction < 0 and v < anchor):
            anchor = v
    return turns


class Analyzer:
    """Turns a stream of :class:`Landmarks` into :class:`Percept` s with started events.

    Per-picture signs are debounced (they start after ``hold`` pictures in a row and may start again only
    after they stopped); motions (wave, nod, head shake) need two turns within ``window_s`` and then rest for
    ``window_s``.
    """

    def __init__(self, *, hold: int = 2, window_s: float = 2.0, absent_after: int = 3) -> None:
        self.hold, self.window_s, self.absent_after = hold, window_s, absent_after
        self._run: dict[str, int] = {}
        self._active: set[str] = set()
        self._yaw: deque[tuple[float, float]] = deque()
        self._pitch: deque[tuple[float, float]] = deque()
        self._swing: deque[tuple[float, float]] = deque()
        self._motion_quiet_until: dict[str, float] = {}
        self._missing = 0
        self._present = False

    def reset(self) -> None:
        self.__init__(hold=self.hold, window_s=self.window_s, absent_after=self.absent_after)  # type: ignore[misc]

    def _sign(self, name: str, on: bool, events: list[str]) -> None:
        if not on:
            self._run[name] = 0
            self._active.discard(name)
            return
        self._run[name] = self._run.get(name, 0) + 1
        if self._run[name] >= self.hold and name not in self._active:
            self._active.add(name)
            events.append(name)

    def _motion(self, name: str, trace: deque[tuple[float, float]], value: float | None, now: float,
                min_swing: float, events: list[str], sweep: float | None = None) -> None:
        """``name`` starts after two turns of ``value`` (swings of at least ``min_swing``) within the window,
        or, with ``sweep``, once it spans ``sweep`` over three pictures or more (a fast wave seen at a few
        pictures a second aliases its turns away, but not its sweep)."""
        while trace and trace[0][0] < now - self.window_s:
            trace.popleft()
        if value is None:
            trace.clear()
            return
        trace.append((now, value))
        if now < self._motion_quiet_until.get(name, -math.inf):
            return
        values = [v for _, v in trace]
        swung = sweep is not None and len(values) >= 3 and max(values) - min(values) >= sweep
        if _turns(values, min_swing) >= 2 or swung:
            events.append(name)
            trace.clear()
            self._motion_quiet_until[name] = now + self.window_s / 2

    def step(self, lm: Landmarks, now: float) -> Percept:
        events: list[str] = []
        face = read_face(lm)
        hands = [read_hand(lm, i) for i in range(len(lm.hands))]
        person = face is not None or bool(hands)
        self._missing = 0 if person else self._missing + 1
        if person and not self._present:
            self._present = True
            events.append("present")
        elif not person and self._present and self._missing >= self.absent_after:
            self._present = False
            events.append("absent")
            self._active.clear()
            self._run.clear()

        expression = face.expression if face is not None else "neutral"
        for name, expr in (("smile", "happy"), ("sad", "sad"), ("surprised", "surprised"), ("angry", "angry")):
            self._sign(name, face is not None and expression == expr, events)
        self._sign("look", face is not None and face.looking, events)
        self._sign("thumbs_up", any(h.shape == "thumbs_up" for h in hands), events)
        heart = heart_hands(lm)
        self._sign("heart", heart, events)

        # motions: a raised open palm swung sideways; the head's yaw (shake) and pitch (nod)
        palms = [h for h in hands if h.shape == "open_palm"]  # wave: fingertips swing about the wrist
        self._motion("wave", self._swing, palms[0].swing if palms else None, now, 0.35, events, sweep=0.6)
        head_still_sideways = face is not None and (not self._yaw or max(v for _, v in self._yaw)
                                                    - min(v for _, v in self._yaw) < 0.08)
        head_still_up_down = face is not None and (not self._pitch or max(v for _, v in self._pitch)
                                                   - min(v for _, v in self._pitch) < 0.15)
        self._motion("nod", self._pitch, face.nose_y if face is not None else None, now, 0.15,
                     events if head_still_sideways else [])
        self._motion("head_shake", self._yaw, face.yaw if face is not None else None, now, 0.06,
                     events if head_still_up_down else [])
        return Percept(now, self._present, expression, bool(face and face.looking),
                       tuple(h.shape for h in hands), heart, tuple(events), face)
