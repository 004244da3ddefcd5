"""Who the idol is: her look (``Identity``), her character file (``CharacterConfig``) and backgrounds.

``Identity`` is what the procedural renderer draws (palette + hair / eye / outfit styles);
``identity_tensor`` packs identities into the (B, IDENTITY_DIM) tensor the renderer consumes. A
character file (configs/characters/<name>.toml) adds the name, the background and the voice; it is
loaded strictly with :func:`backend.config.load_table`, so a typo names the file and the key.

Usage::

    char = load_character("aiko")
    ident = identity_tensor([char.identity])          # (1, IDENTITY_DIM)
    frames = apply_background(frames_uint8, char)      # (N, H, W, 4) uint8
"""

from __future__ import annotations

import dataclasses
import logging
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from backend.config import CONFIG_DIR, ConfigError, load_table, opt
from backend.model.wan.prompts import PromptTemplates
from backend.world.png import read_png

__all__ = [
    "EYE_SHAPES",
    "HAIR_STYLES",
    "IDENTITY_DIM",
    "OUTFITS",
    "PALETTE_KEYS",
    "CharacterConfig",
    "Identity",
    "apply_background",
    "identity_tensor",
    "load_background",
    "load_character",
    "load_image_rgb",
    "load_image_rgba",
    "parse_colour",
    "sample_identity",
]

log = logging.getLogger(__name__)

HAIR_STYLES: tuple[str, ...] = ("bob", "long", "twin_tails", "ponytail")
EYE_SHAPES: tuple[str, ...] = ("round", "almond", "droopy")
OUTFITS: tuple[str, ...] = ("sailor", "dress", "hoodie")
PALETTE_KEYS: tuple[str, ...] = ("skin", "hair", "eyes", "outfit_primary", "outfit_secondary", "accent")
# Layout of one identity row: 6 colours x RGB, then one-hots of hair style, eye shape and outfit.
IDENTITY_DIM = 3 * len(PALETTE_KEYS) + len(HAIR_STYLES) + len(EYE_SHAPES) + len(OUTFITS)
CHARACTER_DIR = CONFIG_DIR / "characters"

Colour = tuple[float, float, float]
ColourValue = str | tuple[float, float, float]  # "#rrggbb" or [r, g, b] in 0..1, as written in TOML
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def parse_colour(value: str | tuple[float, ...] | list[float], where: str = "colour") -> Colour:
    """``"#ffccaa"`` / ``"ffccaa"`` or an RGB triple of 0..1 floats -> (r, g, b) floats; ValueError names ``where``."""
    if isinstance(value, str):
        m = _HEX.match(value.strip())
        if not m:
            raise ValueError(f"{where} = {value!r}: expected a hex colour like '#ffccaa' or [r, g, b] in 0..1")
        h = m.group(1)
        return (int(h[0:2], 16) / 255.0, int(h[2:4], 16) / 255.0, int(h[4:6], 16) / 255.0)
    if (isinstance(value, tuple | list) and len(value) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in value)):
        return (float(value[0]), float(value[1]), float(value[2]))
    raise ValueError(f"{where} = {value!r}: expected a hex colour like '#ffccaa' or [r, g, b] in 0..1")


@dataclass(frozen=True)
class Identity:
    """The idol's look. Colours are RGB floats 0..1 (hex strings are accepted and converted)."""

    skin: Colour = (1.0, 0.87, 0.80)
    hair: Colour = (0.95, 0.55, 0.70)
    eyes: Colour = (0.35, 0.55, 0.95)
    outfit_primary: Colour = (0.98, 0.98, 1.0)
    outfit_secondary: Colour = (0.25, 0.35, 0.75)
    accent: Colour = (0.95, 0.25, 0.40)
    hair_style: str = "twin_tails"
    eye_shape: str = "round"
    outfit: str = "sailor"

    def __post_init__(self) -> None:
        for key in PALETTE_KEYS:
            object.__setattr__(self, key, parse_colour(getattr(self, key), key))
        for key, allowed in (("hair_style", HAIR_STYLES), ("eye_shape", EYE_SHAPES), ("outfit", OUTFITS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} = {getattr(self, key)!r}: expected one of {', '.join(allowed)}")


def identity_tensor(identities: list[Identity], device: torch.device | str | None = None) -> Tensor:
    """(B, IDENTITY_DIM) float32: palette RGB, then one-hot hair style, eye shape, outfit."""
    rows = []
    for ident in identities:
        row = [c for key in PALETTE_KEYS for c in getattr(ident, key)]
        for value, allowed in ((ident.hair_style, HAIR_STYLES), (ident.eye_shape, EYE_SHAPES),
                               (ident.outfit, OUTFITS)):
            row.extend(1.0 if value == a else 0.0 for a in allowed)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32, device=device).reshape(len(identities), IDENTITY_DIM)


