"""The renderer: determinism, the matte, batch consistency and that poses show up in pixels."""

from __future__ import annotations

import pytest
import torch

from backend.world.character import IDENTITY_DIM, Identity, identity_tensor
from backend.world.pose import EMOTION_FACES, POSE_INDEX, REST_POSE, simulate
from backend.world.render import render

SIZE = (128, 72)  # half size keeps the tests fast; geometry scales with the height


def rest(n: int = 1, **values: float) -> torch.Tensor:
    p = torch.from_numpy(REST_POSE.copy()).repeat(n, 1)
    for k, v in values.items():
        p[:, POSE_INDEX[k]] = v
    return p


def draw(poses: torch.Tensor, ident: Identity | None = None, size=SIZE) -> torch.Tensor:
    return render(identity_tensor([ident or Identity()]), poses[None], size=size)[0]


def px(x: float, y: float, size=SIZE) -> tuple[int, int]:
    """Design coordinates (256x144) -> (row, col) at ``size``."""
    s = size[1] / 144
    return int(y * s), int(x * s + (size[0] / s - 256) / 2 * s)


def test_shape_range_and_determinism():
    poses, _ = simulate([(0, "wave", "happy")], 6, seed=0)
    a = draw(poses)
    b = draw(poses)
    assert a.shape == (6, 4, SIZE[1], SIZE[0]) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_matte_is_zero_on_background_and_one_on_the_body():
    f = draw(rest(1))[0]
    alpha, rgb = f[3], f[:3]
    for x, y in ((5, 5), (250, 5), (5, 140), (250, 140), (60, 70), (200, 70)):
        r, c = px(x, y)
        assert alpha[r, c] == 0 and (rgb[:, r, c] == 0).all(), (x, y)
    for x, y in ((128, 120), (128, 55), (128, 95)):  # belly, face, chest
        r, c = px(x, y)
        assert alpha[r, c] == 1, (x, y)
    assert ((alpha > 0) & (alpha < 1)).float().mean() < 0.05  # only a thin anti-aliased edge
    assert (rgb <= alpha + 1e-6).all()                         # premultiplied


def test_batch_and_time_vectorisation_match_single_renders():
    """Rendering (B, T) in one call gives the same pixels as one frame at a time (ROIs span the batch)."""
    gen = torch.Generator().manual_seed(0)
    from backend.world.character import sample_identity

    idents = [Identity(), sample_identity(gen)]
    p1, _ = simulate([(0, "racket", "neutral")], 30, seed=1)
    p2, _ = simulate([(0, "bow", "sad")], 30, seed=2)
    poses = torch.stack([p1[::10], p2[::10]])  # (2, 3, P)
    together = render(identity_tensor(idents), poses, size=SIZE)
    for b in range(2):
        for t in range(3):
            single = render(identity_tensor([idents[b]]), poses[b:b + 1, t:t + 1], size=SIZE)[0, 0]
            assert torch.allclose(together[b, t], single, atol=1e-5), (b, t)


def test_identity_changes_pixels_and_styles_change_the_silhouette():
    poses = rest(1)
    base = draw(poses, Identity())
    recoloured = draw(poses, Identity(hair=(0.1, 0.1, 0.1)))
    assert not torch.equal(base[:, :3], recoloured[:, :3])
    assert torch.equal(base[:, 3], recoloured[:, 3])           # colour only: same matte
    long_hair = draw(poses, Identity(hair_style="long"))
    assert (base[:, 3] - long_hair[:, 3]).abs().sum() > 20      # a different silhouette


def test_blink_closes_the_eyes_in_pixels():
    open_ = draw(rest(1, eye_open_l=1.0, eye_open_r=1.0), size=(256, 144))[0]
    shut = draw(rest(1, eye_open_l=0.0, eye_open_r=0.0), size=(256, 144))[0]
    eyes = (slice(46, 62), slice(110, 146))
    white = lambda f: ((f[:3][(slice(None), *eyes)] > 0.95).all(0)).sum()  # noqa: E731
    assert white(open_) > 20 and white(shut) < 3


def test_racket_and_raised_arm_show_up_above_the_head():
    down = draw(rest(1), size=(256, 144))[0]
    up = draw(rest(1, r_shoulder=2.3, r_elbow=0.45, racket=1.0), size=(256, 144))[0]
    region = (slice(0, 24), slice(40, 96))  # above-left of the head, where the racket goes
    assert down[3][region].sum() == 0
    assert up[3][region].sum() > 50


