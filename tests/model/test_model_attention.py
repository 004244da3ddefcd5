"""Attention kernel selection and the SageAttention in-place pitfall."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from backend.config import DiTSizes
from backend.model.attention import AttentionBackendError, SageAttention, SdpaAttention, select_attention
from backend.model.dit import CausalDiT
from backend.model.kv_cache import CrossAttentionCache, KVCache


def test_auto_picks_sdpa_on_cpu_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="backend.model.attention"):
        backend = select_attention("auto", "cpu", sage_fn=lambda *a, **k: None)
    assert isinstance(backend, SdpaAttention)
    assert "backend=sdpa" in caplog.text


def test_forcing_sage_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(AttentionBackendError, match="'sage' needs a CUDA device"):
        select_attention("sage", "cpu")
    with pytest.raises(AttentionBackendError, match="expected 'auto', 'sdpa', 'sage' or 'sparse'"):
        select_attention("flash", "cpu")


class FakeSage:
    """MOCK of ``sageattention.sageattn`` (it needs CUDA, which this machine lacks): it smooths k
    IN PLACE like the real kernel (smooth_k) and then computes exact attention. Subtracting k's
    mean over tokens leaves softmax unchanged, so results equal SDPA unless the caller's tensor
    was modified through a shared view."""

    def __init__(self) -> None:
        self.ks: list[torch.Tensor] = []

    def __call__(self, q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, smooth_k=True):
        assert tensor_layout == "NHD" and not is_causal
        self.ks.append(k)
        k -= k.mean(dim=1, keepdim=True)  # in place, as smooth_k does
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _run(attn, steps: int = 3):
    torch.manual_seed(0)
    sizes = DiTSizes(dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=16, text_len=8)
    dit = CausalDiT(sizes, attention=attn).eval()
    kv = KVCache(num_layers=2, heads=2, head_dim=16, frame_tokens=4, sink_frames=1, window_frames=4)
    cross = CrossAttentionCache(2)
    ctx = torch.randn(1, 8, 16)
    outs = []
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for c in range(steps):
            x = torch.randn(1, 16, 2, 4, 4, generator=gen)
            for t in (1000.0, 0.0):
                outs.append(dit(x, torch.full((1, 2), t), ctx, start_frame=2 * c, cache=kv, cross_cache=cross))
    return outs, kv


def test_sage_path_hands_a_copy_never_a_cache_view() -> None:
    fake = FakeSage()
    sage_outs, sage_kv = _run(SageAttention(fake))
    ref_outs, ref_kv = _run(SdpaAttention())
    assert fake.ks, "the fake kernel was never called"
    for k in fake.ks:
        assert k.untyped_storage().data_ptr() != sage_kv.k.untyped_storage().data_ptr()
    torch.testing.assert_close(sage_kv.k, ref_kv.k)  # the cache was not smoothed in place
    for a, b in zip(sage_outs, ref_outs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_preferred_sdpa_kernel_and_sparse_choice() -> None:
    from torch.nn.attention import SDPBackend

    from backend.model.attention import SparseAttention

    cudnn = SdpaAttention(prefer=[SDPBackend.CUDNN_ATTENTION])  # what 'auto' picks on Hopper
    assert cudnn.name == "sdpa-cudnn"
    q, k, v = (torch.randn(1, n, 2, 8) for n in (5, 7, 7))
    torch.testing.assert_close(cudnn(q, k, v), SdpaAttention()(q, k, v))  # same function (CPU: PyTorch's kernel)
    sparse = select_attention("sparse", "cpu", sparse_keep=0.5)
    assert isinstance(sparse, SparseAttention) and sparse.keep == 0.5
    with pytest.raises(AttentionBackendError, match="sparse_keep"):
        select_attention("sparse", "cpu", sparse_keep=0.0)
