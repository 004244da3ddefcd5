"""`liveidol bench --model wan-1.3b --stages`: the open-model tier's speed, stage by stage, and every approximation's error.

One run reports, for the configured generator at the preset's sizes (random weights: speed does not depend
on their values):

* the generator loop: FPS, chunk latency, the latency of a chunk right after a prompt switch (its first
  frame comes with it), peak GPU memory, and per-stage times from the device clock (:class:`StageTimer`):
  the denoising passes, the cache pass, decode, upscale and the host copy;
* one DiT pass of the same shapes, dense and eager, against the configured fast pass (the ratio);
* the pass table: each lever alone and together (eager SDPA kernels, compiled blocks, CUDA graphs, FP8
  linears, block-sparse attention), its time and its deviation from the dense bf16 eager pass (relative
  L2 of the DiT output), on the full-size random weights; the approximations also on the trained default
  model's own attention and on the tiny equivalence fixtures (``--fixtures``). What exceeds
  :data:`ERROR_BUDGET` anywhere is marked and stays off by default.

Decode: TAEHV (the open tier's tiny decoder, ``backend/model/wan/taehv.py``, taew2_1's architecture with
random weights: the same work as the real one) replaces the small idol's autoencoder for the timing.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from backend.config import Config

__all__ = ["ERROR_BUDGET", "MODEL_PRESETS", "preset_overrides", "rel_l2", "run_model_bench"]

log = logging.getLogger(__name__)

# Largest relative L2 deviation of one DiT pass's output from the dense bf16 eager pass that an
# approximation may cause and still be on by default: about 2.5x what bf16 rounding alone moves between
# exact kernels at the Wan-1.3B shapes (cuDNN vs flash SDPA 0.0067, compiled vs eager 0.0081 on an H200;
# see docs/perf-notes.md).
ERROR_BUDGET = 0.02

# `bench --model NAME`: a thin alias of `bench --checkpoint random` with these sizes (the Wan tier's own
# presets, weights and text encoder come from the open-model tier's `--model`; this is its speed harness).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "wan-1.3b": {
        "model.checkpoint": "random", "model.steps": 4, "model.chunk_frames": 3,
        "model.window_frames": 8, "model.sink_frames": 1, "model.context_noise": 0.0, "model.guidance": 0.0,
        "model.output_width": 960, "model.output_height": 544,
        "model.dit.dim": 1536, "model.dit.ffn_dim": 8960, "model.dit.num_heads": 12, "model.dit.num_layers": 30,
        "model.dit.text_dim": 4096, "model.dit.text_len": 512, "model.dit.num_controls": 0,
        "model.autoencoder.native_width": 960, "model.autoencoder.native_height": 544,
    },
}


def preset_overrides(name: str) -> dict[str, Any]:
    if name not in MODEL_PRESETS:
        raise ValueError(f"--model {name}: unknown model (known: {', '.join(MODEL_PRESETS)})")
    return dict(MODEL_PRESETS[name])


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64."""
    ref64 = ref.double()
    return float((out.double() - ref64).norm() / ref64.norm().clamp(min=1e-30))


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else float("nan")


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _time_ms(fn: Callable[[], Any], cuda: bool, *, warmup: int = 3, reps: int = 10) -> float:
    """Median milliseconds of ``fn()`` (device events on CUDA)."""
    for _ in range(warmup):
        fn()
    _sync(cuda)
    times = []
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times), 2)


def _randomize_head_(dit: nn.Module, seed: int) -> None:
    """Training's init zeroes the head (the flow starts at 0): give it random weights so a pass's output,
    and so its deviation, is not identically zero. Speed does not change."""
    w: torch.Tensor = cast(Any, dit).head.head.weight
    g = torch.Generator(device=w.device).manual_seed(seed)
    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    with torch.no_grad():
        w.copy_(torch.empty(w.shape, device=w.device, dtype=torch.float32).uniform_(-bound, bound, generator=g))


