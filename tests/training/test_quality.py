"""Picture-quality measures of ``liveidol eval`` (backend.training.quality) and the contact sheet.

Real parts only: world renders of the shipped characters, the shipped probe
(backend/weights/probe.safetensors) for the Frechet distance, and frames damaged on purpose the way the
issue shows the model breaking (rainbow blotches, dark specks above the head, soft upscaled frames). Every
measure is checked both ways: clean world frames score ~0 (or 1.0 for ratios) and damaged frames score high.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.actions import EMOTIONS
from backend.pixelfont import draw_text
from backend.training.evaluate import emotion_templates, plan_commands, recognise_emotion, world_script
from backend.training.probe import PROBE_PATH, Probe
from backend.training.quality import (
    Calibration,
    FrameStats,
    _components,
    frechet_distance,
    palette_anchors,
    psnr,
    ssim,
)
from backend.training.sheet import SHEET_TIMES, compose_sheet
from backend.world import identity_tensor, load_character, render, simulate
from backend.world.pose import random_script

SIZE = (128, 72)  # small, and not the design size: the measures must not assume 256x144


def world_frames(character: str, n: int, seed: int, size: tuple[int, int] = SIZE) -> torch.Tensor:
    """(n, 4, H, W) premultiplied world renders of ``character`` in random poses (a random action script)."""
    script = random_script(200, torch.Generator().manual_seed(seed), switch_every=(15, 40))
    poses, _ = simulate(script, 200, seed=seed)
    idx = torch.linspace(10, 199, n).round().long()
    return render(identity_tensor([load_character(character).identity]), poses[idx][None], size)[0]


def blotched(frames: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rainbow blotches over the head and torso, as in shared/evidence/bow_angry_heart_steps1_and_4.png:
    discs of random saturated colours where the matte is."""
    g = torch.Generator().manual_seed(seed)
    out = frames.clone()
    n, _, h, w = out.shape
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for i in range(n):
        for _ in range(8):
            cy, cx = (0.15 + 0.5 * torch.rand((), generator=g)) * h, (0.42 + 0.16 * torch.rand((), generator=g)) * w
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < (h / 24) ** 2
            colour = torch.rand(3, generator=g)
            colour = colour / colour.max()  # saturated
            a = out[i, 3]
            out[i, :3] = torch.where(disc, colour[:, None, None] * a, out[i, :3])
    return out


@pytest.fixture(scope="module")
def aiko_cal() -> Calibration:
    return Calibration.build(load_character("aiko"), SIZE, frames=8)


@pytest.fixture(scope="module")
def aiko_world() -> torch.Tensor:
    return world_frames("aiko", 12, seed=3)


@pytest.fixture(scope="module")
def probe() -> Probe:
    return Probe.load(PROBE_PATH)


def test_palette_anchors_hold_the_character_colours():
    aiko = load_character("aiko")
    anchors = palette_anchors(aiko)
    assert anchors.shape[1] == 3 and anchors.min() >= 0 and anchors.max() <= 1
    assert (anchors - torch.tensor(aiko.identity.hair)).norm(dim=1).min() < 1e-6
    assert (anchors - torch.tensor(aiko.identity.hair) * 0.42).norm(dim=1).min() < 1e-6  # outline shade


def test_world_frames_are_clean(aiko_cal: Calibration, aiko_world: torch.Tensor):
    s = FrameStats.measure(aiko_world, aiko_cal)
    assert s.off_palette.mean() < 0.002
    assert s.speck.max() == 0.0 and s.islands.max() == 0
    assert s.blotch.mean() < 0.01
    assert (s.matte > 0.05).all() and (s.sharpness > 0).all()


