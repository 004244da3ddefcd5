"""Loading and saving generator weights.

Sources (``ModelConfig.checkpoint``):

* ``'random'``: fresh initialisation (:func:`init_dit_`), good for training: the extra
  conditioning modules start at zero, everything else at a small normal std.
* ``'builtin'``: ``backend/weights/liveidol-small.safetensors`` (trained in a separate step).
* a ``.safetensors`` path: either LiveIdol's own file (keys ``dit.*`` and ``autoencoder.*``, optional
  JSON config under metadata ``liveidol.config``) or a bare Wan2.1 DiT state dict (Wan key names).
* a Self-Forcing ``.pt``: a pickled dict with ``generator_ema`` (preferred) or ``generator``, keys
  prefixed ``model.``; loaded with ``torch.load(weights_only=True)``.

Every problem raises :class:`CheckpointError` naming the file, the key and both shapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from backend.config import REPO_ROOT, AutoencoderConfig, DiTSizes, ModelConfig
from backend.errors import LiveIdolError
from backend.model.dit import EXTRA_PREFIXES, Block, CausalDiT

__all__ = [
    "BUILTIN_PATH",
    "CONFIG_METADATA_KEY",
    "UNRECORDED",
    "CheckpointError",
    "Weights",
    "autoencoder_fingerprint",
    "check_config",
    "config_metadata",
    "init_dit_",
    "load_dit",
    "load_into",
    "load_weights",
    "recorded",
    "save_checkpoint",
    "split_state",
]

logger = logging.getLogger(__name__)

BUILTIN_PATH = REPO_ROOT / "backend" / "weights" / "liveidol-small.safetensors"
CONFIG_METADATA_KEY = "liveidol.config"
# Config fields added after checkpoints were written, and the value a checkpoint that does not record them was made
# with (before ``model.dit.prediction`` every DiT predicted flow; before the export recorded ``model.framings`` every
# model was trained framed half)
UNRECORDED: dict[tuple[str, str], Any] = {("dit", "prediction"): "flow", ("training", "framings"): ["half"]}
_MAX_LISTED = 8


class CheckpointError(LiveIdolError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the configured model."""


@dataclass
class Weights:
    """State dicts read from one source; ``autoencoder`` is None when the source has none."""

    source: str
    dit: dict[str, torch.Tensor]
    autoencoder: dict[str, torch.Tensor] | None
    config: dict | None = None  # the embedded liveidol.config, if any


def split_state(flat: dict[str, torch.Tensor], source: str = "<weights>") -> Weights:
    """Split a flat dict into DiT and autoencoder parts.

    ``dit.*`` / ``autoencoder.*`` keys are LiveIdol's layout; otherwise every key is a DiT key
    (a ``model.`` prefix, as in Self-Forcing's wrapper, is stripped).
    """
    if any(k.startswith("dit.") for k in flat):
        dit = {k[4:]: v for k, v in flat.items() if k.startswith("dit.")}
        ae = {k[12:]: v for k, v in flat.items() if k.startswith("autoencoder.")}
        other = [k for k in flat if not k.startswith(("dit.", "autoencoder."))]
        if other:
            raise CheckpointError(f"{source}: unexpected keys outside dit./autoencoder.: {_listed(other)}")
        return Weights(source, dit, ae or None)
    if flat and all(k.startswith("model.") for k in flat):
        flat = {k[6:]: v for k, v in flat.items()}
    return Weights(source, dict(flat), None)


