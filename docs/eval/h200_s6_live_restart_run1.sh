#!/bin/bash
# live-restart (issue #13 point 5): the Wan tier's live setting at 960x544 native: generator levers (KV marks instead
# of a copy of the cache per chunk, the cache pass one block short
# and run at the start of the next chunk, the interrupt check just before the graph launch)
# and engine policies (lookahead_cover, finish_within_s), before/after in ONE process on one generator.
# Budget: <= 6 min wall (pip + one python step under `timeout 330`). Output: $OUT/*.json|txt|log, summary on stdout.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/.device/live-restart:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -P -c 'import torch, backend; print("torch", torch.__version__, backend.__file__)'
timeout 330 python3 -P - <<'PYEOF' 2> $OUT/live_restart.log | tee $OUT/live_restart.txt
# One process: build the full-size live generator once (random weights, 960x544 native), check exactness of the
# levers on it, then 20-s live benches of the engine settings, each reset from the same generator.
import json, os, pathlib, time, sys
T0 = time.time()
BUDGET = 320.0
import numpy as np, torch
import backend
from backend.cli import _preset
from backend.config import load_config
from backend.app import build_generator
from backend.bench import run_live_bench
from backend.model.generator import ChunkInterrupted
out = pathlib.Path(os.environ["OUT"])
print("backend from", backend.__file__, flush=True)
SIZE = {"model.checkpoint": "random", "model.autoencoder.native_width": 960, "model.autoencoder.native_height": 544,
        "model.output_width": 960, "model.output_height": 544}
SECONDS = 20
if os.environ.get("LR_TINY"):  # a smoke run of this script on a CPU (tiny random Wan tier)
    SECONDS = 4
    SIZE = {"model.family": "wan", "model.checkpoint": "random", "model.device": "cpu", "model.compile": False,
            "model.dit.dim": 64, "model.dit.ffn_dim": 128, "model.dit.num_heads": 2, "model.dit.num_layers": 2,
            "model.dit.text_dim": 32, "model.dit.text_len": 16, "model.dit.num_controls": 0,
            "model.dit.in_dim": 16, "model.dit.out_dim": 16, "model.autoencoder.hires_factors": [],
            "model.autoencoder.native_width": 64, "model.autoencoder.native_height": 32,
            "model.output_width": 64, "model.output_height": 32, "model.window_frames": 4}
def config(**engine):
    return load_config(None, {**_preset("wan-1.3b-live"), **SIZE, **{f"engine.{k}": v for k, v in engine.items()}})
cfg = config()
t = time.time(); built = build_generator(cfg); gen = built[0]
print(f"built in {time.time() - t:.1f}s engine={cfg.engine}", flush=True)
make = gen.conditions_factory()
ref = built[1]

def chunks(n, prompts):
    return np.concatenate([gen.next_chunk(make("idle", "neutral", prompts[i % len(prompts)])) for i in range(n)])

def levers(on, defer=None):  # the generator's exact savings of this branch: all on, or all off (session 5's)
    gen.copy_cache_snapshots = not on
    gen.full_cache_pass = not on
    gen.fast.late_check = on
    gen.defer_cache_pass = on if defer is None else defer