def test_rainbow_blotches_score_high(aiko_cal: Calibration, aiko_world: torch.Tensor):
    clean = FrameStats.measure(aiko_world, aiko_cal)
    bad = FrameStats.measure(blotched(aiko_world), aiko_cal)
    assert bad.off_palette.mean() > 0.03 and bad.off_palette.mean() > 20 * max(clean.off_palette.mean(), 1e-4)
    assert bad.blotch.mean() > 0.01 and bad.blotch.mean() > 4 * clean.blotch.mean()
    # the same blotches as a soft decoder draws them (low-resolution, upscaled): smooth wrong-colour blobs
    h, w = aiko_world.shape[-2:]
    soft = F.interpolate(F.interpolate(blotched(aiko_world), size=(h // 2, w // 2), mode="area"), size=(h, w),
                         mode="bilinear", align_corners=False)
    clean_soft = F.interpolate(F.interpolate(aiko_world, size=(h // 2, w // 2), mode="area"), size=(h, w),
                               mode="bilinear", align_corners=False)
    assert FrameStats.measure(soft, aiko_cal).blotch.mean() > max(0.01, 4 * FrameStats.measure(clean_soft, aiko_cal).blotch.mean())


def test_off_palette_is_per_character():
    """Frames of another character are off aiko's palette (hana's blonde hair and green eyes are not aiko's)."""
    cal = Calibration.build(load_character("aiko"), SIZE, frames=8)
    hana = FrameStats.measure(world_frames("hana", 6, seed=4), cal)
    own = FrameStats.measure(world_frames("aiko", 6, seed=4), cal)
    assert hana.off_palette.mean() > 0.1 > 0.002 > own.off_palette.mean()


def test_specks_above_the_head_are_counted(aiko_cal: Calibration, aiko_world: torch.Tensor):
    x = aiko_world.clone()
    w = x.shape[-1]
    for dx in (-6, 0, 7):  # three small dark specks floating above the head
        y0, x0 = 1, w // 2 + dx
        x[:, :, y0:y0 + 2, x0:x0 + 2] = torch.tensor([0.05, 0.05, 0.08, 1.0])[:, None, None]
    s = FrameStats.measure(x, aiko_cal)
    assert (s.islands == 3).all() and (s.speck > 0).all()


def test_components_counts_8_connected_islands():
    m = np.zeros((8, 10), dtype=bool)
    m[1:4, 1:4] = True  # 9
    m[4, 4] = True  # touches the block diagonally: same island
    m[6, 8:10] = True  # 2
    m[0, 9] = True  # 1
    assert _components(m) == [10, 2, 1]
    assert _components(np.zeros((3, 3), dtype=bool)) == []


def test_sharpness_falls_for_upscaled_frames(aiko_cal: Calibration, aiko_world: torch.Tensor):
    h, w = aiko_world.shape[-2:]
    soft = F.interpolate(F.interpolate(aiko_world, size=(h // 3, w // 3), mode="area"), size=(h, w),
                         mode="bilinear", align_corners=False)
    sharp = FrameStats.measure(aiko_world, aiko_cal).sharpness.mean()
    assert FrameStats.measure(soft, aiko_cal).sharpness.mean() < 0.5 * sharp


def test_frechet_distance_world_vs_world_is_small_and_vs_noise_large(probe: Probe, aiko_world: torch.Tensor):
    a = probe.embed(aiko_world)
    b = probe.embed(world_frames("aiko", 12, seed=8))
    noise = torch.rand(12, 4, SIZE[1], SIZE[0], generator=torch.Generator().manual_seed(0))
    noise = torch.cat([noise[:, :3] * noise[:, 3:], noise[:, 3:]], 1)
    assert a.shape == (12, probe.head.in_features)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    same = frechet_distance(a, b)
    far = frechet_distance(a, probe.embed(noise))
    broken = frechet_distance(b, probe.embed(blotched(aiko_world)))  # the same poses as a, blotched
    assert far > 5 * same and broken > frechet_distance(b, a) == pytest.approx(same)
    with pytest.raises(ValueError, match="frechet_distance"):
        frechet_distance(a[:1], b)


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    y = 2.0 * torch.randn(20000, 3, generator=g, dtype=torch.float64) + 1.0
    # N(0, I) vs N(1, 4I): |mu|^2 = 3, tr(I + 4I - 2 * 2I) = 3
    assert frechet_distance(x, y) == pytest.approx(6.0, rel=0.05)


def test_psnr_and_ssim(aiko_world: torch.Tensor):
    assert psnr(aiko_world, aiko_world) == float("inf")
    assert ssim(aiko_world, aiko_world) == pytest.approx(1.0, abs=1e-4)
    noisy = (aiko_world + 0.1 * torch.randn(aiko_world.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert 15 < psnr(noisy, aiko_world) < 25
    assert ssim(noisy, aiko_world) < 0.8


def test_emotions_are_recognised_on_world_poses_and_a_wrong_label_is_not():
    plan = plan_commands(40, frames_per_chunk=8, seed=101)
    poses, _ = simulate(world_script(plan), plan[-1].start + 25, seed=101)
    templates = emotion_templates(plan, seed=101)
    got = [recognise_emotion(poses[c.start:c.start + c.window], t) for c, t in zip(plan, templates)]
    per = {e: np.mean([g == e for g, c in zip(got, plan) if c.emotion == e]) for e in EMOTIONS
           if any(c.emotion == e for c in plan)}
    assert len(per) >= 3 and min(per.values()) >= 0.9
    # a face with the emotion offsets removed (neutral) is not read as the commanded non-neutral emotion
    neutral_plan = [c.__class__(c.index, c.start, c.action, "neutral", c.interrupts, c.window) for c in plan]
    flat, _ = simulate(world_script(neutral_plan), plan[-1].start + 25, seed=101)
    wrong = [recognise_emotion(flat[c.start:c.start + c.window], t) == c.emotion
             for c, t in zip(plan, templates) if c.emotion != "neutral"]
    assert wrong and np.mean(wrong) <= 0.2


# -- the contact sheet --------------------------------------------------------------------------


def test_sheet_layout_has_every_cell_filled():
    frames = world_frames("aiko", 2 * len(SHEET_TIMES), seed=5, size=(96, 54))
    rgba = (torch.cat([frames[:, :3] / frames[:, 3:].clamp(min=1e-3), frames[:, 3:]], 1).clamp(0, 1)
            .permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    k = len(SHEET_TIMES)
    rows = {"wave": {1: list(rgba[:k]), 4: list(rgba[k:])}, "bow": {1: list(rgba[k:]), 4: list(rgba[:k])}}
    sheet = compose_sheet(rows, cell_height=40, title="test")
    assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
    # geometry as compose_sheet lays it out: 2 rows of 40 px cells, 2 blocks of len(SHEET_TIMES) columns
    head, pad = 7 * 2 * 2 + 32, 4
    assert sheet.shape[0] == head + 2 * (40 + pad) + 4
    label_w = 6 * 2 * 4 + 16
    cw = (sheet.shape[1] - label_w) // 2 // k - pad - 1  # a lower bound of the cell width
    for r in range(2):
        for b in range(2):
            for j in range(k):
                y = head + r * (40 + pad)
                x = label_w + b * ((sheet.shape[1] - label_w) // 2) + j * (cw + pad)
                cell = sheet[y:y + 40, x:x + cw].astype(int)
                assert cell.std() > 10  # an idol over the checkerboard, not an empty cell
                # some pixels are neither checker grey: the idol's colours
                assert (np.abs(cell - cell.mean(-1, keepdims=True)).max(-1) > 20).mean() > 0.02


def test_draw_text_inks_pixels():
    img = np.zeros((20, 80, 3), np.uint8)
    end = draw_text(img, "bow 4", 1, 1, scale=2)
    assert end == 1 + 5 * 12 and img.any() and not img[:, end:].any()
