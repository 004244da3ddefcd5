"""GPU checks and timings of the fast DiT step, in one call (run by hand on a CUDA machine; CI has none).

    PYTHONUNBUFFERED=1 python tests/gpu/perf_run.py OUT_DIR [--seconds S] [--skip-model]

1. ``liveidol bench --model wan-1.3b`` (a subprocess, the CLI as users run it): stages, FPS, prompt-switch
   latency, the ratio to a dense eager pass, the pass table and every approximation's error.
2. Checks: the FP8 kernel against its float32 emulation; compiled block-sparse flex attention against
   the unfused path; the default idol's frames compiled and graphed against eager (same seed).
3. The default idol's generator FPS at 960x540, eager and compiled (``liveidol bench`` without --model).

Full logs and JSON go to OUT_DIR; a short table is printed last.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def check_fp8() -> dict[str, Any]:
    from torch import nn

    from backend.model.fp8 import Fp8Linear

    g = torch.Generator(device="cuda").manual_seed(0)
    lin = nn.Linear(1536, 8960, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(6120, 1536, device="cuda", generator=g).to(torch.bfloat16)
    q = Fp8Linear(lin)
    dense = lin(x).float()
    kern = q(x).float()
    q.use_kernel = False
    emul = q(x).float()
    q.use_kernel = True

    def bench(fn) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(20):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / 20

    return {"fp8_kernel_vs_emulation": rel(kern, emul), "fp8_vs_dense": rel(kern, dense),
            "linear_ms_bf16": bench(lambda: lin(x)), "linear_ms_fp8_eager": bench(lambda: q(x))}


def check_sparse() -> dict[str, Any]:
    from backend.model.attention import SdpaAttention, SparseAttention

    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(1, 2040, 12, 128, device="cuda", generator=g).to(torch.bfloat16)
    k = torch.randn(1, 6120, 12, 128, device="cuda", generator=g).to(torch.bfloat16)
    v = torch.randn(1, 6120, 12, 128, device="cuda", generator=g).to(torch.bfloat16)
    fused = SparseAttention(0.25)(q, k, v).float()
    unfused = SparseAttention(0.25, compile=False)(q, k, v).float()
    dense = SdpaAttention()(q, k, v).float()
    return {"sparse_fused_vs_unfused": rel(fused, unfused), "sparse_0.25_vs_dense_random": rel(fused, dense)}


def check_idol_frames() -> dict[str, Any]:
    """Default idol (trained weights, guidance on: two cross caches), compiled + graphed vs eager."""
    from backend.config import ModelConfig
    from backend.model.generator import Conditions, Generator
    from backend.world.character import load_character
    from backend.world.reference import reference_frame

    out: dict[str, Any] = {}
    frames = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        gen = Generator(dataclasses.replace(ModelConfig(), compile=compiled))
        gen.reset(reference_frame(load_character("aiko"), gen.native_size), Conditions())
        chunks = [gen.next_chunk(Conditions(action=a)) for a in ("idle", "wave", "wave", "heart", "heart", "nod")]
        frames[name] = np.concatenate(chunks).astype(np.int16)
        out[f"{name}_graphs"] = gen.fast.graph_count
    diff = np.abs(frames["eager"] - frames["compiled"])
    out["frames_max_abs_diff"] = int(diff.max())
    out["frames_mean_abs_diff"] = float(diff.mean())
    return out


def idol_fps(seconds: float) -> dict[str, Any]:
    from backend.bench import run_bench
    from backend.config import Config

    res = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        cfg = Config()
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, compile=compiled))
        t0 = time.time()
        r = run_bench(cfg, seconds=seconds)
        res[name] = {"wall_s_with_build_and_compile": round(time.time() - t0, 1)}
        res[name] |= {k: r[k] for k in ("fps", "chunk_latency_ms_p50", "chunk_latency_ms_p95", "peak_memory_mib",
                                       "output_resolution", "attention")}
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--only-model", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"torch": torch.__version__, "device": torch.cuda.get_device_name()}
    t0 = time.time()

    model_table = ""
    if not args.skip_model:
        cmd = [sys.executable, "-m", "backend.cli", "bench", "--model", "wan-1.3b", "--seconds", str(args.seconds),
               "--fixtures", str(ROOT / "tests" / "fixtures" / "wan_causal_ref")]
        with open(args.out / "model_bench.log", "w") as log:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        (args.out / "model_bench.out").write_text(proc.stdout)
        lines = proc.stdout.splitlines()
        json_lines = [ln for ln in lines if ln.startswith("{")]
        if json_lines:
            (args.out / "model_bench.json").write_text(json_lines[-1])
            model_table = "\n".join(lines[lines.index(json_lines[-1]) + 1:])
        summary["model_bench_rc"] = proc.returncode
        summary["model_bench_s"] = round(time.time() - t0, 1)
        print(f"model bench rc={proc.returncode} after {summary['model_bench_s']} s", flush=True)
        if proc.returncode:
            print((args.out / "model_bench.log").read_text()[-3000:], flush=True)

    checks = (("fp8", check_fp8), ("sparse", check_sparse), ("idol_frames", check_idol_frames),
              ("idol_fps", lambda: idol_fps(args.seconds)))
    for name, fn in () if args.only_model else checks:
        t1 = time.time()
        try:
            summary[name] = fn()
        except Exception as exc:
            summary[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            traceback.print_exc()
        summary[f"{name}_s"] = round(time.time() - t1, 1)
        print(name, json.dumps(summary[name]), flush=True)

    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\n==== summary ====")
    print(json.dumps(summary, indent=1))
    print("\n==== bench --model wan-1.3b ====")
    print(model_table)
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
