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

__all__ = ["RepeatCounter", "bench_command", "distinct_figures", "run_bench", "run_live_bench", "run_soak", "soak_figures"]

log = logging.getLogger(__name__)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _decoder_figures(gen: Any) -> dict[str, Any]:
    """Which of the default idol's decoders draws the frames and at what size (before resampling to the output);
    nothing for a generator without them (the Wan tier)."""
    which = getattr(gen, "which_decoder", None)
    return {} if which is None else {"decoder": which, "decoded_resolution": "{}x{}".format(*gen.decoded_size)}


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
    # what the caching allocator holds decides whether the tier fits a card (the 24 GB mode), not only what is allocated
    reserved_all = torch.cuda.max_memory_reserved() / 2**20 if cuda else None
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
    reserved = None
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        reserved = torch.cuda.max_memory_reserved() / 2**20
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
        **_decoder_figures(gen),
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
        **({"peak_reserved_mib": round(reserved, 1), "peak_reserved_with_load_mib": round(reserved_all, 1)}
           if reserved is not None and reserved_all is not None else {}),
        "first_frame_latency_ms": round(1000 * first_frame_s, 1),
        "load_seconds": round(load_s, 2),
        "model_family": cfg.model.family,
        **({"decoder": cfg.model.wan.decoder, "text_encoder_device": cfg.model.wan.text_encoder_device,
            "text_encoder_offload": cfg.model.wan.text_encoder_offload} if cfg.model.family == "wan" else {}),
    }


