"""`liveidol bench`: generate for a while under the configured model and report speed and memory.

The figures are for the generator alone (sampling, decode, upscale to the output size), run back to back in
one thread, which is what the engine's worker thread does; pacing and the network are not included.
"""

from __future__ import annotations

import logging
import random
import resource
import sys
import time
from typing import Any

import numpy as np
import torch

from backend.actions import ACTIONS, EMOTIONS
from backend.config import Config

__all__ = ["run_bench"]

log = logging.getLogger(__name__)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_bench(cfg: Config, *, seconds: float = 10.0, warmup_chunks: int = 3) -> dict[str, Any]:
    """Generate for ``seconds`` (after warm-up) and return the figures as a dict (printed as one JSON line)."""
    from backend.app import build_generator
    from backend.model.generator import Conditions

    t_start = time.perf_counter()
    gen, reference, _ = build_generator(cfg)  # exactly what `liveidol serve` runs (background included)
    load_s = time.perf_counter() - t_start
    factory = getattr(gen, "conditions_factory", None)  # the Wan tier: commands become prompt embeddings
    make = factory() if factory is not None else (lambda a, e, p: Conditions(action=a, emotion=e))
    cuda = gen.state.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()  # first-frame latency: reset (the avatar into the sink) + the first chunk
    gen.reset(reference, make("idle", "neutral", ""))
    gen.next_chunk(make("idle", "neutral", ""))
    sync()
    first_frame_s = time.perf_counter() - t0
    rng = random.Random(cfg.model.seed)

    def conditions(i: int) -> Conditions:  # a new command every 3 chunks, as a busy chat would send
        return make(ACTIONS[(i // 3) % len(ACTIONS)].name, EMOTIONS[(i // 7) % len(EMOTIONS)], "")

    n = 0
    for n in range(warmup_chunks):
        gen.next_chunk(conditions(n))
    sync()
    peak_all = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    latencies: list[float] = []
    frames = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += 1
        t0 = time.perf_counter()
        mouth = np.asarray([rng.random() for _ in range(gen.frames_per_chunk())], dtype=np.float32)
        out = gen.next_chunk(conditions(n), mouth=mouth)
        sync()
        latencies.append(time.perf_counter() - t0)
        frames += out.shape[0]
    elapsed = time.perf_counter() - start
    state = gen.state
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = rss / 2**20 if sys.platform == "darwin" else rss / 1024
    native_w, native_h = gen.native_size
    out_w, out_h = gen.output_size
    close = getattr(gen, "close", None)  # the Wan tier's text-encoder thread
    if close is not None:
        close()
    return {
        "device": _device_name(gen),
        "dtype": state.dtype,
        "attention": state.attention_backend,
        "compiled": state.compiled,
        "linears": state.linears,
        "checkpoint": cfg.model.checkpoint,
        "parameters": gen.parameter_count,
        "native_resolution": f"{native_w}x{native_h}",
        "output_resolution": f"{out_w}x{out_h}",
        "steps": state.steps,
        "chunk_latent_frames": state.chunk_frames,
        "chunk_video_frames": gen.frames_per_chunk(),
        "frames": frames,
        "seconds": round(elapsed, 3),
        "fps": round(frames / elapsed, 2),
        "chunk_latency_ms_p50": round(1000 * _percentile(latencies, 50), 2),
        "chunk_latency_ms_p95": round(1000 * _percentile(latencies, 95), 2),
        "cache_mib": round(state.cache_bytes / 2**20, 2),
        "peak_memory_mib": round(peak, 1),
        "peak_memory_kind": "cuda_allocated" if cuda else "process_rss",
        "peak_memory_with_load_mib": round(peak_all, 1) if peak_all is not None else round(peak, 1),
        "first_frame_latency_ms": round(1000 * first_frame_s, 1),
        "load_seconds": round(load_s, 2),
        "model_family": cfg.model.family,
        **({"decoder": cfg.model.wan.decoder, "text_encoder_device": cfg.model.wan.text_encoder_device,
            "text_encoder_offload": cfg.model.wan.text_encoder_offload} if cfg.model.family == "wan" else {}),
    }


def run_live_bench(cfg: Config, *, seconds: float = 20.0, command_every_s: float = 2.0) -> dict[str, Any]:
    """The whole streaming engine, paced in real time, with a command every ``command_every_s``: the output
    frame rate and its jitter as a subscriber sees them, and command-to-first-responding-frame latency."""
    import asyncio

    from backend.app import build_generator
    from backend.engine.engine import Engine
    from backend.events import Command, CommandKind, VideoFrame

    generator, reference, character = build_generator(cfg)
    actions = [a.name for a in ACTIONS if not a.loop]

    async def main() -> dict[str, Any]:
        factory = getattr(generator, "conditions_factory", None)  # the Wan tier: commands -> prompt embeddings
        async with Engine(cfg.engine, generator, reference, max_steps=cfg.model.steps,
                          max_chunk_frames=cfg.model.chunk_frames, character=character,
                          conditions=factory() if factory is not None else None) as engine:
            await engine.wait_started()
            sub = engine.subscribe(audio=False)
            arrivals: list[float] = []
            latencies: list[float] = []

            async def watch() -> None:
                async for item in sub:
                    if isinstance(item, VideoFrame):
                        arrivals.append(time.perf_counter())

            async def command(i: int) -> None:
                t0 = time.perf_counter()
                ticket = await engine.submit(Command(CommandKind.ACT, actions[i % len(actions)]))
                if await ticket.shown is not None:
                    latencies.append(time.perf_counter() - t0)

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(2.0)  # warm-up
            arrivals.clear()
            start = time.perf_counter()
            commands = []
            i = 0
            while time.perf_counter() - start < seconds:
                commands.append(asyncio.create_task(command(i)))
                i += 1
                await asyncio.sleep(command_every_s)
            await asyncio.gather(*commands)
            elapsed = time.perf_counter() - start
            status = engine.status()
            watcher.cancel()
            intervals = np.diff(np.asarray(arrivals)) * 1000
            return {
                "device": _device_name(generator), "fps_target": cfg.engine.fps,
                "fps_shown": round(len(arrivals) / elapsed, 2),
                "frame_interval_ms_mean": round(float(intervals.mean()), 2) if intervals.size else None,
                "jitter_ms_std": round(float(intervals.std()), 2) if intervals.size else None,
                "jitter_ms_p99": round(float(np.percentile(np.abs(intervals - 1000 / cfg.engine.fps), 99)), 2)
                if intervals.size else None,
                "commands": len(latencies),
                "command_to_frame_ms_p50": round(1000 * _percentile(latencies, 50), 1),
                "command_to_frame_ms_p95": round(1000 * _percentile(latencies, 95), 1),
                "frames_made": status["frames_made"], "frames_shown": status["frames_shown"],
                "frames_repeated": status["frames_repeated"], "frames_dropped": status["frames_dropped"],
                "steps_now": status["steps"], "chunk_frames_now": status["chunk_frames"],
                "output_resolution": f"{cfg.model.output_width}x{cfg.model.output_height}",
            }

    try:
        return asyncio.run(main())
    finally:
        close = getattr(generator, "close", None)  # the Wan tier's text-encoder thread
        if close is not None:
            close()


def _device_name(generator: Any) -> str:
    state = generator.state
    if state.device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} threads)"
