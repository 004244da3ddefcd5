"""Where the DiT's loss and the detail decoder's face term look: the head and the hands of the world's own pose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.training.data import FACE_WEIGHT, face_boxes, region_weights
from backend.world.pose import POSE_INDEX, REST_POSE, simulate, skeleton


def _rest(t: int = 4) -> torch.Tensor:
    return torch.from_numpy(np.tile(REST_POSE, (1, t, 1)))


def test_region_weights_peak_on_the_face_and_follow_the_head_down_in_a_bow() -> None:
    w = region_weights(_rest(), (256, 144), 8, 4)
    assert w.shape == (1, 1, 18, 32)
    assert float(w.min()) == pytest.approx(1.0, abs=1e-3)  # far from head and hands: the plain loss
    peak = int(w[0, 0].argmax())
    row, col = divmod(peak, 32)
    head = skeleton(_rest()[0, 0]).head  # design pixels = native pixels at 256x144
    assert abs((col + 0.5) * 8 - float(head[0])) <= 8 and abs((row + 0.5) * 8 - float(head[1])) <= 8
    assert float(w.max()) > FACE_WEIGHT  # 1 + the face's bump (plus a little of the hands')
    bowed = _rest()
    bowed[..., POSE_INDEX["body_bow"]] = 1.0
    row_bowed = divmod(int(region_weights(bowed, (256, 144), 8, 4)[0, 0].argmax()), 32)[0]
    assert row_bowed > row  # the weight goes where the head goes


def test_region_weights_weigh_the_hands_and_scale_with_the_frame() -> None:
    poses, _ = simulate([(0, "wave", "neutral")], 8, seed=1)
    small = region_weights(poses[None], (256, 144), 8, 4)
    big = region_weights(poses[None], (512, 288), 16, 4)  # the same cells at twice the size
    assert torch.allclose(small, big, atol=1e-4)
    hand = skeleton(poses[0]).r_hand  # the waving hand, up beside the head
    col, row = int(float(hand[0]) // 8), int(float(hand[1]) // 8)
    assert float(small[0, 0, row, col]) > 1.5
    with pytest.raises(ValueError, match="multiple of 4"):
        region_weights(poses[None, :6], (256, 144), 8, 4)


def test_face_boxes_hold_the_head_and_stay_inside_the_frame() -> None:
    poses = _rest(8)
    (x0, y0, x1, y1), = face_boxes(poses, (960, 540), 26.0)
    assert x1 - x0 == y1 - y0 == round(52 * 540 / 144)
    head = skeleton(poses[0, 0]).head * 540 / 144  # at 960x540 the 256-wide design frame is exactly 3.75x
    assert x0 < float(head[0]) < x1 and y0 < float(head[1]) < y1
    (bx0, by0, bx1, by1), = face_boxes(poses, (960, 540), 200.0)  # larger than the frame's height: clamped
    assert (by0, by1) == (0, 540) and 0 <= bx0 < bx1 <= 960


def test_the_whole_framing_moves_the_weights_and_boxes_with_the_idol() -> None:
    """Framed whole, the idol is drawn smaller and lower in the frame: the face weight peaks on the head's pixel
    there, and the face box holds the head where the whole-framed render has it."""
    from backend.world.render import design_frame

    scale, ox, oy = design_frame((256, 144), "whole")
    head = skeleton(_rest()[0, 0]).head
    hx, hy = (float(head[0]) + ox) * scale, (float(head[1]) - oy) * scale  # native pixels
    w = region_weights(_rest(), (256, 144), 4, 4, "whole")
    row, col = divmod(int(w[0, 0].argmax()), 64)
    assert abs((col + 0.5) * 4 - hx) <= 4 and abs((row + 0.5) * 4 - hy) <= 4
    assert not torch.allclose(w, region_weights(_rest(), (256, 144), 4, 4))
    (x0, y0, x1, y1), = face_boxes(_rest(8), (960, 540), 26.0, "whole")
    assert x1 - x0 == round(52 * 540 / 214)  # the box's design side at the whole framing's scale
    assert x0 < hx * 3.75 < x1 and y0 < hy * 3.75 < y1
