"""`liveidol bench --model`: the figures it reports, on a micro random model (the real sizes need a GPU;
their figures are in docs/perf-notes.md)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from backend.config import Config
from backend.perf import ERROR_BUDGET, format_table, preset_overrides, run_model_bench
from tests.model.model_kit import micro_config


def test_model_bench_reports_stages_ratio_and_errors() -> None:
    cfg = dataclasses.replace(Config(), model=micro_config(chunk_frames=2, guidance=0.0))
    result = run_model_bench(cfg, seconds=0.3, warmup_chunks=1, default_model_errors=False)
    json.dumps(result)
    assert result["decoder"] == "liveidol autoencoder"  # TAEHV only for Wan latents (16 ch, 8x, 4x)
    assert set(result["stage_ms_per_chunk"]) == {"dit", "cache", "decode", "upscale", "host_copy"}
    assert result["fps"] > 0 and result["first_frame_after_prompt_switch_ms_p50"] > 0
    assert result["dense_eager_pass_ms"] > 0 and result["pass_speedup_vs_dense_eager"] > 0
    rows = result["pass_table"]
    assert rows[0]["rel_l2"] == 0.0 and all(r["rel_l2"] < 1e-5 for r in rows)  # exact levers only on a CPU
    assert result["error_budget_rel_l2"] == ERROR_BUDGET
    table = format_table(result)
    assert "first frame after a prompt switch" in table and "eager split halves" in table


def test_presets() -> None:
    wan = preset_overrides("wan-1.3b")
    assert wan["model.dit.dim"] == 1536 and wan["model.autoencoder.native_height"] == 544
    with pytest.raises(ValueError, match="unknown model"):
        preset_overrides("wan-14b")
