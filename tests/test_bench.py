"""`liveidol bench`: one JSON line of real measurements (a micro random model here; figures in the README)."""

from __future__ import annotations

import dataclasses
import json

from backend.bench import run_bench, run_live_bench
from backend.config import Config, EngineConfig
from tests.model.model_kit import micro_config


def _cfg() -> Config:
    return dataclasses.replace(Config(), model=micro_config(), engine=EngineConfig(fps=20.0, lookahead_frames=8))


def test_bench_reports_speed_and_memory() -> None:
    result = run_bench(_cfg(), seconds=0.5, warmup_chunks=1)
    json.dumps(result)  # one JSON line
    assert result["device"].startswith("cpu") and result["checkpoint"] == "random"
    assert result["native_resolution"] == "32x16" and result["output_resolution"] == "48x24"
    assert result["frames"] > 0 and result["fps"] > 0
    assert result["frames"] % result["chunk_video_frames"] == 0
    assert 0 < result["chunk_latency_ms_p50"] <= result["chunk_latency_ms_p95"]
    assert result["parameters"] > 0 and result["peak_memory_mib"] > 0


def test_live_bench_measures_the_paced_engine() -> None:
    result = run_live_bench(_cfg(), seconds=2.0, command_every_s=0.5)
    json.dumps(result)
    assert result["fps_target"] == 20.0
    assert 10 < result["fps_shown"] < 30  # paced at 20 FPS (tolerant: shared CI machine)
    assert result["commands"] >= 2 and result["command_to_frame_ms_p50"] > 0
    assert result["frames_shown"] >= result["fps_shown"]
