"""Numerical equivalence with Self-Forcing's CausalWanModel on the recorded fixtures.

Every recorded call of the pipeline is replayed in order on fresh caches, and the flow outputs, the
x0 estimates, the self-attention KV caches (absolute-position keys) and the cross-attention caches
are compared at atol/rtol 1e-4 in float32. Fixtures (with their provenance): tests/fixtures/wan_causal_ref/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from backend.config import DiTSizes
from backend.model.checkpoint import load_dit, split_state
from backend.model.dit import CausalDiT, rope_split
from backend.model.kv_cache import CrossAttentionCache, KVCache
from backend.model.sampler import FlowMatchSchedule

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wan_causal_ref"
TOL = {"atol": 1e-4, "rtol": 1e-4}


def _load(variant: str):
    meta = json.loads((FIXTURES / f"{variant}.json").read_text())
    mc = meta["model_config"]
    sizes = DiTSizes(dim=mc["dim"], ffn_dim=mc["ffn_dim"], num_heads=mc["num_heads"], num_layers=mc["num_layers"],
                     in_dim=mc["in_dim"], out_dim=mc["out_dim"], patch_size=tuple(mc["patch_size"]),
                     freq_dim=mc["freq_dim"], text_dim=mc["text_dim"], text_len=mc["text_len"], eps=mc["eps"])
    dit = CausalDiT(sizes).eval()
    load_dit(dit, split_state(load_file(FIXTURES / f"{variant}.safetensors"), variant))
    io = load_file(FIXTURES / f"{variant}_io.safetensors")
    return meta, dit, io


def _caches(meta: dict, dit: CausalDiT) -> tuple[KVCache, CrossAttentionCache]:
    mc, dv = meta["model_config"], meta["derived"]
    common = dict(num_layers=mc["num_layers"], heads=mc["num_heads"], head_dim=dv["head_dim"],
                  frame_tokens=dv["frame_seq_length"])
    if mc["local_attn_size"] == -1:
        kv = KVCache(**common, window_frames=None, capacity_frames=dv["total_latent_frames"])
    else:  # Self-Forcing's local_attn_size counts the sink frames too
        kv = KVCache(**common, sink_frames=mc["sink_size"], window_frames=mc["local_attn_size"] - mc["sink_size"])
    assert kv.capacity == dv["kv_cache_len_tokens"]
    return kv, CrossAttentionCache(mc["num_layers"])


def _call(dit: CausalDiT, io: dict, x_name: str, t_name: str, start_frame: int, kv, xkv) -> torch.Tensor:
    x = io[x_name].permute(0, 2, 1, 3, 4)  # (B, F, C, H, W) -> (B, C, F, H, W)
    with torch.inference_mode():
        flow = dit(x, io[t_name], io["context"][:, :10], start_frame=start_frame, cache=kv, cross_cache=xkv)
    return flow.permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("variant", ["tiny_global", "tiny_local"])
def test_replay_matches_reference(variant: str) -> None:
    meta, dit, io = _load(variant)
    # The recorded context has zero rows past the prompt; we pass the prompt only: the model pads.
    assert torch.count_nonzero(io["context"][:, 10:]) == 0
    sched = FlowMatchSchedule(shift=meta["pipeline"]["timestep_shift"])
    assert torch.allclose(torch.tensor(sched.warp_list(meta["pipeline"]["denoising_step_list"])),
                          io["denoising_step_list"], **TOL)
    kv, xkv = _caches(meta, dit)
    frame_tokens = meta["derived"]["frame_seq_length"]
    for call in meta["call_sequence"]:
        start_frame = call["current_start"] // frame_tokens
        assert start_frame == call["current_start_frame"]
        assert kv.global_end == call["kv_index_before"]["global_end_index"]
        assert kv.local_end == call["kv_index_before"]["local_end_index"]
        flow = _call(dit, io, call["input"], call["timestep"], start_frame, kv, xkv)
        torch.testing.assert_close(flow, io[call["output_flow"]], **TOL, msg=lambda m, k=call["key"]: f"{k}: {m}")
        x0 = sched.to_x0(io[call["input"]], flow, io[call["timestep"]])
        torch.testing.assert_close(x0, io[call["output_x0"]], **TOL)
        assert kv.global_end == call["kv_index_after"]["global_end_index"]
        assert kv.local_end == call["kv_index_after"]["local_end_index"]
        snap = f"kv_after_chunk{call['chunk']}.layer0.k"
        if call["role"] == "cache" and snap in io:
            for layer in range(dit.sizes.num_layers):
                pre = f"kv_after_chunk{call['chunk']}.layer{layer}"
                torch.testing.assert_close(kv.k[layer, :, :kv.local_end], io[f"{pre}.k"][:, :kv.local_end], **TOL)
                torch.testing.assert_close(kv.v[layer, :, :kv.local_end], io[f"{pre}.v"][:, :kv.local_end], **TOL)
    if "final_kv.layer0.k" in io:
        for layer in range(dit.sizes.num_layers):
            torch.testing.assert_close(kv.k[layer], io[f"final_kv.layer{layer}.k"], **TOL)
            torch.testing.assert_close(kv.v[layer], io[f"final_kv.layer{layer}.v"], **TOL)
    for layer in range(dit.sizes.num_layers):
        k, v = xkv.get(layer)
        torch.testing.assert_close(k, io[f"crossattn.layer{layer}.k"], **TOL)
        torch.testing.assert_close(v, io[f"crossattn.layer{layer}.v"], **TOL)


@pytest.mark.parametrize("variant", ["tiny_global", "tiny_local"])
def test_probe_per_frame_timesteps(variant: str) -> None:
    meta, dit, io = _load(variant)
    kv, xkv = _caches(meta, dit)
    flow = _call(dit, io, "probe.x", "probe.t", 0, kv, xkv)
    torch.testing.assert_close(flow, io["probe.flow"], **TOL)
    sched = FlowMatchSchedule(shift=meta["pipeline"]["timestep_shift"])
    torch.testing.assert_close(sched.to_x0(io["probe.x"], flow, io["probe.t"]), io["probe.x0"], **TOL)
    sig = sched.sigma_nearest(io["probe.t"])[0].tolist()
    assert sig == pytest.approx(meta["probe"]["x0_sigma_per_frame"], abs=1e-6)


def test_renoise_matches_pipeline() -> None:
    meta, _dit, io = _load("tiny_local")
    sched = FlowMatchSchedule(shift=5.0)
    ts = sched.warp_list(meta["pipeline"]["denoising_step_list"])
    for s in (1, 2, 3):
        x = sched.renoise(io[f"chunk1.step{s - 1}.x0"], io[f"chunk1.step{s}.renoise_eps"], ts[s])
        torch.testing.assert_close(x, io[f"chunk1.step{s}.x"], **TOL)


def test_rope_split_matches_wan() -> None:
    assert rope_split(64) == (12, 10, 10)
    assert rope_split(32) == (6, 5, 5)
    assert rope_split(128) == (22, 21, 21)


def test_wan_1p3b_key_layout() -> None:
    """Our state-dict keys and shapes at the 1.3B sizes equal Wan2.1-T2V-1.3B's (plus our extras)."""
    rows = [line.split() for line in (FIXTURES / "key_shapes_1p3b.txt").read_text().splitlines() if line.strip()]
    expected = {}
    for row in rows:
        try:
            shape = tuple(int(s) for s in " ".join(row[1:]).strip("[]()").replace(",", " ").split())
        except ValueError:
            continue
        expected[row[0]] = shape
    assert len(expected) == 825, rows[:3]
    sizes = DiTSizes(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, text_len=512, text_dim=4096)
    with torch.device("meta"):
        dit = CausalDiT(sizes)
    ours = {k: tuple(v.shape) for k, v in dit.state_dict().items() if not k.startswith(("cond_", "control_"))}
    assert ours == expected