class TaehvRGBA:
    """A generator decoder backed by TAEHV: latents ``(B, F, C, h, w)`` -> RGBA ``(B, T, 4, H, W)`` in [0, 1]
    (alpha 1: the Wan tier has no matte)."""

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        from backend.model.wan.taehv import TAEHV, StreamingTAEHVDecoder

        self.tae = TAEHV.from_config().to(device, dtype).eval().requires_grad_(False)
        self.stream = StreamingTAEHVDecoder(self.tae)
        self._prev: torch.Tensor | None = None  # the Generator's snapshot API reads these two
        self.frames_decoded = 0

    def reset(self) -> None:
        self.stream.reset()
        self.frames_decoded = 0

    def step(self, latents: torch.Tensor) -> torch.Tensor:
        rgb = self.stream.step(latents.permute(0, 2, 1, 3, 4))  # (B, 3, T, H, W) in [-1, 1]
        rgb = ((rgb + 1) * 0.5).permute(0, 2, 1, 3, 4)  # (B, T, 3, H, W)
        alpha = torch.ones_like(rgb[:, :, :1])
        self.frames_decoded += latents.shape[1]
        return torch.cat([rgb, alpha], dim=2)


# ---------------------------------------------------------------------------------------------
# One pass, every lever
# ---------------------------------------------------------------------------------------------


class _PassBench:
    """Repeats the generator's latest chunk pass (it only rewrites its own cache slots: idempotent)."""

    def __init__(self, gen: Any, seed: int = 0) -> None:
        self.gen = gen
        f = gen._last_chunk
        self.start = gen._position - f
        h, w = gen.latent_hw
        g = torch.Generator(device=gen.device).manual_seed(seed)
        c = gen.cfg.autoencoder.latent_channels
        self.x = torch.randn((1, c, f, h, w), generator=g, device=gen.device).to(gen.dtype)  # (B, C, F, h, w)
        self.t = torch.full((1, f), 937.5, device=gen.device)
        self.controls = gen._controls(None, f) if gen.cfg.dit.num_controls else None

    def run(self, fast: Any) -> torch.Tensor:
        g = self.gen
        return fast(self.x, self.t, g._context, start_frame=self.start, cache=g.kv, cross_cache=g.cross,
                     controls=self.controls)


