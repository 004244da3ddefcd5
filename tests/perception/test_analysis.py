"""Real pictures of real people through the real MediaPipe models and the analysis (provenance:
tests/fixtures/perception/README.md). Expressions and hand shapes are read from single photos; waves, nods,
head shakes and the start of a smile from clips fed picture by picture with MediaPipe tracking, as live."""

from __future__ import annotations

import pytest

from backend.perception.analysis import Analyzer, heart_hands, read_face, read_hand

from .conftest import clip, need, picture

EXPRESSIONS = {
    "faces/surprised_1.jpg": "surprised",
    "faces/happy_1.jpg": "happy",
    "faces/happy_2.jpg": "happy",
    "faces/angry_1.jpg": "angry",
    **{f"clips/neutral_then_smile/{i:03d}.jpg": "neutral" for i in range(0, 20, 4)},
    **{f"clips/neutral_then_smile/{i:03d}.jpg": "happy" for i in range(20, 72, 4)},
    **{f"clips/sad_then_happy/{i:03d}.jpg": "sad" for i in (0, 12, 24, 36, 48)},
    **{f"clips/sad_then_happy/{i:03d}.jpg": "happy" for i in (408, 420, 432, 444, 456, 468)},
}
LOOKING = {
    "clips/neutral_then_smile/000.jpg": True,
    "clips/neutral_then_smile/040.jpg": True,
    "faces/happy_1.jpg": True,
    "hands/thumbs_up_3.jpg": False,  # smiling at the camera with her head turned away
    "clips/sad_then_happy/180.jpg": False,  # eyes up, head turned
}
THUMBS_UP = ["hands/thumbs_up_1.jpg", "hands/thumbs_up_2.jpg", "hands/thumbs_up_3.jpg"]
HEARTS = [f"hands/heart_{i}.jpg" for i in range(1, 6)]
OTHER_HANDS = ["hands/other_take_photo.jpg", "hands/other_prayer.jpg", "hands/other_thumbs_down_2.jpg",
               "hands/other_palm_still.jpg", "hands/other_stop.jpg",
               "hands/other_peace.jpg", "hands/other_victory.jpg", "hands/other_pointing_up.jpg"]


@pytest.mark.parametrize(("name", "expected"), EXPRESSIONS.items(), ids=list(EXPRESSIONS))
def test_expression_of_real_faces(still_marker, name, expected):
    face = read_face(still_marker.step(picture(name)))
    assert face is not None, f"{name}: no face found"
    assert face.expression == expected, f"{name}: read {face.expression}, scores {face.scores}"


@pytest.mark.parametrize(("name", "expected"), LOOKING.items(), ids=list(LOOKING))
def test_looking_at_the_camera(still_marker, name, expected):
    face = read_face(still_marker.step(picture(name)))
    assert face is not None
    assert face.looking is expected, f"{name}: yaw={face.yaw:.3f} pitch={face.pitch:.3f} gaze={face.gaze:.3f}"


@pytest.mark.parametrize("name", THUMBS_UP)
def test_thumbs_up(still_marker, name):
    lm = still_marker.step(picture(name))
    shapes = [read_hand(lm, i).shape for i in range(len(lm.hands))]
    assert "thumbs_up" in shapes, f"{name}: hands read as {shapes}"
    assert not heart_hands(lm)


@pytest.mark.parametrize("name", HEARTS)
def test_heart_hands(still_marker, name):
    lm = still_marker.step(picture(name))
    assert len(lm.hands) == 2, f"{name}: {len(lm.hands)} hands found"
    assert heart_hands(lm)


@pytest.mark.parametrize("name", OTHER_HANDS)
def test_other_hand_shapes_are_neither(still_marker, name):
    lm = still_marker.step(picture(name))
    assert lm.hands, f"{name}: no hand found"
    shapes = [read_hand(lm, i).shape for i in range(len(lm.hands))]
    assert "thumbs_up" not in shapes, f"{name}: read a thumbs-up"
    assert not heart_hands(lm), f"{name}: read heart hands"


def events_of(names: list[str], fps: float = 6.0) -> list[tuple[str, tuple[str, ...]]]:
    """Feed clips in a row through a tracking Landmarker and an Analyzer, as the service does."""
    need("mediapipe")
    from backend.perception.landmarks import Landmarker

    analyzer, out, k = Analyzer(), [], 0
    with Landmarker(video=True) as marker:
        for name in names:
            for file, rgb in clip(name):
                percept = analyzer.step(marker.step(rgb), k / fps)
                out.append((f"{name}/{file}", percept.events))
                k += 1
    return out


def started(events: list[tuple[str, tuple[str, ...]]], sign: str) -> list[str]:
    return [where for where, evs in events if sign in evs]


@pytest.mark.parametrize(("name", "sign"), [("wave", "wave"), ("nod", "nod"), ("head_shake", "head_shake")])
def test_motions_are_seen_and_only_they(name, sign):
    events = events_of([name])
    assert started(events, sign), f"{name}: no {sign} in {events}"
    for other in {"wave", "nod", "head_shake"} - {sign}:
        assert not started(events, other), f"{name}: also read {other}: {events}"


def test_still_faces_do_not_nod_shake_or_wave():
    events = events_of(["neutral_then_smile"])
    for sign in ("wave", "nod", "head_shake", "sad", "angry", "surprised"):
        assert not started(events, sign), f"read {sign}: {events}"


def test_smile_starts_once_when_the_streamer_smiles_then_absent():
    events = events_of(["neutral_then_smile", "absent"])
    assert events[0][1][:1] == ("present",)
    smiles = started(events, "smile")
    assert len(smiles) == 1 and smiles[0] >= "neutral_then_smile/020.jpg", events
    assert started(events, "absent") == ["absent/160.jpg"], events  # the third picture without anyone


def test_sad_then_happy_clip():
    events = events_of(["sad_then_happy"])
    sad, smile = started(events, "sad"), started(events, "smile")
    assert sad and smile and sad[0] < smile[0], events


def test_small_faces_are_not_read_for_expressions(still_marker):
    """HaGRID's room scenes: faces under 40 px between the eyes read neutral whatever the noise says."""
    from backend.perception.analysis import MIN_EYE_DISTANCE_PX

    for name in ("hands/heart_1.jpg", "hands/heart_2.jpg", "hands/other_prayer.jpg"):
        lm = still_marker.step(picture(name))
        face = read_face(lm)
        assert face is not None and face.size * lm.width < MIN_EYE_DISTANCE_PX
        assert face.expression == "neutral", name