# -- 0. exactness at full size (compiled + CUDA graphs, as live) --------------------------------------------
checks = {}
try:
    P = ["she waves", "she waves", "she nods", "she smiles"]
    t = time.time()
    levers(True); gen.reset(ref, make("idle", "neutral", "")); chunks(14, P)  # warm: every cache placement, graphs
    runs = {}
    for name, on in (("on", True), ("off", False), ("on2", True)):
        levers(on); gen.reset(ref, make("idle", "neutral", "")); runs[name] = chunks(13, P)
    checks["cache_pass_one_block_short_same_frames"] = bool(np.array_equal(runs["on"], runs["off"]))
    checks["cache_pass_max_diff"] = int(np.abs(runs["on"].astype(int) - runs["off"]).max())
    checks["deterministic_on_on2"] = bool(np.array_equal(runs["on"], runs["on2"]))
    # restart exactness with KV marks: a chunk stopped at its 3rd pass, rewound, made again == a clean run; and a
    # rewind over 3 chunks (the engine dropping chunks made ahead) == the same chunks made again
    levers(True); gen.reset(ref, make("idle", "neutral", "")); chunks(11, P)
    snap = gen.snapshot(); clean = chunks(3, ["she bows"]); gen.restore(snap)
    calls = [0]
    def stop():
        calls[0] += 1
        return calls[0] >= 3
    s2 = gen.snapshot(); gen.interrupt = stop
    try:
        gen.next_chunk(make("idle", "neutral", "she sings")); checks["interrupted"] = False
    except ChunkInterrupted:
        checks["interrupted"] = True
    gen.interrupt = None; gen.restore(s2)
    again = chunks(3, ["she bows"])
    checks["restart_mid_chunk_equals_clean"] = bool(np.array_equal(again, clean))
    gen.restore(snap); chunks(3, ["she sings"]); gen.restore(snap)
    checks["rewind_3_chunks_equals_clean"] = bool(np.array_equal(chunks(3, ["she bows"]), clean))
    checks["seconds"] = round(time.time() - t, 1)
except Exception as exc:
    import traceback; traceback.print_exc()
    checks["error"] = repr(exc)
levers(True)
print("CHECKS", json.dumps(checks), flush=True)
(out / "checks.json").write_text(json.dumps(checks, indent=1))

# -- 1. live benches, 20 s each, a command every 2 s ------------------------------------------------------------
KEYS = ["fps_shown", "distinct_fps", "frames_repeated_window", "command_to_frame_ms_p50", "command_to_frame_ms_p95",
        "command_to_frame_ms_max", "commands", "chunks_restarted_window", "chunks_finished_for_command_window",
        "chunks_dropped_window", "chunk_worker_ms_p50", "chunk_worker_ms_p95", "stage_ms_p50", "peak_memory_mib",
        "generated_fps", "steps_held_min", "chunk_latents_max", "lookahead_frames", "lookahead_cover", "finish_within_s"]
RUNS = [  # name, generator levers on, the deferred cache pass on, engine settings (the most telling first)
    ("before", False, False, dict(lookahead_frames=8, lookahead_cover=0.0, finish_within_s=0.0)),
    ("levers_cover2", True, True, dict(lookahead_frames=8, lookahead_cover=2.0, finish_within_s=0.0)),
    ("levers_lookahead6", True, True, dict(lookahead_frames=6, lookahead_cover=0.0, finish_within_s=0.0)),
    ("levers_cover1_finish", True, True, dict(lookahead_frames=8, lookahead_cover=1.0, finish_within_s=0.24)),
    ("levers_lookahead8", True, True, dict(lookahead_frames=8, lookahead_cover=0.0, finish_within_s=0.0)),
    ("levers_no_defer_cover2", True, False, dict(lookahead_frames=8, lookahead_cover=2.0, finish_within_s=0.0)),
]
results = {}
with open(out / "live_runs.jsonl", "w") as f:
    for name, on, defer, eng in RUNS:
        left = BUDGET - (time.time() - T0)
        if left < 32:
            print(f"SKIP {name}: {left:.0f}s left", flush=True); continue
        levers(on, defer)
        t = time.time()
        try:
            r = run_live_bench(config(**eng), seconds=SECONDS, built=built)
        except Exception as exc:
            import traceback; traceback.print_exc(); print(f"RUN {name} failed: {exc!r}", flush=True); continue
        r["run"], r["levers"], r["defer_cache_pass"] = name, on, defer
        f.write(json.dumps(r) + "\n"); f.flush()
        results[name] = r
        print("RUN", name, f"({time.time() - t:.0f}s)", json.dumps({k: r.get(k) for k in KEYS}), flush=True)
print(f"done in {time.time() - T0:.0f}s", flush=True)
os._exit(0)  # the text encoder's thread: no need to wait for it
PYEOF
echo "rc=$? t=${SECONDS}s"
grep -iE "error|Traceback" $OUT/live_restart.log | head -5