@torch.inference_mode()
def _pass_table(gen: Any, cuda: bool, *, sparse_keeps: tuple[float, ...] = (0.5, 0.25),
                fp8: bool = True) -> list[dict[str, Any]]:
    """Time and deviation of one pass under each lever; the first row is the reference."""
    from backend.model.accel import FastDiT
    from backend.model.attention import SdpaAttention, SparseAttention
    from backend.model.fp8 import fp8_supported, quantize_blocks_

    dit = gen.dit
    pb = _PassBench(gen)
    rows: list[dict[str, Any]] = []
    saved_attn = dit.attention
    ref: torch.Tensor | None = None

    def add(name: str, fast: Any, approx: str = "") -> None:
        nonlocal ref
        try:
            out = pb.run(fast).float()
            ms = _time_ms(lambda: pb.run(fast), cuda)
            out2 = pb.run(fast).float()
        except Exception as exc:  # report the lever as failed, keep measuring the others
            log.warning("pass variant failed name=%s error=%s", name, exc)
            rows.append({"variant": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
            return
        if ref is None:
            ref = out
        row: dict[str, Any] = {"variant": name, "ms": ms, "rel_l2": round(rel_l2(out2, ref), 5)}
        if approx:
            row["approximation"] = approx
        rows.append(row)
        log.info("pass %s", json.dumps(row))

    dit.attention = SdpaAttention()
    add("eager, sdpa (pytorch's choice)", FastDiT(dit))
    if cuda:
        from torch.nn.attention import SDPBackend

        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION):
            dit.attention = SdpaAttention(prefer=[backend])
            add(f"eager, {dit.attention.name}", FastDiT(dit))
    dit.attention = saved_attn
    add(f"eager split halves, {saved_attn.name}", _active(FastDiT(dit)))
    if cuda:
        add("compiled", FastDiT(dit, compile=True))
        add("compiled + cuda graphs", FastDiT(dit, compile=True, graphs=True))
        for keep in sparse_keeps:
            dit.attention = SparseAttention(keep)
            add(f"compiled + graphs + sparse keep={keep}", FastDiT(dit, compile=True, graphs=True),
                f"sparse {keep}")
        dit.attention = saved_attn
        if fp8 and fp8_supported(gen.device):
            q = copy.deepcopy(dit)
            quantize_blocks_(q)
            add("compiled + graphs + fp8 linears", FastDiT(q, compile=True, graphs=True), "fp8")
            if sparse_keeps:
                q.attention = SparseAttention(sparse_keeps[-1])
                add(f"compiled + graphs + fp8 + sparse keep={sparse_keeps[-1]}", FastDiT(q, compile=True, graphs=True),
                    f"fp8 + sparse {sparse_keeps[-1]}")
            del q
    dit.attention = saved_attn
    base = rows[0].get("ms")
    for row in rows:
        if base and row.get("ms"):
            row["speedup_vs_eager"] = round(base / row["ms"], 2)
        if "approximation" in row:
            row["within_budget"] = row["rel_l2"] <= ERROR_BUDGET
    return rows


def _active(fast: Any) -> Any:
    fast.active = True  # the split-halves path without compile or graphs (checks the split itself)
    return fast


@torch.inference_mode()
def approximation_errors(gen: Any, *, sparse_keeps: tuple[float, ...] = (0.5, 0.25), seeds: int = 2
                         ) -> dict[str, float]:
    """Deviation (relative L2, worst over ``seeds`` inputs) of each approximation from the dense pass of
    ``gen``'s own model and state, eager (the trained default model: its own attention)."""
    from backend.model.accel import FastDiT
    from backend.model.attention import SparseAttention
    from backend.model.fp8 import quantize_blocks_

    dit = gen.dit
    saved = dit.attention
    worst: dict[str, float] = {}
    benches = [_PassBench(gen, seed=s) for s in range(seeds)]
    refs = [pb.run(FastDiT(dit)).float() for pb in benches]
    if gen.dtype == torch.bfloat16 and all(
            m.in_features % 16 == 0 and m.out_features % 16 == 0 for m in dit.blocks.modules()
            if isinstance(m, nn.Linear)):
        q = copy.deepcopy(dit)
        quantize_blocks_(q)
        worst["fp8"] = max(rel_l2(pb.run(FastDiT(q)).float(), r) for pb, r in zip(benches, refs))
        del q
    for keep in sparse_keeps:
        dit.attention = SparseAttention(keep, compile=False)
        worst[f"sparse {keep}"] = max(rel_l2(pb.run(FastDiT(dit)).float(), r) for pb, r in zip(benches, refs))
    dit.attention = saved
    return {k: round(v, 5) for k, v in worst.items()}


def fixture_errors(directory: Path, device: torch.device) -> dict[str, dict[str, float]]:
    """FP8 against dense, both bf16 on ``device``, over the recorded calls of each tiny equivalence fixture
    (worst relative L2 of the flow over the calls). Sparse attention is not measured there: their whole
    cache is one key block."""
    from safetensors.torch import load_file

    from backend.config import DiTSizes
    from backend.model.checkpoint import load_dit, split_state
    from backend.model.dit import CausalDiT
    from backend.model.fp8 import fp8_supported, quantize_blocks_
    from backend.model.kv_cache import CrossAttentionCache, KVCache

    out: dict[str, dict[str, float]] = {}
    if not fp8_supported(device):
        return out
    for meta_path in sorted(directory.glob("tiny_*.json")):
        variant = meta_path.stem
        meta = json.loads(meta_path.read_text())
        mc, dv = meta["model_config"], meta["derived"]
        sizes = DiTSizes(dim=mc["dim"], ffn_dim=mc["ffn_dim"], num_heads=mc["num_heads"], num_layers=mc["num_layers"],
                         in_dim=mc["in_dim"], out_dim=mc["out_dim"], patch_size=tuple(mc["patch_size"]),
                         freq_dim=mc["freq_dim"], text_dim=mc["text_dim"], text_len=mc["text_len"], eps=mc["eps"])
        dense = CausalDiT(sizes).eval()
        load_dit(dense, split_state(load_file(directory / f"{variant}.safetensors"), variant))
        dense.to(device, torch.bfloat16)
        q = copy.deepcopy(dense)
        quantize_blocks_(q)
        io = load_file(directory / f"{variant}_io.safetensors", device=str(device))
        flows: dict[str, list[torch.Tensor]] = {"dense": [], "fp8": []}
        for name, model in (("dense", dense), ("fp8", q)):
            common = dict(num_layers=mc["num_layers"], heads=mc["num_heads"], head_dim=dv["head_dim"],
                          frame_tokens=dv["frame_seq_length"], dtype=torch.bfloat16, device=device)
            if mc["local_attn_size"] == -1:
                kv = KVCache(**common, window_frames=None, capacity_frames=dv["total_latent_frames"])  # type: ignore[arg-type]
            else:
                kv = KVCache(**common, sink_frames=mc["sink_size"],  # type: ignore[arg-type]
                             window_frames=mc["local_attn_size"] - mc["sink_size"])
            xkv = CrossAttentionCache(mc["num_layers"])
            with torch.inference_mode():
                for call in meta["call_sequence"]:
                    x = io[call["input"]].permute(0, 2, 1, 3, 4).to(torch.bfloat16)
                    flows[name].append(model(x, io[call["timestep"]], io["context"][:, :10].to(torch.bfloat16),
                                             start_frame=call["current_start_frame"], cache=kv, cross_cache=xkv).float())
        out[variant] = {"fp8": round(max(rel_l2(a, b) for a, b in zip(flows["fp8"], flows["dense"])), 5)}
    return out


# ---------------------------------------------------------------------------------------------
# The whole bench
# ---------------------------------------------------------------------------------------------


def run_model_bench(cfg: Config, *, seconds: float = 10.0, warmup_chunks: int = 4, table: bool = True,
                    fixtures: Path | None = None, default_model_errors: bool = True) -> dict[str, Any]:
    """The figures of ``bench --model`` as one dict (see the module docstring)."""
    from backend.actions import ACTIONS, EMOTIONS
    from backend.model.accel import FastDiT
    from backend.model.generator import Conditions, Generator, StageTimer
    from backend.world.character import load_character
    from backend.world.reference import reference_frame

    t_build = time.perf_counter()
    gen = Generator(cfg.model)
    cuda = gen.device.type == "cuda"
    if cfg.model.checkpoint == "random":
        _randomize_head_(gen.dit, cfg.model.seed)
    decoder_name = "liveidol autoencoder"
    if gen.cfg.autoencoder.latent_channels == 16 and gen.cfg.autoencoder.spatial_factor == 8 and \
            gen.cfg.autoencoder.temporal_factor == 4:
        try:
            taehv = TaehvRGBA(gen.device, gen.dtype)
            h, w = gen.latent_hw
            taehv.step(torch.zeros((1, 1, 16, h, w), device=gen.device, dtype=gen.dtype))  # it runs here
            gen.decoder = taehv  # type: ignore[assignment]
            decoder_name = "TAEHV (taew2_1 architecture, random weights)"
        except Exception as exc:  # keep measuring the rest with the small decoder
            log.warning("TAEHV decode failed, timing the small autoencoder instead error=%s", exc)
            decoder_name = "liveidol autoencoder (TAEHV failed: see the log)"
    build_s = time.perf_counter() - t_build
    reference = reference_frame(load_character(cfg.character), gen.native_size)

    def conditions(i: int) -> Conditions:  # a new prompt every 3 chunks
        return Conditions(action=ACTIONS[(i // 3) % len(ACTIONS)].name, emotion=EMOTIONS[(i // 7) % len(EMOTIONS)])

    # the generator before this work's levers: eager (no compile, no graphs), same shapes
    eager_fast, fast = FastDiT(gen.dit), gen.fast
    gen.fast = eager_fast
    gen.reset(reference, conditions(0))
    eager_chunks = []
    for i in range(1, 4):
        t0 = time.perf_counter()
        gen.next_chunk(conditions(i))
        _sync(cuda)
        eager_chunks.append(1000 * (time.perf_counter() - t0))
    gen.fast = fast

    t_warm = time.perf_counter()
    gen.reset(reference, conditions(0))
    n = 0
    for n in range(1, warmup_chunks + 1):
        gen.next_chunk(conditions(n))
    _sync(cuda)
    warm_s = time.perf_counter() - t_warm
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timer = StageTimer(cuda)
    gen.timer = timer
    latencies: list[float] = []
    switch_latencies: list[float] = []
    frames = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(switch_latencies) < 2:
        n += 1
        switched = not conditions(n).same_as(conditions(n - 1))
        t0 = time.perf_counter()
        out = gen.next_chunk(conditions(n))  # returns after the frames are on the host
        dt = 1000 * (time.perf_counter() - t0)
        latencies.append(dt)
        if switched:
            switch_latencies.append(dt)
        frames += out.shape[0]
    elapsed = time.perf_counter() - start
    gen.timer = None
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    stages = {k: _median(v) for k, v in timer.laps.items()}
    steps = gen.state.steps
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "dtype": gen.state.dtype, "attention": gen.state.attention_backend,
        "linears": gen.linears, "compiled_and_graphed": gen.fast.compiled, "cuda_graphs": gen.fast.graph_count,
        "decoder": decoder_name, "parameters_dit": sum(p.numel() for p in gen.dit.parameters()),
        "resolution": f"{gen.native_size[0]}x{gen.native_size[1]}",
        "output_resolution": f"{gen.output_size[0]}x{gen.output_size[1]}",
        "chunk_latent_frames": gen.state.chunk_frames, "chunk_video_frames": gen.frames_per_chunk(),
        "steps": steps, "cache_frames": cfg.model.sink_frames + cfg.model.window_frames,
        "frames": frames, "seconds": round(elapsed, 2), "fps": round(frames / elapsed, 2),
        "chunk_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "chunk_ms_p95": round(float(np.percentile(latencies, 95)), 1),
        "first_frame_after_prompt_switch_ms_p50": round(float(np.percentile(switch_latencies, 50)), 1),
        "first_frame_after_prompt_switch_ms_max": round(max(switch_latencies), 1),
        "stage_ms_per_chunk": stages,
        "dit_pass_ms": round(stages.get("dit", float("nan")) / steps, 2),
        "eager_generator_chunk_ms": round(statistics.median(eager_chunks), 1),
        "eager_generator_fps": round(gen.frames_per_chunk() / (statistics.median(eager_chunks) / 1000), 2),
        "peak_memory_mib": round(peak, 1),
        "build_s": round(build_s, 1), "warmup_s": round(warm_s, 1),
    }
    log.info("generator %s", json.dumps(result))

    # one dense eager pass of the same shapes against the configured pass (both repeat the latest chunk)
    with torch.inference_mode():
        pb = _PassBench(gen)
        dense_ms = _time_ms(lambda: pb.run(eager_fast), cuda)
        fast_ms = _time_ms(lambda: pb.run(gen.fast), cuda)
    result["dense_eager_pass_ms"] = dense_ms
    result["configured_pass_ms"] = fast_ms
    result["pass_speedup_vs_dense_eager"] = round(dense_ms / fast_ms, 2) if fast_ms else None
    if table:
        result["error_budget_rel_l2"] = ERROR_BUDGET
        result["pass_table"] = _pass_table(gen, cuda)
    if default_model_errors:
        result["default_model_errors"] = _default_model_errors(cfg, gen.device)
    if fixtures is not None:
        result["fixture_errors"] = fixture_errors(fixtures, gen.device)
    return result


def _default_model_errors(cfg: Config, device: torch.device) -> dict[str, Any]:
    """The approximations on the shipped idol model, after a few chunks of its own stream."""
    import dataclasses

    from backend.config import ModelConfig
    from backend.model.generator import Conditions, Generator
    from backend.world.character import load_character
    from backend.world.reference import reference_frame

    mcfg = dataclasses.replace(ModelConfig(), device=device.type, guidance=0.0)  # type: ignore[arg-type]
    gen = Generator(mcfg)
    gen.reset(reference_frame(load_character(cfg.character), gen.native_size), Conditions())
    for action in ("wave", "wave", "heart"):
        gen.next_chunk(Conditions(action=action))
    errors: dict[str, Any] = dict(approximation_errors(gen))
    errors["dtype"] = gen.state.dtype
    return errors


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary printed after the JSON line."""
    lines = [f"{result['device']}  {result['resolution']}  chunk {result['chunk_latent_frames']} latent frames, "
             f"{result['steps']} steps, cache {result['cache_frames']} frames, decoder: {result['decoder']}",
             f"FPS {result['fps']} (eager generator before: {result['eager_generator_fps']})  chunk p50 "
             f"{result['chunk_ms_p50']} ms  first frame after a prompt switch p50 "
             f"{result['first_frame_after_prompt_switch_ms_p50']} ms  peak {result['peak_memory_mib']} MiB",
             "stages (ms per chunk): " + ", ".join(f"{k} {v}" for k, v in result["stage_ms_per_chunk"].items()),
             f"pass: dense eager {result['dense_eager_pass_ms']} ms, configured {result['configured_pass_ms']} ms "
             f"({result['pass_speedup_vs_dense_eager']}x)"]
    for row in result.get("pass_table", []):
        if "error" in row:
            lines.append(f"  {row['variant']:<48} failed: {row['error']}")
            continue
        mark = "" if "within_budget" not in row else ("  within budget" if row["within_budget"] else "  OVER budget")
        lines.append(f"  {row['variant']:<48} {row['ms']:>8.2f} ms  x{row.get('speedup_vs_eager', '?'):<5} "
                     f"rel_l2 {row['rel_l2']:.5f}{mark}")
    if "default_model_errors" in result:
        lines.append(f"default model (trained) rel_l2: {result['default_model_errors']}")
    if "fixture_errors" in result:
        lines.append(f"equivalence fixtures rel_l2: {result['fixture_errors']}")
    return "\n".join(lines)
