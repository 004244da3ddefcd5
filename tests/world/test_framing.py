"""The world's framings: 'half' (head to waist, the design frame the shipped model was trained on) and 'whole'
(hair to shoes), the lower body the whole framing shows, and the mapping between the two."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from backend.world.character import identity_tensor, load_character
from backend.world.pose import HEAD_CENTRE, POSE_INDEX, simulate
from backend.world.render import FRAMINGS, design_frame, reframe, render

render_module = importlib.import_module("backend.world.render")  # the package exports the function as `render`


def _poses(stride: int = 4) -> torch.Tensor:
    poses, _ = simulate([(0, "idle", "neutral"), (10, "bow", "happy"), (40, "wave", "angry"), (70, "racket", "sad")],
                        96, seed=3)
    return torch.as_tensor(poses)[None, ::stride].float().contiguous()


def _ident(name: str) -> torch.Tensor:
    return identity_tensor([load_character(name).identity])


@pytest.mark.parametrize("size", [(256, 144), (960, 540)])
def test_the_half_framing_shows_nothing_of_the_lower_body(monkeypatch, size) -> None:
    """The legs, socks, shoes and skirt lie below the half framing's bottom edge even at full sway and bow: the
    half-framed frames are the same with and without them (what v8 was trained on stays as it was)."""
    poses = _poses(4 if size[0] < 500 else 24)
    extreme = poses[:, :4].clone()
    extreme[0, :, POSE_INDEX["body_sway"]] = torch.tensor([-0.2, 0.2, -0.2, 0.2])
    extreme[0, :, POSE_INDEX["body_bow"]] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    poses = torch.cat([poses, extreme], 1)
    for name in ("aiko", "rin", "hana"):  # sailor, dress, hoodie
        with_legs = render(_ident(name), poses, size, "half")
        with monkeypatch.context() as m:
            m.setattr(render_module, "_lower_body", lambda *a, **k: None)
            without = render(_ident(name), poses, size, "half")
        assert torch.equal(with_legs, without), name
        if size[0] > 256:
            continue
        whole = render(_ident(name), poses, size, "whole")
        with monkeypatch.context() as m:
            m.setattr(render_module, "_lower_body", lambda *a, **k: None)
            assert not torch.equal(whole, render(_ident(name), poses, size, "whole"))  # the whole one shows them


def test_the_whole_framing_shows_the_idol_from_hair_to_shoes_and_cuts_nothing() -> None:
    size = (480, 270)
    for name in ("aiko", "rin", "hana"):
        video = render(_ident(name), _poses(), size, "whole")[0]  # (T, 4, H, W)
        alpha = video[:, 3]
        assert float(alpha[:, :2].max()) < 0.02 and float(alpha[:, -2:].max()) < 0.02, name  # nothing at the edges
        assert float(alpha[:, :, :2].max()) < 0.02 and float(alpha[:, :, -2:].max()) < 0.02, name
        scale, ox, oy = design_frame(size, "whole")
        for side in (-1.0, 1.0):  # both shoes, and a shin above each
            for x, y in ((128.0 + side * 10.5, 206.0), (128.0 + side * 8.8, 195.0)):
                px, py = int((x + ox) * scale), int((y - oy) * scale)
                assert float(alpha[:, py, px].min()) > 0.9, (name, x, y)
        hx, hy = int((HEAD_CENTRE[0] + ox) * scale), int((HEAD_CENTRE[1] - oy) * scale)
        assert float(alpha[0, hy, hx]) > 0.99  # the head where design_frame says
        rows = torch.nonzero(alpha.amax((0, 2)) > 0.5).flatten()
        top, bottom = int(rows.min()), int(rows.max())
        assert (bottom - top) / size[1] > 0.85, name  # she fills the frame's height, not a corner of it


def test_design_frame_maps_each_framings_window_onto_the_frame() -> None:
    for framing, (top, height) in FRAMINGS.items():
        for size in ((256, 144), (960, 540), (512, 288)):
            scale, ox, oy = design_frame(size, framing)
            assert math.isclose(scale * height, size[1]) and oy == top
            assert math.isclose((128.0 + ox) * scale, size[0] / 2)  # the design centre line at the frame's centre
            assert math.isclose((top + height - oy) * scale, size[1])
    with pytest.raises(ValueError, match="framing = 'full'"):
        design_frame((256, 144), "full")


@pytest.mark.parametrize("size", [(256, 144), (960, 540)])
def test_reframe_shows_a_whole_framed_frame_as_the_half_framing_does(size) -> None:
    """What reads the half framing (the probe, the face reader) gets a whole-framed frame's upper body where a
    half-framed render has it: close, up to the resampling of fewer pixels."""
    poses = _poses(4 if size[0] < 500 else 12)
    for name in ("aiko", "rin", "hana"):
        whole = render(_ident(name), poses, size, "whole")[0]
        half = render(_ident(name), poses, size, "half")[0]
        seen = reframe(whole, "whole", "half")
        assert seen.shape == half.shape
        err = float(((seen - half) ** 2).mean())
        assert -10 * math.log10(err) > (29.0 if size[0] == 256 else 34.0), name
        assert torch.equal(reframe(half, "half", "half"), half)
