"""FP8 (e4m3) linear layers with per-row scales: ``torch._scaled_mm`` on GPUs with FP8 matrix units.

Weights are quantised once, per output row (``scale_w[n] = max|W[n, :]| / 448``); activations per row at
every call (``scale_x[m] = max|x[m, :]| / 448``), so one outlier token or channel row does not flatten the
rest. The product ``x_q @ W_q^T`` runs on the FP8 tensor cores with both scale vectors applied in its
epilogue and a bfloat16 output. Under ``torch.compile`` the activation quantisation fuses into the
kernel that produced ``x``.

Only the DiT blocks' per-token linears are swapped (self-attention q/k/v/o, cross-attention q/o, the FFN):
the cross-attention k/v run once per prompt and the embeddings and head are small, so they stay dense.

On a CPU (tests) or a GPU without FP8 matrix units the same quantised numbers are multiplied in float32
(:meth:`Fp8Linear.forward` emulates the kernel), so the quantisation error can be checked anywhere.

Usage::

    n = quantize_blocks_(dit)   # in place; returns how many linears were swapped
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["E4M3_MAX", "Fp8Linear", "fp8_supported", "quantize_blocks_"]

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
_FP8 = torch.float8_e4m3fn


def fp8_supported(device: torch.device | str) -> bool:
    """True on CUDA GPUs with FP8 matrix units (compute capability 8.9: Ada, 9.0: Hopper, and later)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def _row_scales(x: torch.Tensor) -> torch.Tensor:
    """float32 ``(M, 1)`` scales that map each row's largest magnitude to the e4m3 maximum."""
    return x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX


class Fp8Linear(nn.Module):
    """A frozen ``nn.Linear`` with e4m3 weights and per-row scales (inference only)."""

    weight: torch.Tensor  # (N, K) float8_e4m3fn
    scale: torch.Tensor  # (1, N) float32
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        n, k = linear.weight.shape
        if n % 16 or k % 16:
            raise ValueError(f"Fp8Linear: FP8 matrix products need sizes that are multiples of 16, got {n}x{k}")
        w = linear.weight.detach().float()
        scale = _row_scales(w)  # (N, 1)
        self.in_features, self.out_features = k, n
        self.out_dtype = linear.weight.dtype
        self.register_buffer("weight", (w / scale).clamp(-E4M3_MAX, E4M3_MAX).to(_FP8))  # (N, K) row-major
        self.register_buffer("scale", scale.view(1, n).contiguous())  # (1, N) float32
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.use_kernel = fp8_supported(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        xs = _row_scales(x2)  # (M, 1)
        xq = (x2.float() / xs).clamp(-E4M3_MAX, E4M3_MAX).to(_FP8)
        if self.use_kernel and x.is_cuda:
            # b = W^T as a column-major (K, N) view: what the FP8 GEMM wants
            out = torch._scaled_mm(xq, self.weight.t(), scale_a=xs, scale_b=self.scale, out_dtype=torch.bfloat16)
        else:  # the same quantised numbers in float32 (CPU / no FP8 units): for checks, not for speed
            out = (xq.float() * xs) @ (self.weight.float() * self.scale.t()).t()
        out = out.to(self.out_dtype if x.dtype == self.out_dtype else x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 per-row"


def quantize_blocks_(dit: nn.Module) -> int:
    """Swap the per-token linears of every DiT block for :class:`Fp8Linear`, in place; returns the count."""
    swapped = 0
    for block in dit.blocks:  # type: ignore[union-attr]
        for parent, names in ((block.self_attn, ("q", "k", "v", "o")), (block.cross_attn, ("q", "o")),
                              (block.ffn, ("0", "2"))):
            for name in names:
                lin = getattr(parent, name) if not name.isdigit() else parent[int(name)]
                if not isinstance(lin, nn.Linear):
                    continue
                fp8 = Fp8Linear(lin)
                if name.isdigit():
                    parent[int(name)] = fp8
                else:
                    setattr(parent, name, fp8)
                swapped += 1
    return swapped