def _hsv(gen: torch.Generator, h: tuple[float, float], s: tuple[float, float], v: tuple[float, float]) -> Colour:
    u = torch.rand(3, generator=gen).tolist()
    hh = (h[0] + u[0] * (h[1] - h[0])) % 1.0
    ss = s[0] + u[1] * (s[1] - s[0])
    vv = v[0] + u[2] * (v[1] - v[0])
    i = int(hh * 6) % 6
    f = hh * 6 - int(hh * 6)
    p, q, t = vv * (1 - ss), vv * (1 - f * ss), vv * (1 - (1 - f) * ss)
    return [(vv, t, p), (q, vv, p), (p, vv, t), (p, q, vv), (t, p, vv), (vv, p, q)][i]


def sample_identity(gen: torch.Generator) -> Identity:
    """A random plausible idol for training diversity (deterministic for ``gen``'s state)."""

    def pick(options: tuple[str, ...]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=gen).item())]

    # skin: light to dark, more saturated as it gets darker so it never turns grey
    tone = float(torch.rand((), generator=gen))
    skin_v = 1.0 - 0.5 * tone ** 1.5
    skin_s = 0.12 + 0.45 * (1.0 - skin_v) / 0.5 + 0.12 * float(torch.rand((), generator=gen))
    skin = _hsv(gen, (0.035, 0.085), (skin_s, skin_s), (skin_v, skin_v))
    return Identity(
        skin=skin,
        hair=_hsv(gen, (0.0, 1.0), (0.2, 0.9), (0.15, 0.98)),
        eyes=_hsv(gen, (0.0, 1.0), (0.4, 0.9), (0.35, 0.9)),
        outfit_primary=_hsv(gen, (0.0, 1.0), (0.0, 0.8), (0.35, 1.0)),
        outfit_secondary=_hsv(gen, (0.0, 1.0), (0.3, 0.9), (0.2, 0.9)),
        accent=_hsv(gen, (0.0, 1.0), (0.5, 1.0), (0.6, 1.0)),
        hair_style=pick(HAIR_STYLES), eye_shape=pick(EYE_SHAPES), outfit=pick(OUTFITS),
    )