def bench_command(i: int) -> Any:
    """The live benches' ``i``-th command, as chat traffic mixes them: even ones an action (every one-shot action
    in turn), odd ones an emotion (every emotion in turn), so what an emotion costs (the emotion guidance's extra
    pass while one of ``model.emotion_guidance_for`` is held) is in the figures."""
    from backend.events import Command, CommandKind

    if i % 2 == 0:
        shots = [a.name for a in ACTIONS if not a.loop]
        return Command(CommandKind.ACT, shots[(i // 2) % len(shots)])
    return Command(CommandKind.EMOTION, EMOTIONS[(i // 2 + 1) % len(EMOTIONS)])


def run_live_bench(cfg: Config, *, seconds: float = 20.0, command_every_s: float = 2.0,
                   warmup_s: float = 2.0, max_warmup_s: float = 120.0,
                   built: tuple[Any, np.ndarray, Any] | None = None) -> dict[str, Any]:
    """The whole streaming engine, paced in real time, with a command every ``command_every_s``: the output
    frame rate and its jitter as a subscriber sees them, and command-to-first-responding-frame latency.

    What it counts: a frame *shown* is one published at a pacer slot; it is *distinct* when it is a frame
    the model generated, shown for the first time; a *repeat* is the last frame published again because the
    next generated one was not ready (the engine's counters; the subscriber checks the same by identity of
    the frame array). There is no frame interpolation: every distinct frame came out of the model.

    Warm-up (not measured): at least ``warmup_s`` and until the KV cache has filled and a few more chunks
    came (compiling and capturing the cached step happens then), at most ``max_warmup_s``. The window also
    reports the steps and chunk sizes held (min/max over the chunks made in it), the per-stage device times
    of the generator (median per chunk: the denoising passes, the cache pass, decode, resampling, host copy),
    the subscriber's wire encoding of a frame, and peak GPU memory.

    ``built``: ``build_generator(cfg)``'s result to use (and leave open) instead of building one, so several
    engine settings can be measured on one generator in one process (each run resets the stream)."""
    import asyncio

    from backend.app import build_generator
    from backend.engine.engine import Engine
    from backend.events import VideoFrame
    from backend.model.generator import StageTimer
    from backend.server.protocol import encode, frame_message

    generator, reference, character = built if built is not None else build_generator(cfg)
    cuda = generator.state.device.startswith("cuda")
    m = cfg.model
    warm_chunks = -(-(m.sink_frames + m.window_frames) // max(1, m.chunk_frames)) + 4  # cache full, then 4

    async def main() -> dict[str, Any]:
        factory = getattr(generator, "conditions_factory", None)  # the Wan tier: commands -> prompt embeddings
        async with Engine(cfg.engine, generator, reference, max_steps=cfg.model.steps,
                          max_chunk_frames=cfg.model.chunk_frames, character=character,
                          conditions=factory() if factory is not None else None) as engine:
            t_load = time.perf_counter()
            await engine.wait_started()
            first_chunk_s = time.perf_counter() - t_load
            sub = engine.subscribe(audio=False)
            arrivals: list[float] = []
            latencies: list[float] = []
            encode_ms: list[float] = []
            repeats = RepeatCounter()
            last_frame: list[Any] = [None]

            async def watch() -> None:
                async for item in sub:
                    if isinstance(item, VideoFrame):
                        arrivals.append(time.perf_counter())
                        repeats.add(item)
                        last_frame[0] = item
                        if repeats.frames % 5 == 1:  # what a loopback client gets: the raw RGBA frame message
                            t0 = time.perf_counter()
                            encode(frame_message(item, "rgba"))
                            encode_ms.append(1000 * (time.perf_counter() - t0))

            async def command(i: int) -> None:
                t0 = time.perf_counter()
                ticket = await engine.submit(bench_command(i))
                if await ticket.shown is not None:
                    latencies.append(time.perf_counter() - t0)

            watcher = asyncio.create_task(watch())
            t_warm = time.perf_counter()
            def warming() -> bool:
                waited = time.perf_counter() - t_warm
                return waited < max_warmup_s and (waited < warmup_s or engine.counters["chunks_made"] < warm_chunks)

            while warming():  # noqa: ASYNC110 - polls the engine's counters and the clock
                await asyncio.sleep(0.1)
            warm_s = time.perf_counter() - t_warm
            timer = StageTimer(cuda) if hasattr(generator, "timer") else None
            if timer is not None:
                generator.timer = timer  # type: ignore[attr-defined]
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            arrivals.clear()
            encode_ms.clear()
            repeats.reset()
            before = engine.status()
            start = time.perf_counter()
            t_engine = engine._clock()
            commands = []
            i = 0
            while time.perf_counter() - start < seconds:
                commands.append(asyncio.create_task(command(i)))
                i += 1
                await asyncio.sleep(command_every_s)
            await asyncio.gather(*commands)
            elapsed = time.perf_counter() - start
            status = engine.status()
            if timer is not None:
                generator.timer = None  # type: ignore[attr-defined]
            watcher.cancel()
            made = [c for c in engine.chunk_log if c[0] >= t_engine]
            jpeg_ms = None
            if last_frame[0] is not None:
                t0 = time.perf_counter()
                for _ in range(3):
                    encode(frame_message(last_frame[0], "jpeg", jpeg_quality=cfg.server.jpeg_quality))
                jpeg_ms = round(1000 * (time.perf_counter() - t0) / 3, 2)
            intervals = np.diff(np.asarray(arrivals)) * 1000
            stages = {k: round(_percentile(v, 50), 2) for k, v in (timer.laps.items() if timer else [])}
            return {
                "device": _device_name(generator), "fps_target": cfg.engine.fps,
                "fps_shown": round(len(arrivals) / elapsed, 2),
                "frame_interval_ms_mean": round(float(intervals.mean()), 2) if intervals.size else None,
                "jitter_ms_std": round(float(intervals.std()), 2) if intervals.size else None,
                "jitter_ms_p99": round(float(np.percentile(np.abs(intervals - 1000 / cfg.engine.fps), 99)), 2)
                if intervals.size else None,
                "commands": len(latencies),
                "commands_issued": i, "emotion_commands": i // 2,  # bench_command: actions and emotions alternate
                "command_to_frame_ms_p50": round(1000 * _percentile(latencies, 50), 1),
                "command_to_frame_ms_p95": round(1000 * _percentile(latencies, 95), 1),
                "command_to_frame_ms_max": round(1000 * max(latencies), 1) if latencies else None,
                "frames_made": status["frames_made"], "frames_shown": status["frames_shown"],
                "frames_repeated": status["frames_repeated"], "frames_dropped": status["frames_dropped"],
                "chunks_restarted_window": status["chunks_restarted"] - before["chunks_restarted"],
                "chunks_finished_for_command_window": status["chunks_finished_for_command"]
                - before["chunks_finished_for_command"],
                "chunks_dropped_window": status["chunks_dropped"] - before["chunks_dropped"],
                "steps_now": status["steps"], "chunk_frames_now": status["chunk_frames"],
                "steps_held_min": min((c[1] for c in made), default=None),
                "steps_held_max": max((c[1] for c in made), default=None),
                "chunk_latents_min": min((c[2] for c in made), default=None),
                "chunk_latents_max": max((c[2] for c in made), default=None),
                "chunks_window": len(made),
                "chunk_worker_ms_p50": round(1000 * _percentile([c[3] for c in made], 50), 1),
                "chunk_worker_ms_p95": round(1000 * _percentile([c[3] for c in made], 95), 1),
                "stage_ms_p50": stages,  # device clock, per chunk: dit (all denoising passes), cache, decode, ...
                "encode_rgba_ms_p50": round(_percentile(encode_ms, 50), 2) if encode_ms else None,
                "encode_jpeg_ms": jpeg_ms,
                "restart_on_command": status["restart_on_command"],
                "decode_stream": getattr(generator, "decode_stream", None) is not None,
                "lookahead_frames": cfg.engine.lookahead_frames, "lookahead_cover": cfg.engine.lookahead_cover,
                "finish_within_s": cfg.engine.finish_within_s,
                "chunk_video_frames": generator.frames_per_chunk(cfg.model.chunk_frames),
                "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                "warmup_s": round(warm_s, 1), "first_chunk_s": round(first_chunk_s, 2),
                "output_resolution": f"{cfg.model.output_width}x{cfg.model.output_height}",
                "native_resolution": "{}x{}".format(*generator.native_size) if hasattr(generator, "native_size")
                else None,
                **_decoder_figures(generator),
                **distinct_figures(before, status, elapsed, repeats),
            }

    try:
        return asyncio.run(main())
    finally:
        close = getattr(generator, "close", None)  # the Wan tier's text-encoder thread
        if close is not None and built is None:
            close()


class RepeatCounter:
    """Counts, on the subscriber's side, frames whose picture is the previous frame's: the engine repeats a
    frame by sending the same array again (``Engine._show`` when its buffer is dry), so identity of the
    array, not a pixel hash, tells a repeat. Call :meth:`reset` where the measurement starts."""

    def __init__(self) -> None:
        self.frames = 0
        self.repeats = 0
        self._last: Any = None

    def add(self, frame: Any) -> None:
        if self._last is not None and frame.rgba is self._last:
            self.repeats += 1
        self.frames += 1
        self._last = frame.rgba

    def reset(self) -> None:
        self.frames = self.repeats = 0


def distinct_figures(before: dict[str, Any], after: dict[str, Any], seconds: float,
                     watched: RepeatCounter | None = None) -> dict[str, Any]:
    """Distinct generated frames per second and the share of repeats among the frames shown between two
    ``Engine.status()`` snapshots (the engine's own counters: a frame shown is either the next generated
    frame or a repeat of the last one)."""
    shown = after["frames_shown"] - before["frames_shown"]
    repeated = after["frames_repeated"] - before["frames_repeated"]
    distinct = shown - repeated
    out: dict[str, Any] = {
        "distinct_fps": round(distinct / seconds, 2) if seconds > 0 else None,
        "repeat_share": round(repeated / shown, 4) if shown else None,
        "frames_shown_window": shown, "frames_repeated_window": repeated, "window_s": round(seconds, 3),
    }
    if "frames_made" in after and "frames_made" in before:  # generated, including chunks dropped by an interruption
        out["generated_fps"] = round((after["frames_made"] - before["frames_made"]) / seconds, 2) if seconds > 0 else None
    if watched is not None:
        out["subscriber_repeat_share"] = round(watched.repeats / watched.frames, 4) if watched.frames else None
    return out


def _device_name(generator: Any) -> str:
    state = generator.state
    if state.device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"cpu ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------- soak


def _rss_mib() -> float:
    """This process's resident memory now (Linux /proc; elsewhere the peak, the best the stdlib offers)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def soak_figures(arrivals: list[float], memory: list[tuple[float, float]], *, fps: float, seconds: float,
                 frames_shown: int, frames_repeated: int, warmup_s: float = 60.0) -> dict[str, Any]:
    """The soak's figures from what it recorded (pure, so tests feed it numbers).

    ``arrivals``: wall seconds at which the subscriber got each frame; ``memory``: (wall seconds since the
    start, MiB) samples. A *stall* is a gap between frames longer than two frame intervals. The memory slope
    is a least-squares line through the samples after ``warmup_s`` (all of them when the run is shorter)."""
    gaps = np.diff(np.asarray(arrivals, dtype=np.float64))
    limit = 2.0 / fps
    stalls = gaps[gaps > limit]
    late = [(t, m) for t, m in memory if t >= warmup_s]
    points = late if len(late) >= 3 else memory
    slope = None
    if len(points) >= 2 and points[-1][0] > points[0][0]:
        t, m = np.asarray(points, dtype=np.float64).T
        slope = float(np.polyfit(t / 3600.0, m, 1)[0])
    mem = [m for _, m in memory]
    quarter = max(1, len(points) // 4)  # RSS swings with the allocator: medians of the first/last quarter
    first_q = float(np.median([m for _, m in points[:quarter]])) if points else None
    last_q = float(np.median([m for _, m in points[-quarter:]])) if points else None
    return {
        "soak_seconds": round(seconds, 1),
        "fps_target": fps,
        "fps_shown": round(len(arrivals) / seconds, 2) if seconds > 0 else None,
        "distinct_fps": round((frames_shown - frames_repeated) / seconds, 2) if seconds > 0 else None,
        "repeated_share": round(frames_repeated / frames_shown, 4) if frames_shown else None,
        "stalls": int(stalls.size),
        "stall_seconds": round(float(stalls.sum()), 3),
        "longest_gap_ms": round(1000 * float(gaps.max()), 1) if gaps.size else None,
        "memory_mib_start": round(mem[0], 1) if mem else None,
        "memory_mib_end": round(mem[-1], 1) if mem else None,
        "memory_mib_max": round(max(mem), 1) if mem else None,
        "memory_slope_mib_per_hour": None if slope is None else round(slope, 2),
        "memory_mib_median_first_quarter": None if first_q is None else round(first_q, 1),
        "memory_mib_median_last_quarter": None if last_q is None else round(last_q, 1),
    }


def run_soak(cfg: Config, *, minutes: float, command_every_s: float = 2.0, sample_every_s: float = 5.0,
             warmup_s: float = 60.0, progress: Any = None) -> dict[str, Any]:
    """`liveidol bench --live --minutes N`: the whole engine in real time for ``minutes`` with a command every
    ``command_every_s``; reports memory slope (MiB/hour after ``warmup_s``), stalls (frame gaps over two
    intervals), the share of repeated frames, and distinct (newly generated) frames shown per second.
    ``progress(dict)`` (optional) gets the running figures at every memory sample."""
    import asyncio

    from backend.app import build_generator
    from backend.engine.engine import Engine
    from backend.events import VideoFrame

    generator, reference, character = build_generator(cfg)
    cuda = generator.state.device.startswith("cuda")

    def memory_now() -> float:
        return torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mib()

    async def main() -> dict[str, Any]:
        async with Engine(cfg.engine, generator, reference, max_steps=cfg.model.steps,
                          max_chunk_frames=cfg.model.chunk_frames, character=character) as engine:
            await engine.wait_started()
            sub = engine.subscribe(audio=False)
            arrivals: list[float] = []
            memory: list[tuple[float, float]] = []
            latencies: list[float] = []

            async def watch() -> None:
                async for item in sub:
                    if isinstance(item, VideoFrame):
                        arrivals.append(time.perf_counter())

            async def command(i: int) -> None:
                t0 = time.perf_counter()
                try:
                    ticket = await engine.submit(bench_command(i))
                    if await ticket.shown is not None:
                        latencies.append(time.perf_counter() - t0)
                except asyncio.CancelledError:
                    pass

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(2.0)  # warm-up: first chunks, compute policy settling
            arrivals.clear()
            base = engine.status()
            start = time.perf_counter()
            commands: set[asyncio.Task[None]] = set()
            next_command, next_sample, i = start, start, 0
            while (now := time.perf_counter()) - start < minutes * 60:
                if now >= next_command:
                    task = asyncio.create_task(command(i))
                    commands.add(task)
                    task.add_done_callback(commands.discard)
                    i += 1
                    next_command += command_every_s
                if now >= next_sample:
                    memory.append((now - start, memory_now()))
                    next_sample += sample_every_s
                    if progress is not None:
                        st = engine.status()
                        progress({"t_s": round(now - start, 1), "memory_mib": round(memory[-1][1], 1),
                                  "frames_shown": st["frames_shown"] - base["frames_shown"],
                                  "frames_repeated": st["frames_repeated"] - base["frames_repeated"],
                                  "steps": st["steps"], "chunk_frames": st["chunk_frames"]})
                await asyncio.sleep(max(0.0, min(next_command, next_sample) - time.perf_counter()))
            elapsed = time.perf_counter() - start
            memory.append((elapsed, memory_now()))
            status = engine.status()
            watcher.cancel()
            for task in list(commands):
                task.cancel()
            await asyncio.gather(watcher, *commands, return_exceptions=True)
            figures = soak_figures(arrivals, memory, fps=cfg.engine.fps, seconds=elapsed,
                                   frames_shown=status["frames_shown"] - base["frames_shown"],
                                   frames_repeated=status["frames_repeated"] - base["frames_repeated"],
                                   warmup_s=warmup_s)
            return {
                "device": _device_name(generator), **figures,
                "memory_kind": "cuda_allocated" if cuda else "process_rss",
                "commands": i, "commands_shown": len(latencies),
                "command_to_frame_ms_p50": round(1000 * _percentile(latencies, 50), 1),
                "command_to_frame_ms_p95": round(1000 * _percentile(latencies, 95), 1),
                "steps_now": status["steps"], "chunk_frames_now": status["chunk_frames"],
                "output_resolution": f"{cfg.model.output_width}x{cfg.model.output_height}",
            }

    return asyncio.run(main())