def _listed(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_weights(source: str) -> Weights | None:
    """Read weights named by ``ModelConfig.checkpoint``; None for ``'random'``."""
    if source == "random":
        return None
    path = BUILTIN_PATH if source == "builtin" else Path(source).expanduser()
    if not path.is_file():
        if source == "builtin":
            raise CheckpointError(
                f"builtin weights not found at {path}: the shipped model is trained in a separate step "
                "(backend/training) and written there with save_checkpoint; train or copy it there, "
                "point model.checkpoint at a .safetensors / Self-Forcing .pt file, or use model.checkpoint = 'random'")
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix in (".pt", ".pth", ".ckpt"):
        return _load_torch(path)
    raise CheckpointError(f"{path}: unknown checkpoint type (expected .safetensors or a Self-Forcing .pt)")


def _load_safetensors(path: Path) -> Weights:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            flat = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError
        raise CheckpointError(f"{path}: not a readable safetensors file: {_one_line(exc)}") from exc
    weights = split_state(flat, str(path))
    if CONFIG_METADATA_KEY in meta:
        try:
            weights.config = json.loads(meta[CONFIG_METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: metadata {CONFIG_METADATA_KEY} is not valid JSON: {exc}") from exc
    return weights


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """The gist of a loader's exception in one line (torch.load's weights-only message runs to five)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    marker = "WeightsUnpickler error:"
    for i, line in enumerate(lines):
        if marker in line:
            detail = line.split(marker, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "?")
            return f"the weights-only unpickler refused it ({detail})"
    if not lines:
        return "the file ends early (empty or cut short)" if isinstance(exc, EOFError) else type(exc).__name__
    text = lines[0].split(". ", 1)[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _load_torch(path: Path) -> Weights:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors of many kinds
        raise CheckpointError(f"{path}: not a loadable torch checkpoint: {_one_line(exc)}") from exc
    if isinstance(obj, dict) and ("generator_ema" in obj or "generator" in obj):
        part = "generator_ema" if "generator_ema" in obj else "generator"
        logger.info("self-forcing checkpoint path=%s part=%s", path, part)
        obj = obj[part]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict or a Self-Forcing dict with 'generator'/'generator_ema'")
    return split_state(obj, str(path))


def recorded(weights: Weights, section: str, name: str) -> Any:
    """The value of ``model.SECTION.NAME`` the checkpoint was made with: its record, else (a field added after it was
    written) the one value there was then (``UNRECORDED``), else None (not known)."""
    theirs = (weights.config or {}).get(section) or {}
    return theirs[name] if name in theirs else UNRECORDED.get((section, name))


def check_config(weights: Weights, cfg: ModelConfig) -> None:
    """Raise CheckpointError listing every field where the embedded config differs from ``cfg``."""
    if weights.config is None:
        return
    diffs, sets = [], []
    for section, ours in (("dit", cfg.dit), ("autoencoder", cfg.autoencoder)):
        for f in dataclasses.fields(ours):
            other = recorded(weights, section, f.name)
            if other is None:
                continue
            mine = getattr(ours, f.name)
            if isinstance(mine, tuple):
                other = tuple(other)
            if mine != other:
                diffs.append(f"model.{section}.{f.name}: checkpoint {other!r}, config {mine!r}")
                sets.append(f"--set model.{section}.{f.name}={json.dumps(other, separators=(',', ':'))}")  # no spaces: one shell word
    if diffs:
        raise CheckpointError(f"{weights.source}: checkpoint was made for another model config: " + "; ".join(diffs)
                              + f" (to load it: {' '.join(sets)})")


def load_into(module: nn.Module, state: dict[str, torch.Tensor], *, source: str, what: str,
              optional_prefixes: tuple[str, ...] = ()) -> None:
    """Strictly copy ``state`` into ``module``; keys under ``optional_prefixes`` may be missing."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(optional_prefixes)]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise CheckpointError(f"{source}: {what} keys missing from the checkpoint: {_listed(missing)}")
    if unexpected:
        raise CheckpointError(f"{source}: unexpected {what} keys in the checkpoint: {_listed(unexpected)}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{source}: {what} key {k} has shape {tuple(v.shape)} in the checkpoint "
                                  f"but {tuple(own[k].shape)} in the model (check model.dit / model.autoencoder)")
    skipped = [k for k in own if k not in state]
    if skipped:
        logger.info("checkpoint lacks optional keys, they keep their zero init source=%s what=%s count=%d",
                    source, what, len(skipped))
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))


def load_dit(dit: CausalDiT, weights: Weights) -> None:
    load_into(dit, weights.dit, source=weights.source, what="dit", optional_prefixes=EXTRA_PREFIXES)


@torch.no_grad()
def init_dit_(dit: CausalDiT, *, std: float = 0.02, generator: torch.Generator | None = None) -> CausalDiT:
    """Training-ready init: Wan-like (xavier linears, normal embeddings), extras at zero."""
    for name, mod in dit.named_modules():
        if name.startswith(tuple(p.rstrip(".") for p in EXTRA_PREFIXES)):
            continue
        if isinstance(mod, nn.Linear):
            bound = math.sqrt(6.0 / (mod.in_features + mod.out_features))
            mod.weight.uniform_(-bound, bound, generator=generator)
            nn.init.zeros_(mod.bias)
    for seq in (dit.text_embedding, dit.time_embedding):
        for mod in seq:
            if isinstance(mod, nn.Linear):
                mod.weight.normal_(0.0, std, generator=generator)
    pe = dit.patch_embedding
    bound = math.sqrt(6.0 / (pe.weight[0].numel() + pe.out_channels))
    pe.weight.uniform_(-bound, bound, generator=generator)
    assert pe.bias is not None
    nn.init.zeros_(pe.bias)
    nn.init.zeros_(dit.head.head.weight)  # the flow starts at zero: a stable start for training
    nn.init.zeros_(dit.head.head.bias)
    for block in dit.blocks:
        assert isinstance(block, Block)
        block.modulation.normal_(0.0, dit.sizes.dim ** -0.5, generator=generator)
    dit.head.modulation.normal_(0.0, dit.sizes.dim ** -0.5, generator=generator)
    nn.init.zeros_(dit.cond_embedding.action.weight)
    nn.init.zeros_(dit.cond_embedding.emotion.weight)
    if dit.control_embedding is not None:
        nn.init.zeros_(dit.control_embedding.weight)
        nn.init.zeros_(dit.control_embedding.bias)
    return dit


def autoencoder_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of an autoencoder state dict as a checkpoint stores it (floating tensors in float16, keys sorted):
    the same for the autoencoder a run trained its DiT with and for the checkpoint it came from, so a DiT-only
    export (``liveidol train export --dit-only``) can name the autoencoder it needs."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().to("cpu")
        value = value.to(torch.float16) if value.is_floating_point() else value
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def config_metadata(dit: DiTSizes, autoencoder: AutoencoderConfig, training: dict | None = None) -> str:
    meta = {"dit": dataclasses.asdict(dit), "autoencoder": dataclasses.asdict(autoencoder)}
    return json.dumps(meta | ({"training": training} if training else {}))


def save_checkpoint(path: str | Path, dit: nn.Module, autoencoder: nn.Module | None, cfg: ModelConfig,
                    dtype: torch.dtype = torch.bfloat16, training: dict | None = None) -> Path:
    """Write ``dit.*`` and ``autoencoder.*`` in ``dtype`` (bf16/fp16/fp32) with the config as metadata.

    ``training`` (JSON-able, e.g. the DiT step counts) is kept beside the config under ``"training"``, so
    ``liveidol train import`` can continue a run from the file."""
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"save_checkpoint: dtype must be bfloat16, float16 or float32, got {dtype}")
    path = Path(path)
    tensors = {f"dit.{k}": v.detach().to("cpu", dtype).contiguous() for k, v in dit.state_dict().items()}
    if autoencoder is not None:
        tensors.update({f"autoencoder.{k}": v.detach().to("cpu").contiguous()
                        if not v.is_floating_point() else v.detach().to("cpu", dtype).contiguous()
                        for k, v in autoencoder.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={CONFIG_METADATA_KEY: config_metadata(cfg.dit, cfg.autoencoder, training)})
    return path