# ---------------------------------------------------------------------------------------------
# Character files
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CharacterConfig:
    """One character file, configs/characters/<name>.toml."""

    name: str = opt("aiko", "Short name: the file name without .toml, used in logs and the CLI.")
    display_name: str = opt("Aiko", "Name shown to viewers.")
    skin: ColourValue = opt("#ffdecc", "Skin colour: hex '#rrggbb' or [r, g, b] in 0..1.", min=0.0, max=1.0)
    hair: ColourValue = opt("#f28cb3", "Hair colour, hex or [r, g, b].", min=0.0, max=1.0)
    eyes: ColourValue = opt("#598cf2", "Iris colour, hex or [r, g, b].", min=0.0, max=1.0)
    outfit_primary: ColourValue = opt("#fafaff", "Main outfit colour, hex or [r, g, b].", min=0.0, max=1.0)
    outfit_secondary: ColourValue = opt("#4059bf", "Second outfit colour (collar, trim, shirt), hex or [r, g, b].", min=0.0, max=1.0)
    accent: ColourValue = opt("#f24066", "Accent colour (ribbon, hair ties, racket), hex or [r, g, b].", min=0.0, max=1.0)
    hair_style: Literal["bob", "long", "twin_tails", "ponytail"] = opt("twin_tails", "Hair style.")
    eye_shape: Literal["round", "almond", "droopy"] = opt("round", "Eye shape.")
    outfit: Literal["sailor", "dress", "hoodie"] = opt("sailor", "Outfit style.")
    background: Literal["transparent", "color", "image"] = opt(
        "transparent", "'transparent' keeps the alpha matte for OBS; 'color' or 'image' fills behind the idol.")
    background_color: ColourValue = opt("#202030", "Background colour when background = 'color', hex or [r, g, b].", min=0.0, max=1.0)
    background_image: str = opt("", "Background image (PNG/JPEG) when background = 'image'; relative to the file.")
    reference_image: str = opt("", "Optional custom avatar image used as the identity reference instead of "
                               "the rendered neutral pose; relative to the file; '' = render it.")
    framing: Literal["half", "whole"] = opt(
        "half", "How the idol fills the frame: 'half' from the head to the waist, 'whole' from the hair to the shoes "
        "(a reference_image is taken as framed so). The model must have been trained on it (its record lists the "
        "framings: `model.framings` at training time); the shipped v8 knows 'half'.")
    voice: str = opt("", "TTS voice: a Piper .onnx path or a coqui speaker .wav (relative to the file), "
                     "or an engine voice name; '' = the engine default.")
    prompts: PromptTemplates = opt(None, "Wan tier: the prompt of each action and emotion (see "
                                   "backend/model/wan/prompts.py).", factory=PromptTemplates)
    source: str = opt("", "Set by the loader: the file this character came from (not read from TOML).")

    @property
    def identity(self) -> Identity:
        """The look as an ``Identity`` (colours parsed to RGB floats)."""
        return Identity(**{k: getattr(self, k) for k in (*PALETTE_KEYS, "hair_style", "eye_shape", "outfit")})

    @property
    def background_rgb(self) -> Colour:
        return parse_colour(self.background_color, "background_color")

    def resolve(self, relative: str) -> Path | None:
        """A path field resolved against the character file's folder; None when empty."""
        if not relative:
            return None
        p = Path(relative).expanduser()
        return p if p.is_absolute() or not self.source else Path(self.source).parent / p


def load_character(name_or_path: str | Path) -> CharacterConfig:
    """Load a character by name (configs/characters/<name>.toml) or by path, strictly.

    Raises :class:`backend.config.ConfigError` naming the file and key on any bad value.
    """
    text = str(name_or_path)
    path = Path(text) if (text.endswith(".toml") or "/" in text or "\\" in text) else CHARACTER_DIR / f"{text}.toml"
    if not path.exists() and path.parent == CHARACTER_DIR:
        known = ", ".join(sorted(p.stem for p in CHARACTER_DIR.glob("*.toml")))
        raise ConfigError(f"{path}: no such character (known: {known})")
    char = load_table(CharacterConfig, path)
    if char.source:
        raise ConfigError(f"{path}: source: set by the loader, not allowed in the file")
    for key in (*PALETTE_KEYS, "background_color"):
        try:
            parse_colour(getattr(char, key), key)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    try:
        char.prompts.check()
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    char = dataclasses.replace(char, source=str(path))
    if char.background == "image" and not char.background_image:
        raise ConfigError(f"{path}: background = 'image' needs background_image")
    for key in ("background_image", "reference_image"):  # a missing image is known now, not at the first frame
        image = char.resolve(getattr(char, key))
        if image is not None and (key == "reference_image" or char.background == "image") and not image.is_file():
            raise ConfigError(f"{path}: {key} = {getattr(char, key)!r}: no such file {image}")
    log.debug("character loaded name=%s path=%s", char.name, path)
    return char


