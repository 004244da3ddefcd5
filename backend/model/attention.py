"""Attention kernels: PyTorch SDPA, 8-bit SageAttention on CUDA, or block-sparse attention over the context.

The DiT calls one :class:`Attention` object with q, k, v in the Wan layout ``(B, S, H, D)`` ("NHD").
:func:`select_attention` picks the kernel from ``ModelConfig.attention``:

* ``'sdpa'``: ``torch.nn.functional.scaled_dot_product_attention`` (every device).
* ``'sage'``: ``sageattention.sageattn`` (CUDA only; an error if it cannot run here).
* ``'sparse'``: :class:`SparseAttention`, training-free block-sparse attention (an approximation: each
  query block attends to the ``model.sparse_keep`` fraction of key blocks its pooled scores rank highest).
* ``'auto'``: SDPA on CPU; on Hopper (sm90) SDPA with cuDNN's kernel first (1.6 ms against flash's 3.0 ms
  at the Wan-1.3B chunk shape on an H200; SageAttention 1.x is slower there too); SageAttention on other
  CUDA GPUs when the package is installed, SDPA otherwise.

PITFALL (sageattention 1.x, ``smooth_k=True``): ``sageattn`` subtracts the mean of k IN PLACE. The
keys it gets are usually a slice of the KV cache, so :class:`SageAttention` always hands it a fresh
copy (``clone``), never a view: ``.contiguous()`` is not enough, it returns the cache itself when the
slice is already contiguous.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

__all__ = ["Attention", "AttentionBackendError", "FlexAttention", "SageAttention", "SdpaAttention", "SparseAttention",
           "select_attention"]

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
    """PyTorch scaled-dot-product attention, default 1/sqrt(D) scale, no mask.

    ``prefer``: SDPA backends to try first, in order (e.g. cuDNN on Hopper); None = PyTorch's own order.
    """

    name = "sdpa"

    def __init__(self, prefer: list[SDPBackend] | None = None) -> None:
        self._prefer = None if prefer is None else [*prefer, *(b for b in _ALL_SDPA if b not in prefer)]
        if prefer:
            self.name = "sdpa-" + prefer[0].name.lower().removesuffix("_attention")

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        assert q.ndim == 4 and k.shape == v.shape and q.shape[-1] == k.shape[-1], (
            f"attention wants (B, S, H, D) q/k/v, got q {tuple(q.shape)} k {tuple(k.shape)} v {tuple(v.shape)}")
        if self._prefer is None or not q.is_cuda:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask)  # (B, H, Sq, D)
        else:
            with sdpa_kernel(self._prefer, set_priority=True):
                out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                     attn_mask=mask)
        return out.transpose(1, 2).type_as(q)


_ALL_SDPA = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


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


class SparseAttention(Attention):
    """Training-free block-sparse attention (SpargeAttention's block selection, on FlexAttention).

    Queries and keys are cut into blocks of ``block`` tokens and mean-pooled; the pooled scores
    ``q_blk . k_blk`` rank the key blocks for each query block and head, and the top ``keep`` fraction
    (at least one block) is attended exactly, the rest skipped. SpargeAttention keeps blocks up to a
    cumulative softmax mass instead; a fixed count keeps every call's shapes fixed (graph capture).
    An approximation: its deviation from dense attention is measured by ``liveidol bench --model``.
    Masked calls (training) and calls of one key block go to SDPA. Compiled on CUDA, eager elsewhere.
    """

    name = "sparse"

    def __init__(self, keep: float, *, block: int = 128, compile: bool = True) -> None:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention

        if not 0.0 < keep <= 1.0:
            raise AttentionBackendError(f"model.sparse_keep = {keep}: expected a fraction in (0, 1]")
        self.keep, self.block = keep, block
        self._block_mask = BlockMask
        self._fn = torch.compile(flex_attention, dynamic=False) if compile else flex_attention
        self._selected: dict[tuple, tuple[torch.Tensor, Callable[..., torch.Tensor]]] = {}

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, S, D) -> (B, H, ceil(S / block), D) block means (a short last block averages what it has)."""
        s, blk = x.shape[2], self.block
        nb = -(-s // blk)
        padded = F.pad(x.float(), (0, 0, 0, nb * blk - s))
        sums = padded.unflatten(2, (nb, blk)).sum(dim=3)
        counts = torch.full((nb,), float(blk), device=x.device)
        counts[-1] = s - (nb - 1) * blk
        return sums / counts[:, None]

    def block_mask(self, qh: torch.Tensor, kh: torch.Tensor) -> Any:
        """The block mask of the top ``keep`` key blocks per query block; ``qh``/``kh``: (B, H, S, D).

        The picked blocks are given as full blocks (the fused kernel attends to them whole and skips the
        rest) and as a mask function over a persistent selection buffer, refilled in place each call (the
        unfused path, used off CUDA, applies it element-wise; one function object per shape, so the compiled
        kernel is never rebuilt)."""
        b, h, sq, sk = qh.shape[0], qh.shape[1], qh.shape[2], kh.shape[2]
        scores = self._pool(qh) @ self._pool(kh).transpose(-1, -2)  # (B, H, nq, nk)
        nq, nk = scores.shape[-2:]
        n = max(1, min(nk, math.ceil(self.keep * nk)))
        picked = scores.topk(n, dim=-1).indices.sort(dim=-1).values  # ascending: key locality
        key = (b, h, nq, nk, str(qh.device))
        if key not in self._selected:
            selected = torch.zeros((b, h, nq, nk), dtype=torch.bool, device=qh.device)
            blk = self.block

            def mask_mod(bi, hi, q_idx, kv_idx):  # flex's signature
                return selected[bi, hi, q_idx // blk, kv_idx // blk]

            self._selected[key] = (selected, mask_mod)
        selected, mask_mod = self._selected[key]
        selected.zero_()
        selected.scatter_(-1, picked, True)
        indices = torch.zeros((b, h, nq, nk), dtype=torch.int32, device=qh.device)
        indices[..., :n] = picked.to(torch.int32)
        counts = torch.full((b, h, nq), n, dtype=torch.int32, device=qh.device)
        none = torch.zeros_like(counts)
        kwargs: dict[str, Any] = dict(full_kv_num_blocks=counts, full_kv_indices=indices, BLOCK_SIZE=self.block,
                                      mask_mod=mask_mod, seq_lengths=(sq, sk))
        try:
            return self._block_mask.from_kv_blocks(none, indices, compute_q_blocks=False, **kwargs)
        except TypeError:  # older torch: no compute_q_blocks
            return self._block_mask.from_kv_blocks(none, indices, **kwargs)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: object = None) -> torch.Tensor:
        if mask is not None or k.shape[1] <= self.block or self.keep >= 1.0:
            return _SDPA(q, k, v, mask)  # type: ignore[arg-type]
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, S, D)
        out = self._fn(qh, kh, vh, block_mask=self.block_mask(qh, kh))
        return out.transpose(1, 2).type_as(q)  # type: ignore[union-attr]


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
                     sage_fn: SageFn | None = None, sparse_keep: float = 0.25) -> Attention:
    """The attention kernel for ``choice`` ('auto' | 'sdpa' | 'sage' | 'sparse') on ``device``; logs the choice.

    SageAttention takes float16/bfloat16 only: with a float32 model 'auto' picks SDPA.

    Raises :class:`AttentionBackendError` when 'sage' is forced where it cannot run.
    """
    device = torch.device(device)
    if choice not in ("auto", "sdpa", "sage", "sparse"):
        raise AttentionBackendError(f"model.attention = {choice!r}: expected 'auto', 'sdpa', 'sage' or 'sparse'")
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
    elif choice == "sparse":
        backend, reason = SparseAttention(sparse_keep, compile=device.type == "cuda"), f"forced, keep={sparse_keep}"
    elif choice == "sdpa":
        backend, reason = SdpaAttention(), "forced"
    elif device.type != "cuda":
        backend, reason = SdpaAttention(), "not cuda"
    elif dtype not in (torch.float16, torch.bfloat16):
        backend, reason = SdpaAttention(), "float32 model: sageattention takes fp16/bf16 only"
    elif _is_hopper(device):
        backend = SdpaAttention(prefer=[SDPBackend.CUDNN_ATTENTION])
        reason = "hopper (sm90): cuDNN SDPA first, faster than flash SDPA and sageattention 1.x"
    elif sage_fn is not None or _sage_installed():
        backend, reason = SageAttention(sage_fn), "cuda, sageattention installed"
    else:
        backend, reason = SdpaAttention(), "sageattention not installed"
    logger.info("attention kernel selected backend=%s device=%s reason=%s", backend.name, device, reason)
    return backend
