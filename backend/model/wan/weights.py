"""Reading a public checkpoint from a local path into a module, with one-line errors that name the keys.

The Wan tier loads files it did not write (``Wan2.1_VAE.pth``, ``taew2_1.pth``, umT5 ...), so a
wrong file must say exactly what does not fit: which keys are missing, which are unexpected and which
have another shape, with the file and the model named.  Nothing here downloads anything.

Usage::

    state = read_state_dict(path, what="Wan VAE")              # .pth/.pt/.ckpt or .safetensors, on the CPU
    with torch.device("meta"):
        vae = WanVAE(cfg)                                      # no memory spent on the random init
    load_state_dict_into(vae, state, what="Wan VAE", source=str(path), assign=True)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from backend.errors import LiveIdolError

__all__ = ["WeightsError", "check_state_dict", "load_state_dict_into", "read_state_dict", "state_dict_mismatch"]

log = logging.getLogger(__name__)

_MAX_LISTED = 6


class WeightsError(LiveIdolError, RuntimeError):
    """A weights file is missing, unreadable, or does not fit the model it is loaded into."""


def _listed(items: list[str]) -> str:
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def read_state_dict(path: str | Path, *, what: str, strip_prefix: str = "") -> dict[str, Tensor]:
    """Read a flat ``{key: tensor}`` dict from ``path`` (CPU tensors, file dtype).

    ``.safetensors`` is read with safetensors; ``.pt``/``.pth``/``.ckpt`` with
    ``torch.load(weights_only=True)`` (no code runs).  ``strip_prefix`` is removed from keys that carry it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{what}: no weights file at {path} (download it first, e.g. `liveidol models pull`)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises SafetensorError / OSError
            raise WeightsError(f"{what}: {path} is not a readable safetensors file: {_one_line(exc)}") from exc
    elif path.suffix in (".pt", ".pth", ".ckpt", ".bin"):
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # zip / unpickling errors of many kinds
            raise WeightsError(f"{what}: {path} is not a loadable torch file (weights_only): {_one_line(exc)}") from exc
    else:
        raise WeightsError(f"{what}: {path} has an unknown suffix {path.suffix!r} (expected .safetensors or .pth)")
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        kind = type(obj).__name__ if not isinstance(obj, Mapping) else f"dict with keys {_listed(sorted(map(str, obj)))}"
        raise WeightsError(f"{what}: {path} does not hold a flat state dict of tensors (found {kind})")
    state = {str(k): v for k, v in obj.items()}
    if strip_prefix:
        state = {k.removeprefix(strip_prefix): v for k, v in state.items()}
    return state


def state_dict_mismatch(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, Tensor]) -> str:
    """Describe how ``state`` differs from ``expected`` (key -> shape); '' when it fits exactly."""
    missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected)
    misshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(shape)}"
                 for k, shape in expected.items() if k in state and tuple(state[k].shape) != tuple(shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_listed(unexpected)}")
    if misshaped:
        parts.append(f"{len(misshaped)} mis-shaped (file vs model): {_listed(misshaped)}")
    return "; ".join(parts)


def check_state_dict(module: nn.Module, state: Mapping[str, Tensor], *, what: str, source: str,
                     hint: str = "") -> None:
    """Raise :class:`WeightsError` naming every missing, unexpected and mis-shaped key (one line)."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problem = state_dict_mismatch(expected, state)
    if problem:
        raise WeightsError(f"{what}: {source} does not fit the model: {problem}" + (f" ({hint})" if hint else ""))


def load_state_dict_into(module: nn.Module, state: Mapping[str, Tensor], *, what: str, source: str,
                         assign: bool = False, hint: str = "") -> None:
    """Check ``state`` against ``module`` (see :func:`check_state_dict`), then load it strictly.

    With ``assign=True`` (a module built on the meta device) the file's tensors become the parameters
    as they are (file dtype, CPU): move/cast the module afterwards.  Otherwise values are copied into
    the existing parameters (cast to their dtype and device).
    """
    check_state_dict(module, state, what=what, source=source, hint=hint)
    module.load_state_dict(dict(state), strict=True, assign=assign)
    log.info("loaded weights what=%s source=%s tensors=%d", what, source, len(state))