def load_image_rgba(path: Path, size: tuple[int, int]) -> np.ndarray:
    """An image file (JPEG or 8-bit PNG) as (H, W, 4) uint8 straight alpha, resized to ``size`` = (W, H).

    JPEGs and PNGs without alpha are opaque. A file that cannot be read raises OSError; one that is not a
    readable JPEG/PNG raises ValueError saying so (whatever the decoder tripped on).
    """
    data = path.read_bytes()
    try:
        if data[:2] == b"\xff\xd8":
            import simplejpeg

            img = simplejpeg.decode_jpeg(data, colorspace="RGB")
        elif data[:8] == b"\x89PNG\r\n\x1a\n":
            img = read_png(path)
            if img.shape[2] in (1, 2):  # grey (+ alpha)
                img = np.concatenate([np.repeat(img[..., :1], 3, axis=2), img[..., 1:]], axis=2)
        else:
            raise ValueError("not a JPEG or PNG file")
    except (ValueError, IndexError, EOFError, struct.error, zlib.error) as exc:  # decoders' ways to fail on junk
        raise ValueError(str(exc).removeprefix(f"{path}: ") or type(exc).__name__) from None
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"empty image ({img.shape[1]}x{img.shape[0]})")
    if img.shape[2] == 3:
        img = np.concatenate([img, np.full((*img.shape[:2], 1), 255, np.uint8)], axis=2)
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    t = torch.nn.functional.interpolate(t, size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def load_image_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    """An image file as (H, W, 3) uint8 resized to ``size`` = (W, H); alpha is flattened over black."""
    rgba = load_image_rgba(path, size).astype(np.float32)
    return np.rint(rgba[..., :3] * rgba[..., 3:] / 255.0).astype(np.uint8)


def load_background(character: CharacterConfig, size: tuple[int, int]) -> np.ndarray | None:
    """The character's background image as (H, W, 3) uint8 at ``size`` = (W, H), or None if it has none.

    Raises :class:`ConfigError` naming the character file, the key, the image and what is wrong with it.
    """
    if character.background != "image":
        return None
    path = character.resolve(character.background_image)
    assert path is not None  # load_character refuses background = 'image' without background_image
    try:
        return load_image_rgb(path, size)
    except FileNotFoundError:
        raise ConfigError(f"{character.source}: background_image = {character.background_image!r}: "
                          f"no such file {path}") from None
    except OSError as exc:
        raise ConfigError(f"{character.source}: background_image = {character.background_image!r}: "
                          f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{character.source}: background_image = {character.background_image!r}: "
                          f"{path} is not a usable JPEG/PNG image: {exc}") from None


def apply_background(frames: np.ndarray, character: CharacterConfig, image: np.ndarray | None = None, *,
                     premultiplied: bool = False) -> np.ndarray:
    """Composite the character's background behind RGBA ``frames`` (N, H, W, 4) uint8.

    Frames are straight alpha (what the generator and OBS use); pass ``premultiplied=True`` for frames
    whose RGB is already multiplied by alpha (what ``backend.world.render.render`` produces).

    'transparent' returns the frames unchanged; 'color' / 'image' return opaque frames (alpha 255).
    ``image`` (H, W, 3) uint8 may be passed pre-loaded; otherwise background_image is read.
    """
    if frames.ndim != 4 or frames.shape[-1] != 4 or frames.dtype != np.uint8:
        raise ValueError(f"frames {frames.shape} {frames.dtype}: expected (N, H, W, 4) uint8")
    if character.background == "transparent":
        return frames
    _n, h, w, _ = frames.shape
    if character.background == "color":
        bg = np.empty((h, w, 3), dtype=np.float32)
        bg[:] = np.array(character.background_rgb, dtype=np.float32) * 255.0
    else:
        if image is None:
            image = load_background(character, (w, h))
            assert image is not None
        if image.shape[:2] != (h, w):
            raise ValueError(f"background image {image.shape[:2]} != frame size {(h, w)}")
        bg = image.astype(np.float32)
    a = frames[..., 3:4].astype(np.float32) / 255.0
    fg = frames[..., :3].astype(np.float32)
    rgb = (fg if premultiplied else fg * a) + bg[None] * (1.0 - a)
    out = np.empty_like(frames)
    out[..., :3] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    out[..., 3] = 255
    return out
