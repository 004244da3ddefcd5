"""Time the streaming decoders of the Wan tier at full size with random weights (for the GPU).

    python -m backend.model.wan.bench_decode --device cuda --dtype bf16           # TAEHV and the Wan VAE
    python -m backend.model.wan.bench_decode --which taehv --latent 68x120 --chunks 20
    python -m backend.model.wan.bench_decode --which wan-vae --frames-per-pass 1   # less memory (24 GB GPUs)

One JSON line per decoder: milliseconds per chunk of ``latent_frames`` latent frames (3 by default:
12 video frames, one Self-Forcing chunk) in the steady state of a stream (the stream's first chunk,
which decodes to fewer frames, is part of the warm-up), the decode rate in video frames per second,
peak memory, the size of the streaming state, and the arithmetic (counted on the meta device) with the
rate achieved.  At 960x544 a chunk costs the Wan VAE 53.2 TFLOP and TAEHV 2.1 TFLOP.  Random weights: the arithmetic and memory are those
of the real checkpoints, the pixels are noise.  The default size is 960x544 (latent 120x68).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from backend.model.wan.taehv import TAEHV, StreamingTAEHVDecoder, TAEHVConfig
from backend.model.wan.vae import StreamingWanDecoder, WanVAE, WanVAEConfig

__all__ = ["DECODERS", "bench_decode", "flops_per_chunk"]

DECODERS = ("taehv", "wan-vae")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _peak_rss_mib() -> float:
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _build(which: str, device: torch.device, dtype: torch.dtype, vae_cfg: WanVAEConfig | None,
           taehv_cfg: TAEHVConfig | None, frames_per_pass: int | None = None) -> tuple[torch.nn.Module, Any, int]:
    """(model, streaming decoder, latent channels) with random weights, built on ``device``."""
    with torch.device(device):
        if which == "taehv":
            tae = TAEHV(taehv_cfg or TAEHVConfig()).to(dtype).eval().requires_grad_(False)
            return tae, StreamingTAEHVDecoder(tae), tae.cfg.latent_channels
        if which == "wan-vae":
            vae = WanVAE(vae_cfg or WanVAEConfig()).to(dtype).eval().requires_grad_(False)
            return vae, StreamingWanDecoder(vae, frames_per_pass=frames_per_pass), vae.cfg.z_dim
    raise ValueError(f"bench_decode: unknown decoder {which!r} (choose from {', '.join(DECODERS)})")


def flops_per_chunk(which: str, *, latent_hw: tuple[int, int], latent_frames: int,
                    vae_cfg: WanVAEConfig | None = None, taehv_cfg: TAEHVConfig | None = None) -> int:
    """Floating-point operations (2 per multiply-add) of one steady-state chunk, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    meta = torch.device("meta")
    _model, stream, channels = _build(which, meta, torch.float32, vae_cfg, taehv_cfg)
    z = torch.empty(1, channels, latent_frames, *latent_hw, device=meta)
    stream.step(z)  # the stream's first chunk (special: fewer frames)
    with FlopCounterMode(display=False) as counter:
        stream.step(z)
    return int(counter.get_total_flops())


def bench_decode(which: str, *, latent_hw: tuple[int, int] = (68, 120), latent_frames: int = 3,
                 chunks: int = 10, warmup: int = 2, device: str | torch.device = "cuda",
                 dtype: torch.dtype = torch.bfloat16, vae_cfg: WanVAEConfig | None = None,
                 taehv_cfg: TAEHVConfig | None = None, seed: int = 0,
                 frames_per_pass: int | None = None) -> dict[str, Any]:
    """Decode ``warmup + chunks`` chunks of one stream and time the last ``chunks`` of them.

    ``frames_per_pass``: the Wan VAE's latent frames per decoder pass (None: the whole chunk)."""
    if chunks < 1 or warmup < 1 or latent_frames < 1:
        raise ValueError("bench_decode: chunks, warmup and latent_frames must be >= 1 "
                         f"(got {chunks}, {warmup}, {latent_frames})")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    torch.manual_seed(seed)
    model, stream, channels = _build(which, dev, dtype, vae_cfg, taehv_cfg, frames_per_pass)
    h, w = latent_hw
    gen = torch.Generator(device=dev).manual_seed(seed)
    latents = [torch.randn(1, channels, latent_frames, h, w, generator=gen, device=dev, dtype=dtype)
               for _ in range(warmup + chunks)]
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    stream.reset()
    times_ms, frames = [], 0
    shape: tuple[int, ...] = ()
    for i, z in enumerate(latents):
        sync()
        t0 = time.perf_counter()
        out = stream.step(z)
        sync()
        if i >= warmup:
            times_ms.append((time.perf_counter() - t0) * 1e3)
            frames += out.shape[2]
            shape = tuple(out.shape)
    state_bytes = stream.cache.nbytes if isinstance(stream, StreamingWanDecoder) else sum(
        t.numel() * t.element_size() for t in stream.memory.values())
    ms = statistics.median(times_ms)
    flops = flops_per_chunk(which, latent_hw=latent_hw, latent_frames=latent_frames, vae_cfg=vae_cfg,
                            taehv_cfg=taehv_cfg)
    return {
        "decoder": which,
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "latent": f"{latent_frames}x{h}x{w}",
        "frames_per_pass": frames_per_pass if which == "wan-vae" else None,
        "output": "x".join(map(str, shape[2:])),  # frames x H x W of a steady-state chunk
        "ms_per_chunk_p50": round(ms, 2),
        "ms_per_chunk_mean": round(statistics.fmean(times_ms), 2),
        "ms_per_chunk_max": round(max(times_ms), 2),
        "video_fps": round(frames / (sum(times_ms) / 1e3), 1),
        "tflop_per_chunk": round(flops / 1e12, 4),
        "tflops_achieved": round(flops / (ms / 1e3) / 1e12, 3),
        "chunks_timed": chunks,
        "stream_state_mib": round(state_bytes / 2**20, 3),
        "peak_memory_mib": round(torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else _peak_rss_mib(), 1),
        "peak_memory_kind": "cuda_allocated" if cuda else "process_rss",
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="time the Wan tier's streaming decoders (random full-size weights)")
    ap.add_argument("--which", default=",".join(DECODERS), help=f"comma-separated: {', '.join(DECODERS)}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES))
    ap.add_argument("--latent", default="68x120", help="latent HxW (960x544 video: 68x120)")
    ap.add_argument("--latent-frames", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--frames-per-pass", type=int, default=None, help="Wan VAE: latent frames per decoder pass")
    args = ap.parse_args(argv)
    h, w = (int(s) for s in args.latent.lower().split("x"))
    for which in args.which.split(","):
        result = bench_decode(which.strip(), latent_hw=(h, w), latent_frames=args.latent_frames,
                              chunks=args.chunks, warmup=args.warmup, device=args.device, dtype=_DTYPES[args.dtype],
                              frames_per_pass=args.frames_per_pass)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
