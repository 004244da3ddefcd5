"""`liveidol bench`: one JSON line of real measurements (a micro random model here; figures in the README)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

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
    assert result["decoder"] == "native" and result["decoded_resolution"] == "32x16"
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
    assert result["emotion_commands"] >= 1 and result["commands_issued"] >= 3  # chat mixes actions and emotions
    assert result["frames_shown"] >= result["fps_shown"]
    assert 0 < result["distinct_fps"] <= result["fps_shown"] * 1.05 + 1
    assert 0 <= result["repeat_share"] <= 1 and result["frames_shown_window"] >= result["frames_repeated_window"]
    assert result["distinct_fps"] == pytest.approx(
        (result["frames_shown_window"] - result["frames_repeated_window"]) / result["window_s"], abs=0.02)


def test_live_bench_commands_alternate_actions_and_every_emotion() -> None:
    from backend.actions import ACTIONS, EMOTIONS
    from backend.bench import bench_command
    from backend.events import CommandKind

    cmds = [bench_command(i) for i in range(40)]
    assert [c.kind for c in cmds[:4]] == [CommandKind.ACT, CommandKind.EMOTION] * 2
    assert {c.argument for c in cmds if c.kind is CommandKind.ACT} == {a.name for a in ACTIONS if not a.loop}
    assert {c.argument for c in cmds if c.kind is CommandKind.EMOTION} == set(EMOTIONS)
    assert cmds[1].argument != "neutral"  # the first emotion is a change from the stream's neutral start


def test_distinct_frames_and_repeats_come_from_the_engine_counters() -> None:
    from types import SimpleNamespace

    from backend.bench import RepeatCounter, distinct_figures

    before = {"frames_shown": 100, "frames_repeated": 40, "frames_made": 80}
    after = {"frames_shown": 150, "frames_repeated": 80, "frames_made": 96}
    watched = RepeatCounter()
    a, b = np.zeros((2, 2, 4), np.uint8), np.zeros((2, 2, 4), np.uint8)  # equal pixels, different frames
    for rgba in (a, a, a, b, b):
        watched.add(SimpleNamespace(rgba=rgba))
    out = distinct_figures(before, after, 2.0, watched)
    assert out["distinct_fps"] == 5.0 and out["repeat_share"] == 0.8 and out["generated_fps"] == 8.0
    assert out["subscriber_repeat_share"] == 0.6  # 3 repeats of 5: by identity, not by equal pixels


def test_soak_figures_from_known_numbers() -> None:
    from backend.bench import soak_figures

    fps = 25.0
    arrivals = [i / fps for i in range(100)] + [100 / fps + 0.2] + [100 / fps + 0.2 + i / fps for i in range(1, 50)]
    memory = [(t, 500.0 + 10.0 * t / 3600.0 * 60) for t in range(0, 600, 5)]  # +600 MiB/hour
    out = soak_figures(arrivals, memory, fps=fps, seconds=6.0, frames_shown=150, frames_repeated=30, warmup_s=60.0)
    assert out["stalls"] == 1 and out["longest_gap_ms"] == 240.0  # one gap of 0.24 s > 2 intervals (80 ms)
    assert out["repeated_share"] == 0.2 and out["distinct_fps"] == 20.0
    assert abs(out["memory_slope_mib_per_hour"] - 600.0) < 1e-6
    assert out["memory_mib_median_first_quarter"] < out["memory_mib_median_last_quarter"]


def test_soak_runs_the_live_engine_and_reports() -> None:
    from backend.bench import run_soak

    seen: list[dict] = []
    result = run_soak(_cfg(), minutes=0.05, command_every_s=0.5, sample_every_s=0.5, warmup_s=0.0,
                      progress=seen.append)
    json.dumps(result)
    assert result["fps_target"] == 20.0 and result["soak_seconds"] >= 3.0
    assert result["fps_shown"] > 0 and 0 <= result["repeated_share"] <= 1 and result["distinct_fps"] > 0
    assert result["stalls"] >= 0 and result["memory_mib_start"] > 0 and result["commands"] >= 5
    assert result["memory_slope_mib_per_hour"] is not None and seen and "memory_mib" in seen[0]
