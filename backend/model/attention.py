"""Attention kernels: PyTorch SDPA, or 8-bit SageAttention on CUDA.

The DiT calls one :class:`Attention` object with q, k, v in the Wan layout ``(B, S, H, D)`` ("NHD").
:func:`select_attention` picks the kernel from ``ModelConfig.attention``:

* ``'sdpa'``: ``torch.nn.functional.scaled_dot_product_attention`` (every device).
* ``'sage'``: ``sageattention.sageattn`` (CUDA only; an error if it cannot run here).
* ``'auto'``: SDPA on CPU and on Hopper (sm90: SageAttention 1.x is slower there than SDPA),
  SageAttention on other CUDA GPUs when the package is installed, SDPA otherwise.

PITFALL (sageattention 1.x, ``smooth_k=True``): ``sageattn`` subtracts the mean of k IN PLACE. The
keys it gets are usually a slice of the KV cache, so :class:`SageAttention` always hands it a fresh
copy (``clone``), never a view: ``.contiguous()`` is not enough, it returns the cache itself when the
slice is already contiguous.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

__all__ = ["Attention", "AttentionBackendError", "FlexAttention", "SageAttention", "SdpaAttention", "select_attention"]

logger = logging.getLogger(__name__)

SageFn = Callable[..., torch.Tensor]


class AttentionBackendError(RuntimeError):
    """The requested attention kernel cannot run on this machine."""


class Attention:
    """Non-causal attention over ``(B, S, H, D)`` tensors; returns ``(B, Sq, H, D)`` in q's dtype."""

    name = "base"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        """``mask``: optional bool ``(Sq, Sk)``, True where a query may attend (training's block mask)."""
        raise NotImplementedError


class SdpaAttention(Attention):
    """PyTorch scaled-dot-product attention, default 1/sqrt(D) scale, no mask."""

    name = "sdpa"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        assert q.ndim == 4 and k.shape == v.shape and q.shape[-1] == k.shape[-1], (
            f"attention wants (B, S, H, D) q/k/v, got q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask)  # (B, H, Sq, D)
        return out.transpose(1, 2).type_as(q)


class SageAttention(Attention):
    """``sageattention.sageattn`` (8-bit QK). ``fn`` is injectable for tests; the default imports the package."""

    name = "sage"

    def __init__(self, fn: SageFn | None = None) -> None:
        if fn is None:
            try:
                from sageattention import sageattn
            except ImportError as exc:
                raise AttentionBackendError(
                    "model.attention = 'sage' but the sageattention package is not installed "
                    "(pip install sageattention; CUDA only)") from exc
            fn = sageattn
        self._fn = fn

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:  # sageattn has no arbitrary masks: the (training-only) masked path uses SDPA
            return _SDPA(q, k, v, mask)
        # sageattn's smooth_k edits k in place: give it a private copy, never a view of the cache.
        k_copy = k.clone(memory_format=torch.contiguous_format)
        out = self._fn(q.contiguous(), k_copy, v.contiguous(), tensor_layout="NHD", is_causal=False)
        return out.type_as(q)


_SDPA = SdpaAttention()


class FlexAttention(Attention):
    """Training's block-sparse masked attention: ``torch.nn.attention.flex_attention`` with a block mask
    built from the frame-level mask, so the fully masked tiles (about 70% of training's block-causal
    window mask) are skipped instead of computed and discarded. Compiled on CUDA, eager elsewhere (tests).

    ``frame_mask(mask, frame_tokens)`` turns a bool ``(F, F)`` frame mask into the block mask that
    ``__call__`` takes (cached per distinct mask: training uses a handful). Calls without a mask
    (cross-attention) go to SDPA.
    """

    name = "flex"

    def __init__(self, *, compile: bool = True) -> None:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self._create = create_block_mask
        self._fn = torch.compile(flex_attention, dynamic=False) if compile else flex_attention
        self._masks: dict[tuple[bytes, int, str], BlockMask] = {}

    def frame_mask(self, mask: torch.Tensor, frame_tokens: int) -> BlockMask:
        f = mask.shape[0]
        key = (mask.cpu().numpy().tobytes(), frame_tokens, str(mask.device))  # F*F bytes: the size is in the key
        if key not in self._masks:
            frames = mask.clone()

            def mask_mod(b, h, q_idx, kv_idx):  # flex's signature
                return frames[q_idx // frame_tokens, kv_idx // frame_tokens]

            s = f * frame_tokens
            self._masks[key] = self._create(mask_mod, None, None, s, s, device=mask.device)
        return self._masks[key]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,  # type: ignore[override]
                 mask: BlockMask | None = None) -> torch.Tensor:
        if mask is None:
            return _SDPA(q, k, v)
        out = self._fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask)  # (B, H, S, D)
        return out.transpose(1, 2).type_as(q)


def _is_hopper(device: torch.device) -> bool:
    major, _minor = torch.cuda.get_device_capability(device)
    return major == 9


def _sage_installed() -> bool:
    try:
        import sageattention  # noqa: F401
    except ImportError:
        return False
    return True


def select_attention(choice: str, device: torch.device | str, *, dtype: torch.dtype = torch.bfloat16,
                     sage_fn: SageFn | None = None) -> Attention:
    """The attention kernel for ``choice`` ('auto' | 'sdpa' | 'sage') on ``device``; logs the choice.

    SageAttention takes float16/bfloat16 only: with a float32 model 'auto' picks SDPA.

    Raises :class:`AttentionBackendError` when 'sage' is forced where it cannot run.
    """
    device = torch.device(device)
    if choice not in ("auto", "sdpa", "sage"):
        raise AttentionBackendError(f"model.attention = {choice!r}: expected 'auto', 'sdpa' or 'sage'")
    if choice == "sage":
        if device.type != "cuda":
            raise AttentionBackendError(
                f"model.attention = 'sage' needs a CUDA device, but the model runs on {device.type!r}; "
                "use 'auto' or 'sdpa'")
        if dtype not in (torch.float16, torch.bfloat16):
            raise AttentionBackendError(
                f"model.attention = 'sage' needs model.dtype bfloat16 or float16, not {str(dtype).removeprefix('torch.')}")
        backend: Attention = SageAttention(sage_fn)
        reason = "forced"
    elif choice == "sdpa":
        backend, reason = SdpaAttention(), "forced"
    elif device.type != "cuda":
        backend, reason = SdpaAttention(), "not cuda"
    elif dtype not in (torch.float16, torch.bfloat16):
        backend, reason = SdpaAttention(), "float32 model: sageattention takes fp16/bf16 only"
    elif _is_hopper(device):
        backend, reason = SdpaAttention(), "hopper (sm90): sdpa is faster than sageattention 1.x"
    elif sage_fn is not None or _sage_installed():
        backend, reason = SageAttention(sage_fn), "cuda, sageattention installed"
    else:
        backend, reason = SdpaAttention(), "sageattention not installed"
    logger.info("attention kernel selected backend=%s device=%s reason=%s", backend.name, device, reason)
    return backend