@pytest.mark.parametrize("size", [(256, 144), (64, 36)])
def test_sizes_scale_the_same_drawing(size):
    f = draw(rest(1), size=size)[0]
    assert f.shape == (4, size[1], size[0])
    assert 0.15 < float(f[3].mean()) < 0.35  # the idol covers the same share of the frame


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="identity"):
        render(torch.zeros(1, IDENTITY_DIM + 1), rest(1)[None])
    with pytest.raises(ValueError, match="poses"):
        render(identity_tensor([Identity()]), rest(1))


def test_reference_frame_is_the_rest_pose():
    from backend.world.render import reference_frame

    ident = identity_tensor([Identity(), Identity(hair_style="bob")])
    ref = reference_frame(ident, size=SIZE)
    assert ref.shape == (2, 4, SIZE[1], SIZE[0])
    assert torch.equal(ref[0], draw(rest(1))[0])


def test_character_reference_renders_or_loads_the_custom_avatar(tmp_path):
    import numpy as np

    from backend.config import ConfigError
    from backend.world.character import load_character
    from backend.world.png import write_png
    from backend.world.render import character_reference, reference_frame

    aiko = load_character("aiko")
    ref = character_reference(aiko, SIZE)
    assert torch.equal(ref, reference_frame(identity_tensor([aiko.identity]), SIZE)[0])
    img = np.zeros((36, 64, 4), dtype=np.uint8)
    img[:, 32:] = (255, 0, 0, 255)  # right half opaque red, left half transparent
    write_png(tmp_path / "me.png", img)
    (tmp_path / "me.toml").write_text('reference_image = "me.png"\n')
    custom = character_reference(load_character(tmp_path / "me.toml"), SIZE)
    assert custom.shape == (4, SIZE[1], SIZE[0])
    assert custom[3, :, :60].max() == 0 and custom[3, :, 68:].min() == 1
    assert (custom[0, :, 68:] == 1).all() and (custom[:3, :, :60] == 0).all()
    (tmp_path / "gone.toml").write_text('reference_image = "gone.png"\n')
    with pytest.raises(ConfigError, match="reference_image"):
        character_reference(load_character(tmp_path / "gone.toml"), SIZE)


def _emotion_face(emotion: str) -> torch.Tensor:
    """The default idol at rest with ``emotion``'s face offsets, 256x144 (the model's own frame size)."""
    p = rest(1)
    for k, v in EMOTION_FACES[emotion].items():
        p[:, POSE_INDEX[k]] += v
    return draw(p, size=(256, 144))[0]


def test_every_emotion_draws_its_own_bold_mark_and_neutral_none():
    """Emotions must read at a glance in a 256x144 frame (the model learns what it can see): anger flushes the face
    and pops a red vein mark, sadness hangs blue gloom lines and tears, surprise shows white around small irises,
    joy adds yellow sparkles beside the head. Counted in the head's box against the neutral face."""
    head = (slice(18, 80), slice(92, 164))

    def count(f: torch.Tensor, test) -> int:
        r, g, b = (f[i][head] for i in range(3))
        return int(test(r, g, b).sum())

    vein = lambda r, g, b: (r > 0.7) & (g < 0.25) & (b < 0.3)  # noqa: E731
    blue = lambda r, g, b: (b - r) > 0.15  # noqa: E731
    white = lambda r, g, b: (r > 0.95) & (g > 0.95) & (b > 0.95)  # noqa: E731
    gold = lambda r, g, b: (r > 0.85) & (g > 0.7) & (b < 0.45)  # noqa: E731
    flush = lambda f: float((f[0][head] - f[1][head]).mean())  # noqa: E731
    neutral = _emotion_face("neutral")
    faces = {e: _emotion_face(e) for e in ("angry", "sad", "surprised", "happy")}
    assert count(faces["angry"], vein) > count(neutral, vein) + 25
    assert flush(faces["angry"]) > flush(neutral) + 0.04
    assert count(faces["sad"], blue) > count(neutral, blue) + 100
    assert count(faces["surprised"], white) > 3 * count(neutral, white)
    assert count(faces["happy"], gold) > count(neutral, gold) + 15
    for e, f in faces.items():  # each mark is its own emotion's
        if e != "angry":
            assert count(f, vein) <= count(neutral, vein) + 5, e
        if e != "happy":
            assert count(f, gold) <= count(neutral, gold) + 3, e
