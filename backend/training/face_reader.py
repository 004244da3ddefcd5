"""The face reader: a small CNN that regresses the emotion-moved face parameters from a high-resolution head crop.

``liveidol eval`` reads emotions with it: the face parameters (``FACE_PARAMS``) of every frame of a command's
scoring window are averaged and compared with the world's face under each emotion for that very command
(``backend.training.evaluate.emotion_templates``: the action, blinks and blends unchanged), so an action that
moves the face itself (smile, angry, surprise, bow) is read against faces that include it.

The reader sees ``FACE_BOX`` of the frame at whatever size it comes (the 256x144 world, a 960x540 frame of the
detail decoder), resized to ``READER_SIZE`` (about 128 px tall: at 960x540 the box is 330x405 px, at 256x144
88x108 px): brows, blush and mouth keep the detail the 1/8-resolution pose trunk of the probe loses.

Usage::

    reader = train_face_reader(minutes=15, autoencoder=ae)     # renders its own training crops (CPU)
    reader.save("backend/weights/face_reader.safetensors")
    reader = FaceReader.load(FACE_READER_PATH)
    faces = reader.predict(frames)   # frames (N, 4, H, W) premultiplied in [0, 1], any size -> (N, len(FACE_PARAMS))

Train the shipped one with ``python -m backend.training.probe --face-reader MINUTES --out F`` (see
:func:`train_face_reader`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from backend.model.autoencoder import VideoAutoencoder
from backend.training.probe import (
    FACE_BOX,
    FACE_PARAMS,
    PROBE_SIZE,
    _labelled_pool,
    _render_labelled,
    face_box_crop,
    read_safetensors,
    timed_progress,
    warm_cosine_lr,
)
from backend.world.character import Identity
from backend.world.pose import EMOTION_FACES, POSE_INDEX, POSE_RANGES

__all__ = ["FACE_PARAMS", "FACE_READER_PATH", "FACE_SCALE", "READER_SIZE", "SOURCES", "FaceReader", "FaceReaderError",
           "face_crops", "render_crops", "train_face_reader", "world_emotions"]

log = logging.getLogger(__name__)

FACE_READER_PATH = Path(__file__).resolve().parents[1] / "weights" / "face_reader.safetensors"  # the shipped reader
READER_SIZE = (104, 128)  # (width, height) the head crop is resized to; FACE_BOX's aspect (88:108)
_FORMAT = "liveidol-face-reader-1"
# Each face parameter's largest emotion offset: the unit the template rule measures distances in.
FACE_SCALE: tuple[float, ...] = tuple(max(abs(face.get(k, 0.0)) for face in EMOTION_FACES.values())
                                      for k in FACE_PARAMS)
_FACE_IDX = [POSE_INDEX[k] for k in FACE_PARAMS]
_LO = torch.tensor([POSE_RANGES[i][0] for i in _FACE_IDX])
_SPAN = torch.tensor([POSE_RANGES[i][1] - POSE_RANGES[i][0] for i in _FACE_IDX])


class FaceReaderError(ValueError):
    """A face reader file is missing, corrupt or of another layout; the message names the file."""


def face_crops(frames: Tensor, size: tuple[int, int] = READER_SIZE) -> Tensor:
    """``FACE_BOX`` of ``frames`` (N, 4, H, W) premultiplied in [0, 1], any H x W, resized to ``size`` = (w, h)
    (bilinear, antialiased when shrinking) -> (N, 4, h, w) float32: what the reader sees."""
    if frames.ndim != 4 or frames.shape[1] != 4:
        raise ValueError(f"frames {tuple(frames.shape)}: expected (N, 4, H, W) RGBA in [0, 1]")
    crop = face_box_crop(frames).float()
    if frames.shape[0] == 0:
        return crop.new_zeros(0, 4, size[1], size[0])
    return F.interpolate(crop, size=(size[1], size[0]), mode="bilinear", align_corners=False, antialias=True)


class FaceReader(nn.Module):
    """Strided 3x3 convs (GroupNorm + SiLU) over the head crop -> an 8x7 grid -> MLP -> the face parameters.

    ``forward`` takes crops from :func:`face_crops` and returns the parameters normalised to 0..1 of
    ``POSE_RANGES``; :meth:`predict` takes whole frames and returns them in pose units (``FACE_PARAMS`` order).
    """

    def __init__(self, width: int = 16, size: tuple[int, int] = READER_SIZE) -> None:
        super().__init__()
        self.width, self.size = width, size
        w = width

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(min(8, cout // 4) or 1, cout), nn.SiLU()]

        self.features = nn.Sequential(
            *stage(4, w, 2), *stage(w, 2 * w, 2), *stage(2 * w, 2 * w, 1), *stage(2 * w, 4 * w, 2),
            *stage(4 * w, 4 * w, 1), *stage(4 * w, 8 * w, 2), nn.Conv2d(8 * w, 16, 1),
        )
        grid = (-(-size[1] // 16), -(-size[0] // 16))  # (rows, cols) after four stride-2 stages
        self.head = nn.Sequential(nn.Flatten(1), nn.Linear(16 * grid[0] * grid[1], 8 * w), nn.SiLU(),
                                  nn.Linear(8 * w, len(FACE_PARAMS)))

    def forward(self, crops: Tensor) -> Tensor:
        """(N, 4, h, w) crops in [0, 1] at ``size`` -> (N, len(FACE_PARAMS)) normalised 0..1 of POSE_RANGES."""
        assert crops.shape[1:] == (4, self.size[1], self.size[0]), \
            f"crops {tuple(crops.shape)}: expected (N, 4, {self.size[1]}, {self.size[0]})"
        return self.head(self.features(crops * 2.0 - 1.0))

    @torch.no_grad()
    def predict(self, frames: Tensor, batch: int = 128) -> Tensor:
        """Face parameters (N, len(FACE_PARAMS)) in pose units read from ``frames`` (N, 4, H, W), any size."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        out = [self(face_crops(frames[i:i + batch].to(dev), self.size)) for i in range(0, frames.shape[0], batch)]
        self.train(was)
        z = torch.cat(out) if out else torch.zeros(0, len(FACE_PARAMS), device=dev)
        return _LO.to(dev) + z.float() * _SPAN.to(dev)

    def save(self, path: str | Path) -> None:
        meta = {"format": _FORMAT, "width": str(self.width), "size": json.dumps(list(self.size)),
                "face_params": json.dumps(list(FACE_PARAMS)), "face_box": json.dumps(FACE_BOX)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in self.state_dict().items()},
                  str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> FaceReader:
        hint = "train it: python -m backend.training.probe --face-reader MINUTES --out FILE"
        if not Path(path).is_file():
            raise FaceReaderError(f"{path}: face reader not found; {hint}")
        meta, state = read_safetensors(path, device, FaceReaderError, "face reader")
        if meta.get("format") != _FORMAT:
            raise FaceReaderError(f"{path}: not a LiveIdol face reader of format {_FORMAT} "
                                  f"(format={meta.get('format')!r}); {hint}")
        try:
            params, box = json.loads(meta["face_params"]), tuple(json.loads(meta["face_box"]))
            width, size = int(meta["width"]), tuple(json.loads(meta["size"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise FaceReaderError(f"{path}: face reader metadata is incomplete ({exc}); {hint}") from exc
        if params != list(FACE_PARAMS) or box != FACE_BOX:
            raise FaceReaderError(f"{path}: trained for other face parameters or another face box; {hint}")
        reader = cls(width=width, size=(int(size[0]), int(size[1])))
        try:
            reader.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise FaceReaderError(f"{path}: weights do not fit a width-{width} reader: {exc}") from exc
        return reader.to(device).eval()


# Where the training crops come from (share of the pool, how they are made): the world at the probe's size and
# at twice it (sharper, like a frame of the detail decoder), and the world through the shipped autoencoder with
# its native decoder (what the CPU generator draws, upscaled) and its detail decoder (the GPU's 960x540).
SOURCES: tuple[tuple[str, float], ...] = (("native", 0.25), ("double", 0.15), ("ae_native", 0.25), ("ae_hires", 0.35))


def render_crops(n: int, source: str, gen: torch.Generator, pose_pool: Tensor, *,
                 autoencoder: VideoAutoencoder | None, fixed: list[Identity] | None, fixed_share: float,
                 size: tuple[int, int] = READER_SIZE, batch: int = 16) -> tuple[Tensor, Tensor]:
    """``n`` head crops of world renders from ``source`` (see ``SOURCES``) as uint8 (n, 4, h, w) and their face
    parameters (n, len(FACE_PARAMS)) in pose units, rendered with the probe's machinery
    (``backend.training.probe._render_labelled``: random idols in poses of ``pose_pool``)."""

    native = PROBE_SIZE
    through = source.startswith("ae_")
    if through and autoencoder is None:
        raise ValueError(f"render_crops: source {source!r} needs the autoencoder")
    run = autoencoder.cfg.temporal_factor if through and autoencoder is not None else 1
    frame_size = (2 * native[0], 2 * native[1]) if source == "double" else native
    crops, faces = [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            k = _ceil(min(batch, n - i), run)
            x, p, _, _ = _render_labelled(k, gen, "cpu", frame_size, pose_pool, None, run=run,
                                          autoencoder=autoencoder if through else None,
                                          hires=source == "ae_hires", fixed=fixed, fixed_share=fixed_share)
            crops.append((face_crops(x, size).clamp(0, 1) * 255).round().to(torch.uint8))
            faces.append(p[:, _FACE_IDX])
    return torch.cat(crops)[:n], torch.cat(faces)[:n]


def _ceil(x: int, step: int) -> int:
    return -(-x // step) * step


def train_face_reader(minutes: float, *, frames: int = 12000, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                      width: int = 16, autoencoder: VideoAutoencoder | None = None,
                      fixed: list[Identity] | None = None, fixed_share: float = 0.5, clips: int = 400,
                      noise: float = 0.03, shift: int = 3, init: FaceReader | None = None) -> FaceReader:
    """Train a face reader on the CPU: ``frames`` head crops are rendered once from ``SOURCES`` (without
    ``autoencoder`` only the raw world's), about ``fixed_share`` of the idols drawn from ``fixed`` (e.g. the
    shipped characters), in the poses of ``clips`` simulated random scripts (``_labelled_pool``); then it trains
    for ``minutes`` with a warm-up and a cosine learning rate, each batch with pixel ``noise`` and one random
    shift of up to ``shift`` px. The loss is the squared error in the template rule's units (each parameter
    divided by its largest emotion offset, ``FACE_SCALE``). ``init``: continue from this reader's weights (its
    width wins), e.g. a second round on freshly rendered crops (another ``seed``) at a lower ``lr``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    reader = FaceReader(width=init.width if init is not None else width)
    if init is not None:
        reader.load_state_dict(init.state_dict())
    pose_pool, _ = _labelled_pool(gen, clips)
    if autoencoder is not None:
        autoencoder = autoencoder.float().eval().requires_grad_(False)
    sources = [(s, share) for s, share in SOURCES if autoencoder is not None or not s.startswith("ae_")]
    total = sum(share for _, share in sources)
    t0 = time.monotonic()
    parts = []
    for s, share in sources:
        parts.append(render_crops(round(frames * share / total), s, gen, pose_pool, autoencoder=autoencoder,
                                  fixed=fixed, fixed_share=fixed_share, size=reader.size))
        log.info("face reader crops source=%s n=%d seconds=%.1f", s, parts[-1][0].shape[0], time.monotonic() - t0)
    crops = torch.cat([c for c, _ in parts])
    target = (torch.cat([f for _, f in parts]) - _LO) / _SPAN
    weight = (_SPAN / torch.tensor(FACE_SCALE)) ** 2  # normalised error -> template units, squared
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=1e-4)
    reader.train()
    step = 0
    for progress in timed_progress(minutes):
        for g in opt.param_groups:
            g["lr"] = warm_cosine_lr(lr, progress)
        idx = torch.randint(crops.shape[0], (batch,), generator=gen)
        x = crops[idx].float() / 255.0
        if shift:
            dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
            x = torch.roll(x, (dy, dx), (2, 3))
        x = (x + noise * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        err = reader(x) - target[idx]
        loss = (err.square() * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0:
            rms = (err.detach().square().mean(0) * weight).sqrt()
            log.info("face reader step=%d loss=%.4f worst=%s %.2f progress=%.2f", step, loss.item(),
                     FACE_PARAMS[int(rms.argmax())], float(rms.max()), progress)
        step += 1
    log.info("face reader trained steps=%d minutes=%.1f", step, minutes)
    return reader.eval()


def world_emotions(reader: FaceReader, character: str, *, seed: int, commands: int = 15, frames_per_chunk: int = 8,
                   autoencoder: VideoAutoencoder | None = None,
                   decoders: tuple[str, ...] = ("raw",)) -> dict[str, list[tuple[str, str, str]]]:
    """How ``liveidol eval``'s emotion rule reads the WORLD through ``reader``: a balanced plan of ``commands``
    (plan ``seed``) for the shipped ``character``, simulated and rendered at the probe's size, each scoring
    window read as it is (``"raw"``), through ``autoencoder`` with its native decoder (``"native"``, 256x144) and
    with its detail decoder (``"hires"``, 960x540), and with the world's true face (``"true"``, the rule's
    ceiling). Returns, per decoder, (commanded emotion, read emotion, action) per command."""
    from backend.training.evaluate import emotion_templates, plan_commands, recognise_face, world_script
    from backend.world.character import identity_tensor, load_character
    from backend.world.pose import simulate
    from backend.world.render import premultiplied, render, straight_alpha

    plan = plan_commands(commands, frames_per_chunk=frames_per_chunk, seed=seed, balance_emotions=True)
    templates = emotion_templates(plan, seed)
    poses, _ = simulate(world_script(plan), plan[-1].start + plan[-1].window, seed=seed)
    ident = identity_tensor([load_character(character).identity])
    tf = autoencoder.cfg.temporal_factor if autoencoder is not None else 1
    out: dict[str, list[tuple[str, str, str]]] = {d: [] for d in decoders}
    for c, tmpl in zip(plan, templates):
        n = _ceil(c.window, tf)  # the window, rounded up to whole latent frames for the autoencoder
        p = poses[c.start:c.start + n]
        p = torch.cat([p, p[-1:].expand(n - p.shape[0], -1)]) if p.shape[0] < n else p
        video = render(ident, p[None], PROBE_SIZE)  # (1, n, 4, H, W) premultiplied
        for d in decoders:
            if d == "true":
                faces = p[:, _FACE_IDX]
            elif d == "raw":
                faces = reader.predict(video[0])
            else:
                if autoencoder is None:
                    raise ValueError(f"world_emotions: decoder {d!r} needs the autoencoder")
                with torch.no_grad():
                    z = autoencoder.encode(straight_alpha(video))
                    faces = reader.predict(premultiplied(autoencoder.decode(z, which=d).float())[0])
            out[d].append((c.emotion, recognise_face(faces[:c.window], tmpl), c.action))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m backend.training.face_reader [--reader F] --seed 113 --commands 25``: per character and decoder,
    how often the emotion rule reads the world's emotions right through the reader (one line each, then JSON).
    Train a reader with ``python -m backend.training.probe --face-reader MINUTES --out F``."""
    import argparse

    from backend.actions import EMOTIONS
    from backend.training.probe import _shipped_autoencoder

    ap = argparse.ArgumentParser(description="Measure the face reader's emotion rates on the world's frames.")
    ap.add_argument("--reader", default=str(FACE_READER_PATH))
    ap.add_argument("--seed", type=int, default=113, help="plan seed (held out: not one the reader was picked on)")
    ap.add_argument("--commands", type=int, default=25)
    ap.add_argument("--characters", nargs="+", default=["aiko", "rin", "hana"])
    ap.add_argument("--decoders", nargs="+", default=["true", "raw", "native", "hires"],
                    choices=["true", "raw", "native", "hires"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    reader = FaceReader.load(args.reader)
    ae = _shipped_autoencoder() if {"native", "hires"} & set(args.decoders) else None
    result: dict[str, dict[str, dict[str, object]]] = {}
    for name in args.characters:
        reads = world_emotions(reader, name, seed=args.seed, commands=args.commands, autoencoder=ae,
                               decoders=tuple(args.decoders))
        result[name] = {}
        for d, rows in reads.items():
            per = {e: [r == e for c, r, _ in rows if c == e] for e in EMOTIONS}
            rates = {e: sum(v) / len(v) for e, v in per.items() if v}
            misses = [f"{c}->{r} ({a})" for c, r, a in rows if c != r]
            result[name][d] = {"rates": rates, "n": {e: len(v) for e, v in per.items()}, "misses": misses}
            print(f"{name:5} {d:6} " + " ".join(f"{e} {v:.0%}" for e, v in rates.items())
                  + (f"  misses: {', '.join(misses)}" if misses else ""), flush=True)
    print(json.dumps({"seed": args.seed, "commands": args.commands, "reader": args.reader, "result": result}))


if __name__ == "__main__":
    main()
