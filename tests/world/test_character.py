"""Character files, identities, backgrounds and the PNG codec they use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.config import ConfigError
from backend.world.character import (
    HAIR_STYLES,
    IDENTITY_DIM,
    CharacterConfig,
    Identity,
    apply_background,
    identity_tensor,
    load_background,
    load_character,
    parse_colour,
    sample_identity,
)
from backend.world.png import PngError, read_png, write_png


def test_shipped_characters_load_and_differ():
    chars = [load_character(n) for n in ("aiko", "rin", "hana")]
    assert [c.name for c in chars] == ["aiko", "rin", "hana"]
    idents = [c.identity for c in chars]
    assert len({(i.hair_style, i.eye_shape, i.outfit) for i in idents}) == 3
    assert len({i.hair for i in idents}) == 3
    assert chars[0].background == "transparent" and chars[1].background == "color"
    t = identity_tensor(idents)
    assert t.shape == (3, IDENTITY_DIM)
    assert torch.allclose(t[:, 18:].sum(-1), torch.full((3,), 3.0))  # three one-hots


def test_load_by_path_and_relative_paths(tmp_path):
    f = tmp_path / "mia.toml"
    f.write_text('name = "mia"\nhair = "#102030"\nvoice = "voices/mia.onnx"\n')
    c = load_character(f)
    assert c.identity.hair == pytest.approx((16 / 255, 32 / 255, 48 / 255))
    assert c.resolve(c.voice) == tmp_path / "voices" / "mia.onnx"
    assert c.resolve("") is None


def test_colours_may_be_rgb_lists(tmp_path):
    f = tmp_path / "rgb.toml"
    f.write_text("hair = [0.1, 0.2, 0.3]\nbackground_color = [0, 0, 1]\n")
    c = load_character(f)
    assert c.identity.hair == (0.1, 0.2, 0.3) and c.background_rgb == (0.0, 0.0, 1.0)
    f.write_text("hair = [0.1, 1.5, 0.3]\n")
    with pytest.raises(ConfigError) as err:
        load_character(f)
    assert str(f) in str(err.value) and "hair" in str(err.value)


def test_unknown_key_names_file_and_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('name = "bad"\nhair_colour = "#ffffff"\n')
    with pytest.raises(ConfigError) as err:
        load_character(f)
    assert str(f) in str(err.value) and "hair_colour" in str(err.value) and "unknown key" in str(err.value)


@pytest.mark.parametrize(("line", "key"), [('hair = "pink"', "hair"), ('skin = "#12345"', "skin"),
                                           ("eyes = 3", "eyes"), ('background_color = "#gg0000"', "background_color"),
                                           ('hair_style = "afro"', "hair_style"), ('background = "video"', "background"),
                                           ('framing = "full"', "framing")])
def test_bad_values_name_file_and_key(tmp_path, line, key):
    f = tmp_path / "bad.toml"
    f.write_text(f'name = "bad"\n{line}\n')
    with pytest.raises(ConfigError) as err:
        load_character(f)
    assert str(f) in str(err.value) and key in str(err.value)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="aiko"):
        load_character("nobody")


def test_image_background_needs_a_path(tmp_path):
    f = tmp_path / "img.toml"
    f.write_text('background = "image"\n')
    with pytest.raises(ConfigError, match="background_image"):
        load_character(f)


def test_parse_colour_and_identity_validation():
    assert parse_colour("#ff0000") == (1.0, 0.0, 0.0)
    assert parse_colour([0.1, 0.2, 0.3]) == (0.1, 0.2, 0.3)
    with pytest.raises(ValueError, match="hair"):
        Identity(hair=(1.5, 0.0, 0.0))
    with pytest.raises(ValueError, match="outfit"):
        Identity(outfit="armour")


def test_sample_identity_is_deterministic_and_diverse():
    a = [sample_identity(torch.Generator().manual_seed(s)) for s in range(40)]
    b = [sample_identity(torch.Generator().manual_seed(s)) for s in range(40)]
    assert a == b
    assert {i.hair_style for i in a} == set(HAIR_STYLES)
    assert len({i.hair for i in a}) == 40
    t = identity_tensor(a)
    assert t.min() >= 0 and t.max() <= 1


def frames_with_hole() -> np.ndarray:
    f = np.zeros((2, 4, 6, 4), dtype=np.uint8)
    f[:, :, 3:] = (200, 100, 50, 255)  # right half opaque idol, left half transparent
    return f


def test_transparent_background_keeps_the_matte():
    c = CharacterConfig(background="transparent")
    f = frames_with_hole()
    assert apply_background(f, c) is f


def test_colour_background_fills_behind(tmp_path):
    c = CharacterConfig(background="color", background_color="#0a141e")
    out = apply_background(frames_with_hole(), c)
    assert (out[..., 3] == 255).all()
    assert (out[:, :, :3, :3] == (10, 20, 30)).all()
    assert (out[:, :, 3:, :3] == (200, 100, 50)).all()


def test_image_background_from_png(tmp_path):
    img = np.zeros((8, 12, 3), dtype=np.uint8)
    img[..., 1] = 180
    write_png(tmp_path / "bg.png", img)
    (tmp_path / "c.toml").write_text('background = "image"\nbackground_image = "bg.png"\n')
    c = load_character(tmp_path / "c.toml")
    out = apply_background(frames_with_hole(), c)
    assert (out[:, :, :3, 1] == 180).all() and (out[:, :, 3:, :3] == (200, 100, 50)).all()


def test_png_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    for ch in (3, 4):
        img = rng.integers(0, 256, (7, 9, ch), dtype=np.uint8)
        write_png(tmp_path / "x.png", img)
        assert np.array_equal(read_png(tmp_path / "x.png"), img)
    (tmp_path / "no.png").write_bytes(b"not a png")
    with pytest.raises(PngError, match=r"no\.png"):
        read_png(tmp_path / "no.png")


def test_png_filters_decode(tmp_path):
    """Rows with Sub, Up, Average and Paeth filters (as other encoders write them) decode exactly."""
    import struct
    import zlib

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (4, 5, 3), dtype=np.int32)
    raw = bytearray()
    prev = np.zeros(15, dtype=np.int32)
    for y, ftype in enumerate((1, 2, 3, 4)):
        cur = img[y].reshape(-1)
        left = np.concatenate([np.zeros(3, np.int32), cur[:-3]])
        upleft = np.concatenate([np.zeros(3, np.int32), prev[:-3]])
        if ftype == 1:
            pred = left
        elif ftype == 2:
            pred = prev
        elif ftype == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        raw += bytes([ftype]) + ((cur - pred) & 0xFF).astype(np.uint8).tobytes()
        prev = cur

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 4, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(raw))) + chunk(b"IEND", b""))
    (tmp_path / "f.png").write_bytes(data)
    assert np.array_equal(read_png(tmp_path / "f.png"), img.astype(np.uint8))


def test_half_transparent_edges_blend_straight_or_premultiplied():
    c = CharacterConfig(background="color", background_color="#000064")  # blue 100
    f = np.zeros((1, 1, 2, 4), dtype=np.uint8)
    f[0, 0, 0] = (200, 0, 0, 128)  # straight: red 200 at half coverage
    f[0, 0, 1] = (100, 0, 0, 128)  # the same pixel premultiplied
    straight = apply_background(f[:, :, :1], c)[0, 0, 0]
    premul = apply_background(f[:, :, 1:], c, premultiplied=True)[0, 0, 0]
    assert abs(int(straight[0]) - 100) <= 1 and abs(int(straight[2]) - 50) <= 1
    assert np.array_equal(straight, premul)


@pytest.mark.parametrize(("image", "data", "expected"), [
    ("missing.png", None, "background_image = 'missing.png': no such file"),
    ("junk.png", bytes(range(200)), "junk.png is not a usable JPEG/PNG image: not a JPEG or PNG file"),
    ("cut.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00", "cut.png is not a usable JPEG/PNG image"),
    ("bad.jpg", b"\xff\xd8\xff\xe0 garbage", "bad.jpg is not a usable JPEG/PNG image"),
    ("folder.png", "dir", "folder.png"),
])
def test_bad_background_images_are_one_line_naming_file_and_key(tmp_path, image, data, expected):
    """A missing or junk background_image ended in a traceback at the first frame (issue 16, point 3)."""
    if data == "dir":
        (tmp_path / image).mkdir()
    elif data is not None:
        (tmp_path / image).write_bytes(data)
    (tmp_path / "c.toml").write_text(f'background = "image"\nbackground_image = "{image}"\n')
    with pytest.raises(ConfigError) as info:
        c = load_character(tmp_path / "c.toml")
        load_background(c, (16, 9))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "c.toml")) and expected in message and "\n" not in message, message


def test_a_missing_reference_image_is_refused_at_load(tmp_path):
    (tmp_path / "c.toml").write_text('reference_image = "me.png"\n')
    with pytest.raises(ConfigError, match=r"c\.toml: reference_image = 'me\.png': no such file"):
        load_character(tmp_path / "c.toml")


def test_a_character_framed_whole_gets_a_reference_from_hair_to_shoes(tmp_path):
    """``framing = "whole"``: the rest-pose reference shows the idol whole (her shoes in the frame), smaller."""
    from backend.world.reference import reference_frame
    from backend.world.render import design_frame

    (tmp_path / "w.toml").write_text('name = "w"\nframing = "whole"\n')
    whole, half = load_character(tmp_path / "w.toml"), load_character("aiko")
    assert whole.framing == "whole" and half.framing == "half"
    size = (256, 144)
    ref_whole, ref_half = reference_frame(whole, size), reference_frame(half, size)
    scale, ox, oy = design_frame(size, "whole")
    assert ref_whole[int((206.0 - oy) * scale), int((128.0 - 10.5 + ox) * scale), 3] > 230  # a shoe
    assert ref_half[-1].max() > 0 and ref_whole[-1, :, 3].max() == 0  # half: cut at the waist; whole: nothing cut
    assert (ref_whole[..., 3] > 127).sum() < (ref_half[..., 3] > 127).sum()  # drawn smaller
